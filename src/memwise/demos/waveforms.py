"""``memwise demo waveforms``: a strax-like chain of data products, computed once and cached.

Synthetic PMT-like waveforms (pulses on noisy baselines, 64 channels, 0.1 s chunks) go
through raw_records → records → hits → (peaks, peak_basics), one plugin with two outputs.
The scenario shows, on data it generates itself:

1. a cold run: every chunk runs the whole chain in one of two worker processes, products
   are written atomically into a directory storage;
2. a second run: everything comes from the cache (memory-mapped, no copy);
3. two processes started at once on a new run: they take the same per-key lock, one
   computes, the other waits and reads: the run is computed once.

Its bar: the same peaks cold and reloaded, the reload served from the cache alone, and the
racing processes computing each chunk once and reading identical peaks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from memwise.demos import Scenario
from memwise.memory import format_size, usage_tree

SHORT = {"chunks": 6, "records_per_chunk": 8_000}
FULL = {"chunks": 20, "records_per_chunk": 20_000}
RACE_TIMEOUT_S = 120.0


def run(*, short: bool, console: Console) -> Scenario:
    """The scenario; ``short`` processes about 11 MB of raw records instead of 90 MB."""
    from memwise.data import Context
    from memwise.demos.waveform_chain import PLUGINS

    config = SHORT if short else FULL
    with tempfile.TemporaryDirectory(prefix="memwise-waveforms-") as root:
        with Context(root, plugins=PLUGINS, workers=2, config=config) as ctx:
            console.print(
                f"waveforms: {config['chunks']} chunks of {config['records_per_chunk']:,} records, "
                "2 worker processes"
            )
            started = time.perf_counter()
            peaks = ctx.get_array("run1", "peaks")
            cold_s = time.perf_counter() - started
            memory = usage_tree()
            raw_bytes = ctx.storage[0].size(ctx.key_for("run1", "raw_records"))
            computed = ctx.stats["computed"]

            started = time.perf_counter()
            again = ctx.get_array("run1", "peaks")
            basics = ctx.get_array("run1", "peak_basics")
            int(again["area"].sum())
            reload_s = time.perf_counter() - started
            reload_computed = ctx.stats["computed"] - computed
            same = bool((again == peaks).all()) and len(basics) == len(peaks)

        race = _race(root, config)
    digests = {r["digest"] for r in race}
    computing = [r for r in race if r["computed"]]
    raced_once = len(race) == 2 and len(computing) == 1 and len(digests) == 1
    passed = same and reload_computed == 0 and raced_once
    pss = sum(u.pss or u.private for u in memory.values())
    private = sum(u.private for u in memory.values())

    table = Table(title="memwise demo waveforms", show_header=False)
    table.add_row("raw records", format_size(raw_bytes))
    table.add_row(
        "cold (generate + chain + save)", f"{cold_s:.2f} s, {raw_bytes / cold_s / 1e6:.1f} MB/s"
    )
    table.add_row("products computed cold", str(computed))
    table.add_row("peaks / peak_basics", f"{len(peaks):,} / {len(basics):,}")
    table.add_row(
        "second run (from cache)", f"{reload_s * 1000:.1f} ms, {reload_computed} computed"
    )
    table.add_row("same peaks cold and reloaded", "yes" if same else "[red]NO")
    table.add_row(
        "two processes started at once",
        f"{len(computing)} computed, {len(race) - len(computing)} waited and read; "
        f"identical peaks: {'yes' if len(digests) == 1 else '[red]NO'}",
    )
    table.add_row(
        "memory (this process + workers)", f"PSS {format_size(pss)}, private {format_size(private)}"
    )
    console.print(table)
    return Scenario(
        name="waveforms",
        checked="cached reload; 2 racing processes computed it once",
        passed=passed,
        figure=f"{raw_bytes / cold_s / 1e6:.0f} MB/s cold, reload {reload_s * 1000:.0f} ms",
        details={"cold_s": cold_s, "reload_s": reload_s, "race": race, "peaks": len(peaks)},
    )


RACER = """
import json, sys
from memwise.data import Context
from memwise.demos.waveform_chain import PLUGINS
root, config = sys.argv[1], json.loads(sys.argv[2])
print("ready", flush=True)
sys.stdin.read()  # start together: the parent closes stdin once both are ready
ctx = Context(root, plugins=PLUGINS, workers=0, config=config)
peaks = ctx.get_array("run2", "peaks")
print(json.dumps({"computed": ctx.stats["computed"], "waited": ctx.stats["waited"],
                  "digest": __import__("hashlib").blake2b(peaks.tobytes()).hexdigest()}))
"""


def _race(root: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Start two processes on the same new run at the same moment; what each of them did."""
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, root, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    try:
        for racer in racers:  # both imported everything and wait
            assert racer.stdout is not None
            racer.stdout.readline()
        for racer in racers:  # go
            assert racer.stdin is not None
            racer.stdin.close()
        for racer in racers:
            assert racer.stdout is not None
            out = racer.stdout.read()
            if racer.wait(timeout=RACE_TIMEOUT_S) == 0:
                results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
            if racer.stdout is not None:
                racer.stdout.close()
    return results
