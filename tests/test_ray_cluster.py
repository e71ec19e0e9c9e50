"""The Ray backend on a cluster of two nodes on this machine, started with ``ray start``.

Both nodes are separate processes on loopback addresses, with token authentication; the driver
(this process) joins with ``address=``. Stopping the second node mid-run loses nothing: its
tasks are retried on the head within ``retries``.
"""

from __future__ import annotations

import pytest

import _ray
from _tasks import WAIT
from memwise import WorkerPool

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(not _ray.installed(), reason="Ray is not installed (the 'ray' extra)"),
]

SECOND_NODE = "127.0.0.3"


def test_tasks_land_on_both_nodes_and_survive_losing_one():
    import ray

    shm_before = _ray.shm_entries()
    cluster = _ray.CliCluster(head_cpus=1)
    try:
        second = cluster.add_node(SECOND_NODE, cpus=1)
        with _ray.driver_env(_ray.worker_env()):
            try:
                with WorkerPool(4, backend="ray", address=cluster.address, retries=3) as pool:
                    cluster.wait_for_nodes(2)
                    warm = [pool.submit(_ray.node_of, i) for i in range(8)]
                    nodes = {node for _, node in (f.result(WAIT) for f in warm)}
                    assert nodes == {cluster.host, SECOND_NODE}
                    futures = [pool.submit(_ray.node_of, i, 0.05) for i in range(80)]
                    futures[10].result(WAIT)
                    second.stop()
                    results = [f.result(WAIT * 2) for f in futures]
                    assert [item for item, _ in results] == list(range(80))
                    snapshot = pool.snapshot()
                    assert snapshot.failed == 0 and snapshot.done == 88
            finally:
                ray.shutdown()
    finally:
        cluster.stop()
    assert not (_ray.shm_entries() - shm_before)
