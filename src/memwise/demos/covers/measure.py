"""Start the cover service as a real process on loopback and measure it from outside.

Shared by ``memwise demo covers`` and ``memwise bench covers``: cold-start idle memory of
the service process, first-request latency (the first worker starts then), peak memory while
three covers render at once (sampled every few ms over the service and its workers), a burst
that overruns the budget's ``max_wait`` (503 with ``Retry-After``), bad input (400), the
return to zero workers and to idle memory, and the SSIM of the float32 render against float64.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memwise.memory import Usage, parse_size, usage, usage_tree

MiB = 1024 * 1024
BUDGET = "100 MiB"
# A budget too small for the service, a worker and one render's reservation together.
TIGHT_BUDGET = "50 MiB"
START_TIMEOUT = 60.0
TITLE = "Films of the week"


@dataclass(frozen=True)
class Sizes:
    idle: float  # seconds an idle worker lives
    max_wait: float  # seconds a render may wait for memory before a 503
    burst: int  # concurrent requests of the overload burst


SHORT = Sizes(idle=1.5, max_wait=1.5, burst=3)
FULL = Sizes(idle=5.0, max_wait=1.5, burst=12)


class Service:
    """A running service process, its address and an HTTP client for it."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        import httpx

        self.process = process
        self.pid = process.pid
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120.0)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get("/healthz").json()
        return result

    def cover(self, title: str = TITLE, photos: str | None = None) -> Any:
        params = {"title": title} | ({"photos": photos} if photos is not None else {})
        return self.client.get("/cover", params=params)

    def cover_retrying(self, attempts: int = 20) -> Any:
        """A cover, honouring ``Retry-After`` on 503 as a well-behaved client does."""
        for _ in range(attempts):
            response = self.cover()
            if response.status_code != 503:
                return response
            time.sleep(float(response.headers["Retry-After"]))
        return response


@contextmanager
def running_service(sizes: Sizes, *extra: str, budget: str = BUDGET) -> Iterator[Service]:
    """The service in its own process, on a socket this process bound to 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "memwise.demos.covers.service", "--fd"]
    command += [str(listener.fileno()), "--budget", budget, "--idle", str(sizes.idle)]
    command += ["--max-wait", str(sizes.max_wait), *extra]
    process = subprocess.Popen(command, pass_fds=(listener.fileno(),))
    listener.close()  # the service holds its own copy of the socket
    service = Service(process, port)
    try:
        yield service
    finally:
        service.client.close()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(service: Service) -> float:
    """Seconds until the service answers (connections queue on its socket meanwhile)."""
    started = time.perf_counter()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            service.health()
            return time.perf_counter() - started
        except Exception:
            if service.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the cover service did not start") from None
            time.sleep(0.05)


def _split(service_pid: int, tree: dict[int, Usage]) -> tuple[list[Usage], list[Usage]]:
    """(service and workers, forkserver): the first is what the budget governs.

    Workers are forked by the forkserver (a child of the service that preloads numpy), so
    they are its children; the forkserver itself is told apart by being a direct child.
    """
    import psutil

    try:
        children = psutil.Process(service_pid).children(recursive=False)
    except psutil.NoSuchProcess:
        return [], []
    servers = {child.pid for child in children if _is_forkserver(child.pid)}
    governed = [u for pid, u in tree.items() if pid not in servers]
    return governed, [u for pid, u in tree.items() if pid in servers]


def _is_forkserver(pid: int) -> bool:
    try:
        return b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class PeakSampler:
    """Samples the service and its workers (the forkserver apart) until stopped."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.peak_private = 0
        self.peak_pss = 0
        self.peak_forkserver = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                tree = usage_tree(self.pid)
            except ProcessLookupError:
                return
            governed, forkserver = _split(self.pid, tree)
            self.peak_private = max(self.peak_private, sum(u.private for u in governed))
            self.peak_pss = max(self.peak_pss, sum(u.pss or u.private for u in governed))
            self.peak_forkserver = max(self.peak_forkserver, sum(u.private for u in forkserver))
            self.samples += 1


def _mib(value: float) -> float:
    return round(value / MiB, 1)


def _idle(service: Service) -> Usage:
    return usage(service.pid)


def measure(sizes: Sizes, inline: bool = False) -> dict[str, Any]:
    """Every figure of one service run (``inline``: renders in the service's own threads)."""
    figures: dict[str, Any] = {"mode": "inline" if inline else "pool"}
    with running_service(sizes, *(["--inline"] if inline else [])) as service:
        figures["start_s"] = round(wait_ready(service), 2)
        cold = _idle(service)
        figures["cold_idle_rss_mib"] = _mib(cold.rss)
        figures["cold_idle_private_mib"] = _mib(cold.private)
        figures["cold_loaded"] = service.health()["loaded"]
        started = time.perf_counter()
        first = service.cover_retrying()
        figures["first_request_s"] = round(time.perf_counter() - started, 2)
        figures["first_status"] = first.status_code
        figures["first_jpeg"] = first.content[:2] == b"\xff\xd8"
        with PeakSampler(service.pid) as sampler, ThreadPoolExecutor(3) as clients:
            started = time.perf_counter()
            statuses = [
                r.status_code for r in clients.map(lambda _: service.cover_retrying(), range(3))
            ]
            figures["three_renders_s"] = round(time.perf_counter() - started, 2)
        figures["three_statuses"] = statuses
        figures["peak_private_mib"] = _mib(sampler.peak_private)
        figures["peak_pss_mib"] = _mib(sampler.peak_pss)
        figures["peak_forkserver_mib"] = _mib(sampler.peak_forkserver)
        figures["peak_samples"] = sampler.samples
        figures["budget_mib"] = _mib(parse_size(BUDGET))
        with ThreadPoolExecutor(sizes.burst) as clients:
            burst = list(clients.map(lambda _: service.cover(), range(sizes.burst)))
        figures["burst"] = {
            str(code): sum(1 for r in burst if r.status_code == code)
            for code in sorted({r.status_code for r in burst})
        }
        refused = [r for r in burst if r.status_code == 503]
        figures["burst_refusals_well_formed"] = all(_refusal(r) for r in refused)
        bad = service.cover(photos="nosuchphoto")
        figures["bad_input"] = {"status": bad.status_code, "message": bad.json()["message"]}
        figures["scaled_to_zero_s"] = _wait_for_zero_workers(service, sizes.idle + 30.0)
        health = service.health()
        figures["idle_workers"] = health["workers"]
        figures["idle_loaded"] = health["loaded"]
        after = _idle(service)
        figures["idle_after_rss_mib"] = _mib(after.rss)
        figures["idle_after_private_mib"] = _mib(after.private)
        tree = usage_tree(service.pid)
        figures["idle_processes"] = len(tree)
    if not inline:
        figures["tight"] = refusal_under_tight_budget(sizes)
    return figures


def _refusal(response: Any) -> dict[str, str] | None:
    """Retry-After and the budget's message of a 503, if it has both."""
    retry_after = response.headers.get("Retry-After")
    message = response.json().get("message", "")
    if not retry_after or "against a limit of" not in message:
        return None
    return {"retry_after": retry_after, "message": message}


def refusal_under_tight_budget(sizes: Sizes) -> dict[str, Any]:
    """A service whose budget cannot fit a render: the request waits ``max_wait``, then 503."""
    with running_service(sizes, budget=TIGHT_BUDGET) as service:
        wait_ready(service)
        started = time.perf_counter()
        response = service.cover()
        return {
            "budget": TIGHT_BUDGET,
            "status": response.status_code,
            "seconds": round(time.perf_counter() - started, 2),
            "refusal": _refusal(response) if response.status_code == 503 else None,
        }


def _wait_for_zero_workers(service: Service, timeout: float) -> float | None:
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.health()["workers"] == 0:
            return round(time.perf_counter() - started, 2)
        time.sleep(0.1)
    return None


def ssim_float32_vs_float64() -> float:
    """SSIM of the float32 render against the float64 one (the seed's check of its change)."""
    from skimage.metrics import structural_similarity

    from memwise.demos.covers.render import render_array
    from memwise.demos.covers.service import DEFAULT_PHOTOS

    single = render_array(TITLE, DEFAULT_PHOTOS, "float32")
    double = render_array(TITLE, DEFAULT_PHOTOS, "float64")
    return float(structural_similarity(single, double, channel_axis=-1))
