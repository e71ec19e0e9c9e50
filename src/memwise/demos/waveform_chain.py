"""A PMT-like waveform chain: raw_records → records → hits → (peaks, peak_basics).

Synthetic data, generated from a seed: events at random times, each lighting several of 64
channels, every channel's record a pulse on a noisy baseline (110 samples of 10 ns, inverted,
as photomultipliers give them). The algorithms are plain numpy functions, shared by the
memwise plugins here and the strax plugins of the benchmark, so both frameworks compute the
same peaks from the same records and the comparison measures the frameworks alone.

Chunks span 0.1 s of run time; events keep clear of chunk edges, so no peak straddles two
chunks and the peaks do not depend on how the chain is cut into chunks.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from pydantic import BaseModel

from memwise.data import Plugin, untracked

__all__ = [
    "CHUNK_NS",
    "PLUGINS",
    "Hits",
    "Peaks",
    "RawRecords",
    "Records",
    "find_hits",
    "find_peaks",
    "generate",
    "process_records",
]

SAMPLES = 110
DT_NS = 10
CHANNELS = 64
CHUNK_NS = 100_000_000  # 0.1 s of run per chunk
EDGE_NS = 10_000  # events keep this far from chunk edges
RECORDS_PER_EVENT = 8
BASELINE = 16_000

_time = [("time", np.int64), ("endtime", np.int64), ("channel", np.int16)]
RAW_DTYPE = np.dtype([*_time, ("data", np.int16, (SAMPLES,))])
RECORD_DTYPE = np.dtype(
    [*_time, ("baseline", np.float32), ("area", np.int32), ("data", np.int16, (SAMPLES,))]
)
HIT_DTYPE = np.dtype([*_time, ("area", np.int32), ("height", np.int16)])
PEAK_DTYPE = np.dtype(
    [
        ("time", np.int64),
        ("endtime", np.int64),
        ("area", np.int64),
        ("n_hits", np.int32),
        ("max_height", np.int16),
    ]
)
PEAK_BASICS_DTYPE = np.dtype(
    [
        ("time", np.int64),
        ("endtime", np.int64),
        ("width", np.int64),
        ("center_time", np.int64),
        ("n_channels", np.int16),
    ]
)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def generate(run_id: str, chunk_index: int, records: int) -> np.ndarray:
    """The raw records of one chunk: the same for the same run, chunk and size."""
    digest = hashlib.blake2b(f"{run_id}/{chunk_index}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    events = max(1, records // RECORDS_PER_EVENT)
    start = chunk_index * CHUNK_NS + EDGE_NS
    span = CHUNK_NS - 2 * EDGE_NS - SAMPLES * DT_NS
    event_times = np.sort(rng.integers(0, span, events)) + start
    times = np.repeat(event_times, RECORDS_PER_EVENT)[:records]
    times += rng.integers(0, 20, len(times)) * DT_NS
    times.sort()
    out = np.zeros(len(times), RAW_DTYPE)
    out["time"] = times
    out["endtime"] = times + SAMPLES * DT_NS
    out["channel"] = rng.integers(0, CHANNELS, len(times))
    noise = rng.integers(-4, 5, (len(times), SAMPLES), dtype=np.int16)
    position = rng.integers(20, 70, len(times))
    amplitude = rng.exponential(60.0, len(times))
    offset = np.arange(SAMPLES)[None, :] - position[:, None]
    shape = np.where(offset >= 0, np.exp(-np.maximum(offset, 0) / 12.0), 0.0)
    out["data"] = BASELINE + noise - (amplitude[:, None] * shape).astype(np.int16)
    return out


def process_records(raw: np.ndarray) -> np.ndarray:
    """Baseline-subtracted, inverted records with their integrated area."""
    out = np.empty(len(raw), RECORD_DTYPE)
    out["time"] = raw["time"]
    out["endtime"] = raw["endtime"]
    out["channel"] = raw["channel"]
    samples = raw["data"].astype(np.float32)
    baseline = samples[:, :20].mean(axis=1)
    data = np.rint(baseline[:, None] - samples).astype(np.int16)
    out["baseline"] = baseline
    out["area"] = data.sum(axis=1, dtype=np.int32)
    out["data"] = data
    return out


def find_hits(records: np.ndarray, threshold: int) -> np.ndarray:
    """One hit per record: the span of samples above ``threshold``, sorted by time."""
    data = records["data"]
    above = data > threshold
    has = above.any(axis=1)
    data, above, records = data[has], above[has], records[has]
    left = above.argmax(axis=1)
    right = SAMPLES - above[:, ::-1].argmax(axis=1)
    hits = np.empty(len(records), HIT_DTYPE)
    hits["time"] = records["time"] + left * DT_NS
    hits["endtime"] = records["time"] + right * DT_NS
    hits["channel"] = records["channel"]
    hits["area"] = np.where(above, data, 0).sum(axis=1, dtype=np.int32)
    hits["height"] = data.max(axis=1)
    return hits[np.argsort(hits["time"], kind="stable")]


def find_peaks(hits: np.ndarray, gap_ns: int) -> dict[str, np.ndarray]:
    """Hits closer than ``gap_ns`` grouped into peaks; two outputs per peak."""
    if not len(hits):
        return {"peaks": np.zeros(0, PEAK_DTYPE), "peak_basics": np.zeros(0, PEAK_BASICS_DTYPE)}
    reach = np.maximum.accumulate(hits["endtime"])
    starts = np.r_[0, np.flatnonzero(hits["time"][1:] > reach[:-1] + gap_ns) + 1]
    area = hits["area"].astype(np.int64)
    peaks = np.empty(len(starts), PEAK_DTYPE)
    peaks["time"] = hits["time"][starts]
    peaks["endtime"] = np.maximum.reduceat(hits["endtime"], starts)
    peaks["area"] = np.add.reduceat(area, starts)
    peaks["n_hits"] = np.diff(np.r_[starts, len(hits)])
    peaks["max_height"] = np.maximum.reduceat(hits["height"], starts)
    basics = np.empty(len(starts), PEAK_BASICS_DTYPE)
    basics["time"] = peaks["time"]
    basics["endtime"] = peaks["endtime"]
    basics["width"] = peaks["endtime"] - peaks["time"]
    weighted = np.add.reduceat(
        area * (hits["time"] - hits["time"][starts].repeat(peaks["n_hits"])), starts
    )
    basics["center_time"] = peaks["time"] + weighted // np.maximum(peaks["area"], 1)
    masks = np.bitwise_or.reduceat(
        np.left_shift(np.uint64(1), hits["channel"].astype(np.uint64)), starts
    )
    basics["n_channels"] = _POPCOUNT[masks.view(np.uint8)].reshape(-1, 8).sum(axis=1)
    return {"peaks": peaks, "peak_basics": basics}


class RawRecords(Plugin):
    """The source: synthetic digitizer records, one chunk per 0.1 s of run."""

    provides = "raw_records"
    version = "1.0.0"
    dtype = RAW_DTYPE

    class Config(BaseModel):
        records_per_chunk: int = 20_000
        chunks: int = 10

    def chunk_ranges(self, run_id: str) -> list[tuple[int, int]]:
        return [(i * CHUNK_NS, (i + 1) * CHUNK_NS) for i in range(self.config.chunks)]

    def compute(self, **inputs: Any) -> np.ndarray:
        return generate(
            inputs["run_id"], inputs["start"] // CHUNK_NS, self.config.records_per_chunk
        )


class Records(Plugin):
    provides = "records"
    depends_on = ("raw_records>=1.0,<2",)
    version = "1.0.0"
    dtype = RECORD_DTYPE

    def compute(self, **inputs: Any) -> np.ndarray:
        return process_records(inputs["raw_records"])


class Hits(Plugin):
    provides = "hits"
    depends_on = ("records>=1.0",)
    version = "1.0.0"
    dtype = HIT_DTYPE

    class Config(BaseModel):
        hit_threshold: int = 15

    def compute(self, **inputs: Any) -> np.ndarray:
        return find_hits(inputs["records"], self.config.hit_threshold)


class Peaks(Plugin):
    """Two outputs from one pass over the hits."""

    provides = ("peaks", "peak_basics")
    depends_on = ("hits",)
    version = "1.0.0"
    dtype = {"peaks": PEAK_DTYPE, "peak_basics": PEAK_BASICS_DTYPE}

    class Config(BaseModel):
        peak_gap_ns: int = 300
        verbose: bool = untracked(False)

    def compute(self, **inputs: Any) -> dict[str, np.ndarray]:
        return find_peaks(inputs["hits"], self.config.peak_gap_ns)


PLUGINS = (RawRecords, Records, Hits, Peaks)
