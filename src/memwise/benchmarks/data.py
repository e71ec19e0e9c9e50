"""``memwise bench data``: the waveform chain in memwise.data against strax 2.2.3.

The same generated raw records (``memwise.demos.waveform_chain``: 64 channels, 110-sample
records, 0.1 s chunks) and the same chain, raw_records → records → hits → (peaks,
peak_basics), with the same numpy functions inside every plugin, in five settings:

- ``memwise (processes)``: ``Context(workers=2)``; each chunk runs the whole chain in one
  pool task, arrays travel through shared-memory slots, results come back bounded and ordered.
- ``memwise (threads)``: the same plugins with ``parallel = "thread"``, 2 threads.
- ``strax (single thread)``: ``processor="single_thread"``.
- ``strax (mailbox, threads)``: ``processor="threaded_mailbox", max_workers=2``.
- ``strax (mailbox, processes)``: the same with ``allow_multiprocess=True``.

Every system runs in fresh processes of its own: one stores the raw records (not timed); one
first runs the chain on a small warm-up run (strax compiles its numba functions, memwise
starts its pool) and then, timed, computes the peaks of the stored raw records, saving every
product; a third reloads records and peaks from storage and sums a field of every item (a
memory map that nobody reads has loaded nothing). ``cold_mb_s`` and ``reload_mb_s``
are bytes of raw records (cold) and of records + peaks (reload) per second. ``peak_pss_mb``
and ``peak_private_mb`` are the most the processing process and all its children held at one
sample (every 50 ms), as PSS (shared pages divided among sharers) and private memory: summed
RSS would count shared libraries and slots once per process. Every system's peaks and peak
basics are checked equal to memwise's.

Targets compare best settings: memwise's fastest cold setting against strax's fastest (at
least 1.5x), memwise's best reload against strax's best, and the peak PSS of memwise's
fastest setting against strax's lowest (at most 1x).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from memwise.benchmarks._harness import (
    Figures,
    Metric,
    Target,
    TargetedResult,
    at_least,
    at_most,
    print_result,
    print_targets,
    ratios_against,
)
from memwise.memory import usage_tree

__all__ = ["METRICS", "SYSTEMS", "print_table", "run"]

WORKERS = 2
SUBJECT = "memwise (processes)"
SYSTEMS = {
    SUBJECT: ("memwise", "process"),
    "memwise (threads)": ("memwise", "thread"),
    "strax (single thread)": ("strax", "single_thread"),
    "strax (mailbox, threads)": ("strax", "mailbox_threads"),
    "strax (mailbox, processes)": ("strax", "mailbox_processes"),
}
METRICS = (
    Metric("cold_mb_s", "cold MB/s", ",.1f"),
    Metric("reload_mb_s", "reload MB/s", ",.0f"),
    Metric("peak_pss_mb", "peak PSS MiB", ",.0f", higher_is_better=False),
    Metric("peak_private_mb", "peak private MiB", ",.0f", higher_is_better=False),
)
TARGET_COLD = 1.5  # memwise's cold MB/s over strax's best setting
RUN, WARM_RUN = "bench", "warmup"
CHILD_TIMEOUT_S = 900.0
SAMPLE_S = 0.05
MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    chunks: int
    records_per_chunk: int


FULL = Sizes(chunks=24, records_per_chunk=20_000)  # about 115 MB of raw records
QUICK = Sizes(chunks=8, records_per_chunk=20_000)  # about 38 MB
WARM = Sizes(chunks=2, records_per_chunk=2_000)  # a chunk for each worker


def run(quick: bool = False) -> TargetedResult:
    """Measure every system, each in fresh processes; skip strax when it is not installed."""
    sizes = QUICK if quick else FULL
    results: dict[str, Figures] = {}
    skipped: dict[str, str] = {}
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="memwise-bench-data-") as tmp:
        for name, (framework, mode) in SYSTEMS.items():
            root = str(Path(tmp) / name.replace(" ", "_").replace(",", ""))
            try:
                figures, digests[name] = _measure(framework, mode, root, sizes)
                results[name] = figures
            except ImportError as exc:
                skipped[name] = f"not available: {exc}"
            except Exception as exc:  # a peer that breaks must not take the others down
                skipped[name] = f"failed: {type(exc).__name__}: {exc}"
    return {
        "benchmark": "data",
        "results": results,
        "skipped": skipped,
        "ratios": ratios_against(results, SUBJECT, METRICS),
        "targets": _targets(results, digests),
    }


def _targets(results: dict[str, Figures], digests: dict[str, str]) -> dict[str, Target]:
    """Best setting against best setting: memwise's fastest cold setting against strax's
    fastest, and that same memwise setting's peak PSS against strax's lowest."""
    strax = {n: f for n, f in results.items() if n.startswith("strax")}
    mine = {n: f for n, f in results.items() if n.startswith("memwise")}
    if not mine or not strax:
        return {}
    best = max(mine, key=lambda n: mine[n]["cold_mb_s"])
    cold = mine[best]["cold_mb_s"] / max(f["cold_mb_s"] for f in strax.values())
    reload = max(f["reload_mb_s"] for f in mine.values()) / max(
        f["reload_mb_s"] for f in strax.values()
    )
    memory = mine[best]["peak_pss_mb"] / min(f["peak_pss_mb"] for f in strax.values())
    same = len({digests[n] for n in results}) == 1
    return {
        f"cold MB/s, {best} vs strax's best setting": at_least(cold, TARGET_COLD, "x"),
        "reload MB/s, memwise's best vs strax's best setting": at_least(reload, 1.0, "x"),
        f"peak PSS, {best} vs strax's lowest setting": at_most(memory, 1.0, "x"),
        "peaks and peak_basics identical in every system (1 = yes)": at_least(float(same), 1.0),
    }


def _measure(framework: str, mode: str, root: str, sizes: Sizes) -> tuple[Figures, str]:
    if framework == "strax":
        import importlib.util

        if importlib.util.find_spec("strax") is None:
            raise ImportError("strax is not installed (uv sync --group peers)")
    args = {"framework": framework, "mode": mode, "root": root, **asdict(sizes)}
    _child({**args, "phase": "prepare"})
    cold, peak_pss, peak_private = _child({**args, "phase": "cold"}, sample=True)
    reload, _, _ = _child({**args, "phase": "reload"})
    if cold["digest"] != reload["digest"]:
        raise AssertionError(f"{framework} reloaded other peaks than it computed")
    figures = {
        "cold_mb_s": cold["raw_bytes"] / cold["seconds"] / 1e6,
        "reload_mb_s": reload["loaded_bytes"] / reload["seconds"] / 1e6,
        "peak_pss_mb": peak_pss / MiB,
        "peak_private_mb": peak_private / MiB,
        "peaks": float(cold["peaks"]),
    }
    return figures, str(cold["digest"])


def _child(args: dict[str, Any], sample: bool = False) -> tuple[dict[str, Any], int, int]:
    """Run one phase in a fresh interpreter; with ``sample``, its peak PSS and private memory."""
    code = "from memwise.benchmarks.data import child_main; child_main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peaks = [0, 0]
    done = threading.Event()

    def sampler() -> None:
        while not done.wait(SAMPLE_S):
            try:
                tree = usage_tree(process.pid)
            except ProcessLookupError:
                return
            peaks[0] = max(peaks[0], sum(u.pss or u.private for u in tree.values()))
            peaks[1] = max(peaks[1], sum(u.private for u in tree.values()))

    watcher = threading.Thread(target=sampler, daemon=True)
    if sample:
        watcher.start()
    try:
        out, err = process.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        done.set()
        if process.poll() is None:
            process.kill()
            process.wait()
        if sample:
            watcher.join()
    if process.returncode != 0:
        last = err.strip().splitlines()[-1:] or ["no error output"]
        raise RuntimeError(f"{args['phase']} exited with {process.returncode}: {last[0]}")
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures, peaks[0], peaks[1]


# ---- inside the child processes -------------------------------------------------------------


def child_main() -> None:
    """One phase of one system; prints its figures as the last line of JSON."""
    args = json.loads(sys.argv[-1])
    sizes = Sizes(args["chunks"], args["records_per_chunk"])
    system = _Memwise(args) if args["framework"] == "memwise" else _Strax(args)
    try:
        if args["phase"] == "prepare":
            system.raw(RUN, sizes)
            system.raw(WARM_RUN, WARM)
            print(json.dumps({}))
        elif args["phase"] == "cold":
            system.peaks(WARM_RUN, WARM)  # compile, import, start workers: not measured
            start = time.perf_counter()
            peaks = system.peaks(RUN, sizes)
            seconds = time.perf_counter() - start
            raw_bytes = system.nbytes(RUN, "raw_records", sizes)
            digest = _digest(peaks, system.get(RUN, "peak_basics", sizes))
            print(
                json.dumps(
                    {
                        "seconds": seconds,
                        "raw_bytes": raw_bytes,
                        "peaks": len(peaks),
                        "digest": digest,
                    }
                )
            )
        else:
            start = time.perf_counter()
            records = system.get(RUN, "records", sizes)
            peaks = system.get(RUN, "peaks", sizes)
            # Touch every record: a memory map not yet read is not loaded data.
            int(records["area"].sum()) + int(peaks["area"].sum())
            seconds = time.perf_counter() - start
            digest = _digest(peaks, system.get(RUN, "peak_basics", sizes))
            print(
                json.dumps(
                    {
                        "seconds": seconds,
                        "loaded_bytes": records.nbytes + peaks.nbytes,
                        "digest": digest,
                    }
                )
            )
    finally:
        system.close()


def _digest(*arrays: Any) -> str:
    h = hashlib.blake2b(digest_size=12)
    for array in arrays:
        h.update(array.tobytes())
    return h.hexdigest()


def _config(sizes: Sizes) -> dict[str, Any]:
    return {"chunks": sizes.chunks, "records_per_chunk": sizes.records_per_chunk}


class _Memwise:
    def __init__(self, args: dict[str, Any]) -> None:
        from memwise.demos import waveform_chain

        self._plugins = waveform_chain.PLUGINS
        for plugin in self._plugins:  # this interpreter runs one system only
            plugin.parallel = args["mode"]
        self._root = args["root"]
        self._contexts: list[Any] = []

    def _context(self, sizes: Sizes) -> Any:
        from memwise.data import Context

        if self._contexts:  # one context, one pool, for the warm-up and the measured run
            self._contexts[0].set_config(**_config(sizes))
            return self._contexts[0]
        ctx = Context(self._root, plugins=self._plugins, workers=WORKERS, config=_config(sizes))
        self._contexts.append(ctx)
        return ctx

    def raw(self, run_id: str, sizes: Sizes) -> None:
        self._context(sizes).get_array(run_id, "raw_records")

    def peaks(self, run_id: str, sizes: Sizes) -> Any:
        return self._context(sizes).get_array(run_id, "peaks")

    def get(self, run_id: str, name: str, sizes: Sizes) -> Any:
        return self._context(sizes).get_array(run_id, name)

    def nbytes(self, run_id: str, name: str, sizes: Sizes) -> int:
        ctx = self._context(sizes)
        return int(ctx.storage[0].size(ctx.key_for(run_id, name)))

    def close(self) -> None:
        for ctx in self._contexts:
            ctx.close()


class _Strax:
    def __init__(self, args: dict[str, Any]) -> None:
        import strax

        from memwise.benchmarks import _strax_chain

        self._mode = args["mode"]
        self._context = strax.Context(
            storage=[strax.DataDirectory(args["root"])],
            register=list(_strax_chain.PLUGINS),
            allow_multiprocess=self._mode == "mailbox_processes",
        )

    def _options(self, sizes: Sizes) -> dict[str, Any]:
        self._context.set_config(_config(sizes))
        if self._mode == "single_thread":
            return {"processor": "single_thread", "progress_bar": False}
        return {"processor": "threaded_mailbox", "max_workers": WORKERS, "progress_bar": False}

    def raw(self, run_id: str, sizes: Sizes) -> None:
        self._context.make(run_id, "raw_records", **self._options(sizes))

    def peaks(self, run_id: str, sizes: Sizes) -> Any:
        return self._context.get_array(run_id, "peaks", **self._options(sizes))

    def get(self, run_id: str, name: str, sizes: Sizes) -> Any:
        return self._context.get_array(run_id, name, **self._options(sizes))

    def nbytes(self, run_id: str, name: str, sizes: Sizes) -> int:
        return int(self.get(run_id, name, sizes).nbytes)

    def close(self) -> None:
        pass


def print_table(result: TargetedResult, console: Console | None = None) -> None:
    """Figures, memwise (processes) ÷ each system, and the issue's targets."""
    console = console or Console()
    print_result(result, METRICS, SUBJECT, console)
    if not result["targets"]:
        console.print("[yellow]targets not checked[/]: memwise or strax has no figures")
    print_targets(result["targets"], console)
