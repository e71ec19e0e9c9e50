"""The waveform chain as strax 2.2.3 plugins, for ``memwise bench data``.

The same numpy functions as memwise's plugins (:mod:`memwise.demos.waveform_chain`) do the
work, so both frameworks compute the same peaks and the benchmark measures the frameworks.
Importing this module imports strax (the ``peers`` group).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import strax

from memwise.demos import waveform_chain as chain

__all__ = ["PLUGINS", "Hits", "Peaks", "RawRecords", "Records"]


@strax.takes_config(
    strax.Option("chunks", default=10, type=int),
    strax.Option("records_per_chunk", default=20_000, type=int),
)
class RawRecords(strax.Plugin):
    __version__ = "1.0.0"
    provides = "raw_records"
    data_kind = "raw_records"
    depends_on: tuple[str, ...] = ()
    dtype = chain.RAW_DTYPE
    rechunk_on_save = False
    parallel = "process"

    def source_finished(self) -> bool:
        return True

    def is_ready(self, chunk_i: int) -> bool:
        return bool(chunk_i < self.config["chunks"])

    def compute(self, chunk_i: int) -> Any:
        data = chain.generate(self.run_id, chunk_i, self.config["records_per_chunk"])
        start = chunk_i * chain.CHUNK_NS
        return self.chunk(start=start, end=start + chain.CHUNK_NS, data=data)


class Records(strax.Plugin):
    __version__ = "1.0.0"
    provides = "records"
    data_kind = "records"
    depends_on = ("raw_records",)
    dtype = chain.RECORD_DTYPE
    parallel = "process"

    def compute(self, raw_records: np.ndarray) -> np.ndarray:
        return chain.process_records(raw_records)


@strax.takes_config(strax.Option("hit_threshold", default=15, type=int))
class Hits(strax.Plugin):
    __version__ = "1.0.0"
    provides = "hits"
    data_kind = "hits"
    depends_on = ("records",)
    dtype = chain.HIT_DTYPE
    parallel = "process"

    def compute(self, records: np.ndarray) -> np.ndarray:
        return chain.find_hits(records, self.config["hit_threshold"])


@strax.takes_config(strax.Option("peak_gap_ns", default=300, type=int))
class Peaks(strax.Plugin):
    __version__ = "1.0.0"
    provides = ("peaks", "peak_basics")
    data_kind = {"peaks": "peaks", "peak_basics": "peaks"}
    depends_on = ("hits",)
    dtype = {"peaks": chain.PEAK_DTYPE, "peak_basics": chain.PEAK_BASICS_DTYPE}
    parallel = "process"

    def compute(self, hits: np.ndarray) -> dict[str, np.ndarray]:
        return chain.find_peaks(hits, self.config["peak_gap_ns"])


PLUGINS = (RawRecords, Records, Hits, Peaks)
