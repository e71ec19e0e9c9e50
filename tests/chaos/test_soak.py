"""Mixed load for a minute (``memwise bench chaos`` runs ten): nothing drifts.

Small and large tasks, overdue tasks killed by their timeout, and busy workers SIGKILLed now
and then. After warm-up the parent's private memory must stay flat (at most 1 MiB per minute,
by a least-squares fit), no descriptor may leak, and the pool must still hold its workers.
"""

from __future__ import annotations

import pytest

from memwise.benchmarks import chaos


@pytest.mark.timeout(300)
def test_a_minute_of_mixed_load_with_faults_leaves_memory_descriptors_and_workers_steady():
    figures = chaos.soak(seconds=60.0, warmup=10.0, rate=1.0)
    assert figures["wrong"] == 0
    assert figures["completed"] > 0 and figures["timed_out"] > 0 and figures["kills"] > 0
    assert figures["private_drift_mib_per_min"] <= 1.0, figures
    assert figures["descriptors_grown"] <= 0, figures
    assert figures["workers_alive_at_end"] == 2
