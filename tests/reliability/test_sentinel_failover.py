"""The store's primary killed mid-burst, behind Sentinel: the store follows the promoted replica.

The store is a private primary + replica + Sentinel (``tests/servers.py``) named by a
``redis+sentinel://`` URL (each store call waits for the replica: ``WAIT 1``); the broker is the
shared test Redis or RabbitMQ. The primary is killed (``SIGKILL``) while the burst runs, and
started again (empty) once the replica is promoted, as a supervisor would: Sentinel turns it
into a replica of the new primary, and no store client writes to it meanwhile.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.apps.faults import build
from tests.conftest import ServerEnv
from tests.helpers import wait_until
from tests.reliability.burst import Burst
from tests.reliability.conftest import Report, Size
from tests.reliability.test_faults import check, settle_timeout, workers

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def test_sentinel_failover_of_the_store_during_a_burst(
    server_env: ServerEnv, redis_sentinel: Any, size: Size, report: Report, artifacts: Path
) -> None:
    # Given the store behind Sentinel, side effects counted on the shared Redis, and a burst
    env = server_env.with_options()
    env["DR_TEST_EFFECTS"] = server_env.store_url
    env["DR_TEST_STORE"] = env.store_url = redis_sentinel.url
    app = build(env)
    old = redis_sentinel.primary
    fleet = workers(env, artifacts / "workers.log").start()
    burst = Burst(app, size.jobs, size.work).send()
    try:
        burst.wait_done(0.2)
        left = size.jobs - burst.done()
        # When the primary is killed
        killed_at = time.time()
        old.kill()
        # Then Sentinel promotes the replica
        wait_until(lambda: redis_sentinel.master_port() == redis_sentinel.replica.port, timeout=30, interval=0.1)
        promoted_at = time.time()
        burst.fault(killed_at, promoted_at)
        # And the old primary, back empty, becomes a replica of the new one
        old.start()
        wait_until(lambda: old.client().info("replication")["role"] == "slave", timeout=30, what="old primary demoted")
        # And every job finishes
        settled = burst.settle(settle_timeout(size))
    finally:
        fleet.stop()
    figures = burst.figures(
        "store primary killed (Sentinel)",
        server_env.kind,
        settled=settled,
        left_at_kill=left,
        failover_s=round(promoted_at - killed_at, 1),
    )
    report.write(figures)
    check(figures)
    assert set(figures["statuses"]) == {"done"}, figures
    assert left > 0, "the kill came after the burst ended"
