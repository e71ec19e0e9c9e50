"""Ray clusters for the tests: on loopback, with token authentication, and always stopped.

Every process binds to loopback addresses (127.0.0.2 and up: Ray rewrites 127.0.0.1 to the
machine's outward address). A cluster started with ``ray start`` gets a token generated here,
handed to every node and to the driver through ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``. Workers
that a raylet starts use the interpreter that ran ``ray start`` (this environment's) and find
the tests' task modules through ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

TESTS = str(Path(__file__).parent)
RAY = str(Path(sys.executable).with_name("ray"))  # the CLI of this very environment
START_TIMEOUT = 120.0
START_ATTEMPTS = 3
# What Ray says when its own processes did not start within its fixed time.
TOO_SLOW = ("timed out during startup", "while waiting for node to startup")


def installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def shm_entries() -> set[str]:
    """What Ray may leave in /dev/shm: every entry but memwise's segments (the conftest checks
    those, knowing which belong to this test session) and multiprocessing's semaphores (other
    programs on the machine make them at any time)."""
    try:
        entries = os.listdir("/dev/shm")
    except OSError:
        return set()
    return {entry for entry in entries if not entry.startswith(("mw_", "sem."))}


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# One token per test session: Ray caches the token a process has read, so every cluster this
# process joins as a driver must share it.
TOKEN = secrets.token_hex(32)


def token_env() -> dict[str, str]:
    """Token authentication for a test cluster: a generated token, never a file in ~/.ray."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def node_of(item: object, seconds: float = 0.0) -> tuple[object, str]:
    """``(item, the address of the node running this)``, after ``seconds``."""
    import ray

    time.sleep(seconds)
    return item, ray.util.get_node_ip_address()


def worker_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        # Without this, under ``uv run`` Ray would build a fresh environment for its workers.
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "PYTHONPATH": TESTS if not path else f"{TESTS}{os.pathsep}{path}",
    }


def configure_driver() -> None:
    """Make this process a driver with the tests' token, whose workers use this environment.

    Ray reads these once, when it is first imported, so this runs at import of this module,
    before any test imports Ray.
    """
    os.environ.update(token_env())
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"


configure_driver()


class Node:
    """One ``ray start --block`` process (a head or a worker node) and all it started."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [RAY, "start", "--block", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """End the node and every process it started (its raylet ends its workers)."""
        procs = self.descendants()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(20)
        for proc in [*procs, psutil.Process(self.process.pid)] if self.alive() else procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=20)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_started(self) -> bool:
        """Whether ``ray start`` reports the node running (False if it gave up)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.alive():
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return True
            time.sleep(0.2)
        return False


class CliCluster:
    """A head and worker nodes started with ``ray start``, as separate processes."""

    def __init__(self, head_cpus: int = 1) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mwray"))
        self.env = {**os.environ, **token_env(), **worker_env(), "PYTHONUNBUFFERED": "1"}
        self.host = "127.0.0.2"
        port = free_port(self.host)
        self.address = f"{self.host}:{port}"
        self.nodes: list[Node] = []
        try:
            # The dashboard flag is the head's alone: a worker node refuses it.
            self._start(
                self.host, ["--head", f"--port={port}", "--include-dashboard=false"], head_cpus
            )
        except BaseException:
            self.stop()
            raise

    def add_node(self, host: str, cpus: int = 1) -> Node:
        return self._start(host, [f"--address={self.address}"], cpus)

    def _start(self, host: str, args: list[str], cpus: int) -> Node:
        """Start a node and wait until it runs; a start that fails (on a loaded machine a
        raylet gives up when its agents take over 15 s to start) is tried again."""
        for attempt in range(START_ATTEMPTS):
            ports = [free_port(host) for _ in range(4)]
            node = Node(
                [
                    *args,
                    f"--node-ip-address={host}",
                    f"--num-cpus={cpus}",
                    f"--temp-dir={self.tmp}",
                    "--disable-usage-stats",
                    # Ports the raylet would otherwise wait for its agents to choose.
                    f"--dashboard-agent-grpc-port={ports[0]}",
                    f"--dashboard-agent-listen-port={ports[1]}",
                    f"--metrics-export-port={ports[2]}",
                    f"--runtime-env-agent-port={ports[3]}",
                ],
                self.env,
                self.tmp / f"node{len(self.nodes)}.{attempt}.log",
            )
            if node.wait_started():
                self.nodes.append(node)
                return node
            node.stop()
        raise RuntimeError(f"a Ray node did not start:\n{node.log.read_text()[-3000:]}")

    def wait_for_nodes(self, count: int) -> None:
        import ray

        deadline = time.monotonic() + START_TIMEOUT
        while sum(1 for n in ray.nodes() if n["Alive"]) < count:
            dead = [node for node in self.nodes if not node.alive()]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(node.log.read_text()[-2000:] for node in self.nodes)
                raise RuntimeError(f"the test cluster did not start:\n{logs}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def driver_env(env: dict[str, str]) -> Iterator[None]:
    """This process's environment with ``env`` set, restored afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def local_cluster(num_cpus: int = 2) -> Iterator[object]:
    """A local cluster started by the backend's own ``connect`` (yields the ``ray`` module);
    stopped at the end, and checked to leave nothing of Ray's in /dev/shm."""
    from memwise.ray import connect, ray

    shm_before = shm_entries()
    with driver_env(worker_env()):
        for attempt in range(START_ATTEMPTS):
            try:
                connect(num_cpus=num_cpus)
                break
            except Exception as exc:
                # Ray gives its own processes a fixed time to start; on a loaded machine that
                # runs out now and then, which says nothing of memwise: start again (any
                # other failure, or the last attempt's, is the test's error).
                ray.shutdown()
                if not any(s in str(exc) for s in TOO_SLOW) or attempt == START_ATTEMPTS - 1:
                    raise
        try:
            yield ray
        finally:
            ray.shutdown()
    leftover = shm_entries() - shm_before
    assert not {entry for entry in leftover if "plasma" in entry or "ray" in entry}, leftover
