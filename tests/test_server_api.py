"""The server's HTTP surface on a real pool, over real loopback sockets."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _http import EventStream, get_json, request
from _server_tasks import square
from memwise import WorkerPool
from memwise.server import create_app, serving

pytestmark = pytest.mark.timeout(60)


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_snapshot_metrics_and_health_describe_the_pool(shared_pool):
    before = shared_pool.snapshot().done
    assert list(shared_pool.map(square, range(20))) == [x * x for x in range(20)]
    with serving(shared_pool) as url:
        status, snap = get_json(url, "/api/snapshot")
        assert status == 200
        assert snap["state"] == "running"
        assert snap["done"] >= before + 1
        assert len(snap["workers"]) == 2
        assert all(w["pid"] for w in snap["workers"])
        assert snap["pipelines"] == []

        status, headers, body = request(url, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        samples = metric_samples(body.decode())
        done = samples[("memwise_tasks_total", (("outcome", "done"),))]
        assert done == shared_pool.snapshot().done
        assert samples[("memwise_pool_up", ())] == 1
        assert samples[("memwise_task_duration_seconds_count", ())] == done
        live = sum(
            value
            for (name, labels), value in samples.items()
            if name == "memwise_workers" and labels != (("state", "stopped"),)
        )
        assert live == 2
        assert ("memwise_worker_private_bytes", (("lane", "0"),)) in samples
        assert ("memwise_worker_restarts_total", (("reason", "died"),)) in samples
        assert ("memwise_shm_bytes", (("state", "in_use"),)) in samples

        assert get_json(url, "/healthz") == (200, {"status": "ok", "state": "running"})
        status, headers, body = request(url, "/")
        assert status == 200 and b"dashboard.js" in body
        for path in ("/dashboard.js", "/dashboard.css"):
            assert request(url, path)[0] == 200


def test_bad_requests_get_clear_errors_and_the_server_keeps_running(shared_pool):
    with serving(shared_pool, max_body=1024) as url:
        status, body = get_json(url, "/no/such/page")
        assert status == 404 and "error" in body
        status, body = get_json(url, "/api/snapshot", method="POST", body=b"{}")
        assert status == 405 and "error" in body
        status, body = get_json(url, "/api/snapshot", method="POST", body=b"x" * 5000)
        assert status == 413 and "1024 bytes" in body["error"]
        assert request(url, "/api/snapshot", headers={"Content-Length": "nope"})[0] == 400
        status, body = get_json(url, "/api/events?kinds=task_finished,bogus")
        assert status == 400 and "bogus" in body["error"]
        # A page on another origin reaching the loopback server by DNS rebinding.
        status, body = get_json(url, "/api/snapshot", headers={"Host": "evil.example:80"})
        assert status == 421 and "loopback" in body["error"]
        assert get_json(url, "/healthz")[0] == 200


def test_a_token_is_checked_on_every_request(shared_pool):
    with serving(shared_pool, token="s3cret-token") as url:
        for path in ("/", "/api/snapshot", "/metrics", "/healthz", "/api/events"):
            status, headers, _ = request(url, path)
            assert status == 401, path
            assert headers["www-authenticate"] == "Bearer"
        assert request(url, "/api/snapshot", headers={"Authorization": "Bearer wrong"})[0] == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert request(url, "/api/snapshot", headers=good)[0] == 200
        assert request(url, "/metrics?token=s3cret-token")[0] == 200


def test_events_stream_pool_events_and_snapshots(shared_pool):
    with serving(shared_pool, interval=0.2) as url:
        stream = EventStream(url, "/api/events?kinds=task_finished")
        try:
            assert stream.status == 200
            for future in [shared_pool.submit(square, n) for n in range(5)]:
                future.result(timeout=30)
            finished, snapshots = 0, 0
            for name, data in stream.messages():
                if name == "pool":
                    assert data["kind"] == "task_finished"
                    finished += 1
                elif name == "snapshot":
                    assert data["state"] == "running"
                    snapshots += 1
                if finished >= 5 and snapshots >= 2:
                    break
        finally:
            stream.close()


def test_event_streams_are_bounded_in_number(shared_pool):
    with serving(shared_pool, max_clients=2) as url:
        first = EventStream(url, "/api/events")
        second = EventStream(url, "/api/events")
        try:
            assert (first.status, second.status) == (200, 200)
            status, headers, body = request(url, "/api/events")
            assert status == 503 and headers["retry-after"] == "5"
            assert b"2 event streams" in body
        finally:
            first.close()
        deadline = time.monotonic() + 20
        while True:  # the server notices the closed stream on its next write or keep-alive
            third = EventStream(url, "/api/events")
            if third.status == 200 or time.monotonic() > deadline:
                break
            third.close()
            time.sleep(0.2)
        try:
            assert third.status == 200
        finally:
            third.close()
            second.close()


def test_a_slow_client_loses_old_events_and_is_told():
    # A pool of its own: a burst of queued tasks makes the pool set up shared state that
    # lives as long as the pool.
    with WorkerPool(1) as pool, serving(pool, client_buffer=4, interval=5.0) as url:
        stream = EventStream(url, "/api/events", rcvbuf=4096)
        try:
            assert stream.status == 200
            # The client reads nothing while hundreds of events are produced.
            for future in [pool.submit(square, n) for n in range(400)]:
                future.result(timeout=30)
            for name, data in stream.messages():
                if name == "lost":
                    assert data["dropped"] > 0
                    break
        finally:
            stream.close()


def test_a_bounded_load_gets_no_server_errors(shared_pool):
    """Four clients, at most 400 requests or 10 s in all, on every read endpoint."""
    paths = ["/api/snapshot", "/metrics", "/healthz", "/", "/missing"]
    statuses: list[int] = []
    lock = threading.Lock()
    with serving(shared_pool) as url:
        deadline = time.monotonic() + 10

        def client(offset: int) -> None:
            for i in range(100):
                if time.monotonic() > deadline:
                    return
                status = request(url, paths[(i + offset) % len(paths)])[0]
                with lock:
                    statuses.append(status)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert get_json(url, "/healthz")[0] == 200
    assert statuses, "no request completed"
    assert not [s for s in statuses if s >= 500]
    assert set(statuses) <= {200, 404}


def test_health_is_503_with_the_reason_once_the_pool_is_shut_down():
    pool = WorkerPool(1)
    with serving(pool) as url:
        assert get_json(url, "/healthz")[0] == 200
        pool.shutdown(wait=True)
        status, body = get_json(url, "/healthz")
        assert status == 503
        assert body["state"] == "shut down" and "shut down" in body["reason"]
        assert get_json(url, "/api/snapshot")[0] == 200


def test_create_app_rejects_nonsense_limits(shared_pool):
    with pytest.raises(ValueError, match="max_clients"):
        create_app(shared_pool, max_clients=0)


def test_pipeline_stages_are_shown_and_exported(shared_pool):
    from memwise.pipeline import Pipeline

    line = Pipeline(range(5), name="ingest").pipe(square, workers=1)
    with line, serving(shared_pool, pipelines=[line]) as url:
        assert list(line) == [n * n for n in range(5)]
        status, snap = get_json(url, "/api/snapshot")
        assert status == 200
        (pipeline,) = snap["pipelines"]
        assert pipeline["name"] == "ingest"
        (stage,) = pipeline["stages"]
        assert stage["name"] == "square" and stage["done"] == 5 and stage["errors"] == 0
        samples = metric_samples(request(url, "/metrics")[2].decode())
        labels = (("pipeline", "ingest"), ("stage", "square"))
        assert samples[("memwise_stage_items_total", labels)] == 5
        assert ("memwise_stage_busy_ratio", labels) in samples


def test_resizing_needs_the_token_even_on_loopback_and_checks_its_body():
    with WorkerPool(1) as pool:
        with serving(pool) as url:
            status, body = get_json(url, "/api/resize", method="POST", body=b'{"workers": 2}')
            assert status == 403 and "token" in body["error"]
        auth = {"Authorization": "Bearer k3y", "Content-Type": "application/json"}
        with serving(pool, token="k3y", max_body=256) as url:
            assert get_json(url, "/api/resize", headers=auth)[0] == 405  # never a GET
            for bad, status, words in (
                (b"{not json", 400, "not JSON"),
                (b'{"workers": "two"}', 400, "<int>"),
                (b"[2]", 400, "<int>"),
                (b'{"workers": 0}', 400, "between 1 and"),
                (b'{"workers": 2, "pad": "' + b"x" * 300 + b'"}', 413, "256 bytes"),
            ):
                got, body = get_json(url, "/api/resize", method="POST", body=bad, headers=auth)
                assert got == status and words in body["error"], (bad, got, body)
            assert pool.snapshot().max_workers == 1
            status, body = get_json(
                url, "/api/resize", method="POST", body=b'{"workers": 2}', headers=auth
            )
            assert (status, body) == (200, {"workers": 2})
            assert get_json(url, "/api/snapshot", headers=auth)[1]["max_workers"] == 2
            pool.shutdown()
            status, body = get_json(
                url, "/api/resize", method="POST", body=b'{"workers": 3}', headers=auth
            )
            assert status == 409 and "shut down" in body["error"], (status, body)


class _FailingPipeline:
    """A pipeline whose snapshot fails with a message that must not reach a client."""

    name = "failing"

    def snapshot(self):
        raise ValueError("secret detail /home/user/data.npy")


def test_a_server_error_answers_500_without_the_detail_and_logs_it(caplog):
    failing = _FailingPipeline()
    with WorkerPool(1) as pool, serving(pool, pipelines={"failing": failing}) as url:
        status, body = get_json(url, "/api/snapshot")
    assert status == 500
    assert body == {"error": "internal error; see the server log"}
    assert "secret detail" in caplog.text


def test_the_console_view_draws_an_in_process_pool(shared_pool):
    from rich.console import Console

    from memwise.observe.console import top

    console = Console(record=True, width=160)
    top(shared_pool, frames=1, console=console, title="pool under test")
    text = console.export_text()
    assert "pool under test" in text and "running" in text
    for worker in shared_pool.snapshot().workers:
        assert str(worker.pid) in text


def test_the_remote_console_source_ignores_proxy_settings(shared_pool, monkeypatch):
    from memwise.observe.console import remote

    # A proxy that answers nothing: a request sent through it (with the token) would fail.
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with serving(shared_pool, token="k3y") as url:
        assert remote(url, token="k3y")()["state"] == "running"
