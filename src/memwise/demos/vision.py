"""``memwise demo vision``: a visual inspection line as an ordered, bounded memwise pipeline.

480x640 frames cut from the scikit-image sample photographs move past the camera with injected
defects (scratches, spots) and go through three stages: denoise/threshold, defect detection
(``skimage.measure``), pass/fail verdict. Frames are leased from a shared ``BufferPool`` and
reach the worker processes as handles to shared memory; each frame's buffer goes back to the
pool once the last stage is done with it.

The seed's acceptance bar: verdicts equal a serial run's item for item, output order exact,
no frame dropped. Also printed: frames/s, latency percentiles and peak memory, serial against
the pipeline.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from memwise.demos import Scenario
from memwise.demos._inspection import load_scenes, warm_up
from memwise.demos._lines import LineRun, MemwiseLine, SerialLine, measure
from memwise.memory import format_size
from memwise.pool.api import WorkerPool

# A 480x640x3 frame is 900 KiB: below the pool's default 1 MiB threshold for shared-memory
# transport, so the pool is told to send buffers from 256 KiB on through slots.
SHM_THRESHOLD = "256 KiB"
CAPACITY = 8


def run(*, short: bool, console: Console) -> Scenario:
    """Serial reference, then the pipeline over two worker processes, then the checks.

    Both are warmed up (every worker process has run a frame of each stage) before the frames
    that are timed and checked.
    """
    count = 24 if short else 150
    console.print(f"Cutting {count} frames of 480x640 from the scikit-image photographs ...")
    scenes = load_scenes()
    serial = measure(SerialLine(scenes, CAPACITY), count)
    with WorkerPool(2, initializer=warm_up, shm_threshold=SHM_THRESHOLD) as pool:
        line = measure(MemwiseLine(scenes, CAPACITY, pool=pool), count)
    expected = list(range(count))
    same = line.verdicts == serial.verdicts
    in_order = [v.index for v in line.verdicts] == expected and line.order_violations == 0
    complete = len(line.verdicts) == count and line.drops == 0 and not line.details["drops_counted"]
    _report(console, serial, line, same, in_order, complete)
    rejected = sum(not verdict.passed for verdict in line.verdicts)
    return Scenario(
        name="vision",
        checked=f"{len(line.verdicts)}/{count} verdicts = serial, in order, 0 dropped",
        passed=same and in_order and complete,
        figure=f"{line.frames_per_s:.1f} vs {serial.frames_per_s:.1f} frames/s serial",
        details={"serial": serial.figures(), "pipeline": line.figures(), "rejected": rejected},
    )


def _report(
    console: Console, serial: LineRun, line: LineRun, same: bool, in_order: bool, complete: bool
) -> None:
    table = Table(title="memwise demo vision: inspection line")
    for column in ("run", "frames/s", "p50 ms", "p99 ms", "peak memory", "drops", "order"):
        table.add_column(column, justify="right")
    for name, run_ in (("serial", serial), ("pipeline, 2 processes", line)):
        table.add_row(
            name,
            f"{run_.frames_per_s:.1f}",
            f"{run_.p50_ms:.0f}",
            f"{run_.p99_ms:.0f}",
            format_size(run_.peak_bytes),
            str(run_.drops),
            "exact" if run_.order_violations == 0 else f"{run_.order_violations} late",
        )
    console.print(table)
    rejected = sum(not verdict.passed for verdict in line.verdicts)
    details = line.details
    console.print(
        f"{rejected} of {len(line.verdicts)} frames rejected; at most "
        f"{details['peak_in_flight']} frames in flight (capacity {details['capacity']}), "
        f"{details['buffers_peak']} frame buffers leased at once"
    )
    for check, ok in (
        ("verdicts equal the serial run's, item for item", same),
        ("results in exact frame order", in_order),
        ("no frame dropped", complete),
    ):
        console.print(f"[green]ok[/] {check}" if ok else f"[red]FAILED[/] {check}")
