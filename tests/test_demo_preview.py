"""``memwise demo preview``: the pieces and one short scripted session, on real photographs."""

from __future__ import annotations

import numpy as np
import pytest

from memwise import shared
from memwise.demos import preview
from memwise.demos.negative import DENSITY_RANGE, ORANGE_MASK, NegativePreview, slider
from memwise.demos.samples import load_rgb

pytestmark = pytest.mark.timeout(120)


def test_a_photograph_becomes_a_16_bit_negative_under_an_orange_mask():
    negative = preview.film_negative("coffee")
    assert negative.dtype == np.uint16 and negative.shape == (400, 600, 3)
    # Dividing out the orange mask and reading density gives the photograph back.
    transmittance = negative / 65535.0 / np.asarray(ORANGE_MASK)
    recovered = -np.log10(np.clip(transmittance, 1e-6, None)) / DENSITY_RANGE
    assert abs(recovered * 255 - load_rgb("coffee")).max() < 1.0


def test_a_proxy_lives_in_shared_memory_and_renders_a_preview():
    with preview.sample_proxies(("chelsea",)) as proxies:
        proxy = proxies["chelsea"]
        assert proxy.shape == (2000, 2000, 3) and proxy.dtype == np.float32
        assert shared.owned_segments()  # the proxy is a segment of this process
        image = NegativePreview().render(proxy, slider(3))
        assert image.shape == (500, 500, 3) and image.dtype == np.uint8
        assert 20 < image.mean() < 235  # a picture, neither black nor blown out
        del proxy, proxies
    assert shared.owned_segments() == []


def test_a_session_survives_a_killed_actor_and_a_hanging_render():
    with preview.sample_proxies(("coffee", "chelsea")) as proxies:
        session = preview.run_session("auto", proxies, switches=3)
        del proxies
    assert session.failures == []
    assert session.drags_complete == 3  # the newest preview of every drag arrived
    assert session.requested == 3 * 10
    assert 3 <= session.rendered < session.requested  # latest wins: drags were coalesced
    assert session.killed.startswith("pid")
    assert session.hang.startswith("timed out")
    assert len(session.app_mib) == len(session.workers_mib) == 3
    assert shared.owned_segments() == []
