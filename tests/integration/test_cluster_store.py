"""The store on a Redis Cluster: refused in one clear line, never a failing write per batch.

A store call spans keys of several hash slots (a job's record, its indexes, its idempotency
keys), which a Cluster node refuses ("non local key"). docs/scaling.md has the sharded layout
that will lift this.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.cli import main

pytestmark = pytest.mark.integration


def batch() -> dict[str, Any]:
    job = {"actor": "a", "queue": "q", "maxr": 0, "enq_ms": int(time.time() * 1000), "args": "{}", "keys": {}}
    return {"ops": [{"k": "enqueue", "id": "j1", "job": {**job, "detail": "enqueued"}}]}


def test_a_cluster_node_named_as_one_server_is_refused_in_one_line(redis_cluster: Any) -> None:
    store = dr.RedisStore(f"redis://127.0.0.1:{redis_cluster.nodes[0].port}", prefix="tcluster")
    calls = (store.check_server, lambda: store.apply(batch()), lambda: store.apply_serial(batch()))
    for call in calls:
        with pytest.raises(dr.StoreUnavailable) as caught:
            call()
        assert "is a Redis Cluster node: the store does not run on Redis Cluster yet" in str(caught.value)
        assert "\n" not in str(caught.value)
    assert all(node.client().dbsize() == 0 for node in redis_cluster.nodes)
    store.close()


def test_a_cluster_url_is_bad_usage(redis_cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--store", redis_cluster.url, "jobs", "list"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "use one primary, with Sentinel for failover" in err
