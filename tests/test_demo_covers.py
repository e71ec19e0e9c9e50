"""``memwise demo covers``: the cover renderer, the service's answers, its idle state."""

from __future__ import annotations

import io
import warnings

import pytest
from PIL import Image

from memwise.demos.covers import measure
from memwise.demos.covers.render import CANVAS, check_request, render_array
from memwise.demos.covers.service import create_app, make_pool

with warnings.catch_warnings():
    # Starlette's test client now prefers httpx2; httpx is what the lock has, and works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.timeout(120)
LOCAL = "http://127.0.0.1"  # the service answers loopback host names only
WAIT_EXIT = 30.0


@pytest.mark.parametrize(
    ("title", "photos", "complaint"),
    [
        ("", ["coffee"], "title"),
        ("x" * 61, ["coffee"], "title"),
        ("ok", [], "photos"),
        ("ok", ["coffee", "nosuchphoto"], "nosuchphoto"),
        ("ok", ["coffee"] * 10, "at most 9"),
    ],
)
def test_bad_requests_say_what_is_wrong(title, photos, complaint):
    with pytest.raises(ValueError, match=complaint):
        check_request(title, photos)


def test_float32_and_float64_renders_agree():
    single = render_array("Weekend", ["rocket", "coffee"], "float32")
    double = render_array("Weekend", ["rocket", "coffee"], "float64")
    assert single.shape == (CANVAS[1], CANVAS[0], 3)
    # Blending in float32 moves no pixel by more than a rounding step.
    assert abs(single.astype(int) - double.astype(int)).max() <= 1


def test_the_service_renders_covers_and_refuses_bad_input():
    with TestClient(
        create_app(lambda: make_pool(budget="8 GiB", idle=0.5)), base_url=LOCAL
    ) as client:
        assert client.get("/healthz").json()["workers"] == 0  # nothing started yet
        response = client.get("/cover", params={"title": "Weekend", "photos": "rocket,coffee"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == CANVAS
        bad = client.get("/cover", params={"photos": "nosuchphoto"})
        assert bad.status_code == 400
        assert bad.json()["error"] == "InvalidRequest" and "nosuchphoto" in bad.json()["message"]


def test_a_render_that_cannot_get_memory_answers_503_with_retry_after():
    # This test process alone is above 1 MiB: a render's reservation can never fit.
    with TestClient(
        create_app(lambda: make_pool(budget="1 MiB", max_wait=0.2)), base_url=LOCAL
    ) as client:
        response = client.get("/cover", params={"photos": "coffee"})
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"] == "MemoryBudgetExceeded"
    assert "against a limit of 1.0 MiB" in response.json()["message"]


def test_the_idle_service_process_has_imported_nothing_heavy():
    with measure.running_service(measure.SHORT) as service:
        measure.wait_ready(service)
        health = service.health()
    assert health == {"status": "ok", "workers": 0, "loaded": []}


def test_the_dashboard_can_be_mounted():
    app = create_app(lambda: make_pool(budget="8 GiB"), dashboard=True)
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/memwise/healthz").status_code == 200
        snapshot = client.get("/memwise/api/snapshot")
        assert snapshot.status_code == 200 and isinstance(snapshot.json(), dict)
        assert client.get("/healthz").json()["workers"] == 0


def test_the_service_refuses_a_host_name_that_is_not_loopback():
    # What a page reaching the service by DNS rebinding would send.
    with TestClient(create_app(None), base_url="http://rebound.example") as client:
        refused = client.get("/healthz")
    assert refused.status_code == 421 and "loopback" in refused.json()["error"]
    with TestClient(create_app(None), base_url=LOCAL) as client:
        assert client.get("/healthz").status_code == 200


def test_an_open_dashboard_event_stream_does_not_hold_the_service_shutdown():
    with measure.running_service(measure.SHORT, "--dashboard") as service:
        measure.wait_ready(service)
        with service.client.stream("GET", "/memwise/api/events") as events:
            chunks = events.iter_bytes()  # kept: a dropped iterator closes the connection
            assert next(chunks).startswith(b"retry:")
            service.process.terminate()
            service.process.wait(WAIT_EXIT)  # raises TimeoutExpired if the stream holds it
