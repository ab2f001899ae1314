"""The private Redis topologies the scale-out tests use start, answer and stop cleanly."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_cluster_fixture_spreads_keys_over_three_primaries(redis_cluster: Any) -> None:
    # Given a private cluster
    client = redis_cluster.client()
    # When keys of many slots are written
    for i in range(30):
        client.set(f"k{i}", i)
    # Then every primary holds some, and all read back
    assert all(node.client().dbsize() > 0 for node in redis_cluster.nodes)
    assert [int(client.get(f"k{i}")) for i in range(30)] == list(range(30))
    client.close()


def test_sentinel_fixture_fails_over_to_the_replica(redis_sentinel: Any) -> None:
    # Given a primary, its replica and a Sentinel
    old = redis_sentinel.primary.port
    assert redis_sentinel.master_port() == old
    # When the primary dies
    redis_sentinel.primary.kill()
    # Then the Sentinel promotes the replica
    wait_until(lambda: redis_sentinel.master_port() == redis_sentinel.replica.port, timeout=20, what="failover")
