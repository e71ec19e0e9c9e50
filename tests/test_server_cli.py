"""``memwise serve`` and ``memwise top`` as a user runs them: real subprocesses, real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _http import get_json
from _tasks import is_gone

pytestmark = pytest.mark.timeout(60)

WAIT = 30.0


def memwise(*args: str) -> list[str]:
    """The installed ``memwise`` command, as a user runs it."""
    return [str(Path(sys.executable).with_name("memwise")), *args]


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        memwise("serve", "--port", "0", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()  # "memwise serve: dashboard on <url> (Ctrl+C to stop)"
    if "dashboard on" not in line:
        process.kill()
        _, err = process.communicate(timeout=WAIT)
        raise AssertionError(f"memwise serve did not start: {line!r} {err}")
    return process, line.split("dashboard on ", 1)[1].split()[0]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal_with_every_worker_gone(stop):
    process, url = start_server("--workers", "2", "--min-workers", "2", "--recycle-tasks", "1000")
    try:
        deadline = time.monotonic() + WAIT
        while True:
            status, snap = get_json(url, "/api/snapshot")
            pids = [w["pid"] for w in snap["workers"] if w["pid"]]
            if len(pids) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200 and len(pids) == 2
        if stop == signal.SIGTERM:
            top = subprocess.run(
                memwise("top", url, "--once"), capture_output=True, text=True, timeout=WAIT
            )
            assert top.returncode == 0, top.stderr
            assert all(str(pid) in top.stdout for pid in pids)
            assert "running" in top.stdout
        process.send_signal(stop)
        out, err = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "every worker has exited" in out
    assert all(is_gone(pid) for pid in pids)


def test_serve_refuses_a_public_address_without_a_token(monkeypatch):
    from typer.testing import CliRunner

    from memwise.cli import app

    monkeypatch.delenv("MEMWISE_TOKEN", raising=False)
    done = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--workers", "1"])
    assert done.exit_code == 2
    assert "without a token" in done.output and "--token" in done.output


def test_top_says_what_is_wrong_when_no_server_answers():
    from typer.testing import CliRunner

    from memwise.cli import app

    done = CliRunner().invoke(app, ["top", "http://127.0.0.1:9", "--once"])
    assert done.exit_code == 1
    assert "memwise top" in done.output
