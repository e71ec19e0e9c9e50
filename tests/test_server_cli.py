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

# A safety net: two server processes start at once, slowly on a busy machine.
pytestmark = pytest.mark.timeout(180)

WAIT = 30.0


def memwise(*args: str) -> list[str]:
    """The installed ``memwise`` command, as a user runs it."""
    return [str(Path(sys.executable).with_name("memwise")), *args]


def launch_server(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        memwise("serve", "--port", "0", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def url_of(process: subprocess.Popen) -> str:
    line = process.stdout.readline()  # "memwise serve: dashboard on <url> (Ctrl+C to stop)"
    if "dashboard on" not in line:
        process.kill()
        _, err = process.communicate(timeout=WAIT)
        raise AssertionError(f"memwise serve did not start: {line!r} {err}")
    return line.split("dashboard on ", 1)[1].split()[0]


def wait_for_workers(url: str, count: int) -> list[int]:
    deadline = time.monotonic() + WAIT
    while True:
        status, snap = get_json(url, "/api/snapshot")
        pids = [w["pid"] for w in snap["workers"] if w["pid"]]
        if (status == 200 and len(pids) == count) or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def test_serve_stops_cleanly_on_sigterm_and_ctrl_c_with_every_worker_gone():
    """Two servers at once (start-up is the slow part): one gets SIGTERM, one SIGINT."""
    from typer.testing import CliRunner

    from memwise.cli import app

    processes = [launch_server("--workers", "2", "--recycle-tasks", "1000") for _ in range(2)]
    servers = [(process, "") for process in processes]
    try:
        servers = [(process, url_of(process)) for process in processes]
        pids = {}
        for (_, url), stop in zip(servers, (signal.SIGTERM, signal.SIGINT), strict=True):
            pids[stop] = wait_for_workers(url, 2)
            assert len(pids[stop]) == 2
        top = CliRunner().invoke(app, ["top", servers[0][1], "--once"])
        assert top.exit_code == 0, top.output
        assert all(str(pid) in top.output for pid in pids[signal.SIGTERM])
        assert "running" in top.output
        for (process, _), stop in zip(servers, pids, strict=True):
            process.send_signal(stop)
        outputs = [process.communicate(timeout=WAIT) for process, _ in servers]
    finally:
        for process, _ in servers:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for (process, _), (out, err) in zip(servers, outputs, strict=True):
        assert process.returncode == 0, err
        assert "every worker has exited" in out
    assert all(is_gone(pid) for group in pids.values() for pid in group)


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


@pytest.mark.parametrize("interval", ["0", "-1"])
def test_top_refuses_an_interval_that_is_not_positive(interval):
    from typer.testing import CliRunner

    from memwise.cli import app

    done = CliRunner().invoke(app, ["top", "http://127.0.0.1:9", "--interval", interval])
    assert done.exit_code == 2
    assert "--interval" in done.output and "more than 0" in done.output


def test_serve_checks_min_workers_against_the_default_worker_count(monkeypatch):
    import os

    from typer.testing import CliRunner

    from memwise.cli import app

    def no_server(*args: object) -> None:
        raise AssertionError("memwise serve started a server despite a bad --min-workers")

    monkeypatch.setattr(os, "execve", no_server)

    done = CliRunner().invoke(app, ["serve", "--min-workers", "99999"])
    assert done.exit_code == 2
    assert "--min-workers" in done.output and "99999" in done.output
