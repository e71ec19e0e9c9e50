"""The parent SIGKILLed at start-up, during dispatch and during result hand-over.

Its workers and forkserver must end by themselves, and the segments it left (all named after
the dead parent) must be swept by the next start. The bench reports how long the workers took;
the test only bounds it generously, so that a loaded machine cannot fail it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from memwise import shared

HERE = Path(__file__).parent
GONE_WITHIN = 15.0  # seconds; about 0.1 s on an idle machine


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("phase", ["startup", "dispatch", "handover"])
def test_workers_end_and_segments_are_swept_after_the_parent_is_killed(tmp_path, phase):
    marker = tmp_path / "reached"
    held: set[str] = set()
    program = subprocess.Popen([sys.executable, str(HERE / "_parent.py"), phase, str(marker)])
    try:
        deadline = time.monotonic() + 60.0
        while not marker.exists() and time.monotonic() < deadline and program.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), f"the program never reached {phase}"
        family = descendants(program.pid)
        assert family, "the program started no worker"
        # The program's segments, while it is alive (other programs on this machine may be
        # making segments too: only those named after the program count).
        held = {name.lstrip("/") for name in shared.owned_segments(program.pid) or ()}
        if phase != "startup":  # arrays are in flight: the dead parent leaves segments to sweep
            assert held
        program.send_signal(signal.SIGKILL)
        program.wait(10)
        _, alive = psutil.wait_procs(family, timeout=GONE_WITHIN)
        assert not alive, f"{[p.pid for p in alive]} outlived their parent"
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
    swept = shared.sweep_orphans()
    remaining = memwise_segments() & held
    assert not remaining, f"sweep_orphans left {remaining} (swept {swept})"


def memwise_segments() -> set[str]:
    return {entry for entry in os.listdir("/dev/shm") if entry.startswith("mw_")}
