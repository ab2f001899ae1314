"""The store behind Sentinel, pointed at a replica by mistake, and on a Redis that may evict.

Each test runs private ``redis-server`` processes (``tests/servers.py``, ``PrivateRedis``);
workers use the shared test Redis as their broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

import dramatiq_reliable as dr
from tests.apps.basic import build
from tests.conftest import PrivateRedis, ServerEnv, cleanup_env, make_env
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration


def enqueue_op(job_id: str) -> dict[str, Any]:
    job = {"actor": "a", "queue": "q", "maxr": 0, "enq_ms": int(time.time() * 1000), "args": "{}", "keys": {}}
    return {"k": "enqueue", "id": job_id, "job": {**job, "detail": "enqueued"}}


def write(store: dr.RedisStore, job_id: str, *, serial: bool = False) -> None:
    batch = {"ops": [enqueue_op(job_id)]}
    results = (store.apply_serial if serial else store.apply)(batch)
    assert not any(r.get("error") for r in results), results


@pytest.fixture
def redis_env(redis_server: str, ns: str) -> Iterator[ServerEnv]:
    env = make_env("redis", redis_server, None, ns)
    env["DR_TEST_EFFECTS"] = env.store_url
    yield env
    cleanup_env(env, redis_server)


def test_the_store_follows_the_primary_through_a_failover(redis_sentinel: Any, ns: str) -> None:
    # Given a store named through Sentinel, with records written both ways (pool and own connection)
    store = dr.open_store(f"{redis_sentinel.url}?prefix={ns}")
    assert isinstance(store, dr.RedisStore)
    write(store, "before")
    write(store, "before-serial", serial=True)
    # And both on the replica already (each call waited for it: WAIT 1)
    replica = redis_sentinel.replica.client()
    assert replica.exists(f"{ns}:job:before", f"{ns}:job:before-serial") == 2

    # When the primary dies
    killed = time.monotonic()
    redis_sentinel.primary.kill()

    # Then writes fail as "unreachable" (buffered by workers), then go to the promoted replica
    def writes() -> bool:
        try:
            write(store, "after", serial=True)
            write(store, "after-pool")
        except dr.StoreUnavailable:
            return False
        return True

    wait_until(writes, timeout=30, interval=0.2, what="writes to the new primary")
    print(f"\nkill -> store writes again: {time.monotonic() - killed:.1f} s")
    assert redis_sentinel.master_port() == redis_sentinel.replica.port
    assert all(store.get_job(i) is not None for i in ("before", "before-serial", "after", "after-pool"))
    store.close()


def test_a_store_pointed_at_a_replica_says_so_in_one_line(
    redis_sentinel: Any, redis_env: ServerEnv, artifacts: Path
) -> None:
    # Given workers whose store URL names the replica, not the primary
    env = ServerEnv(redis_env)
    env.__dict__.update(redis_env.__dict__)
    env["DR_TEST_STORE"] = f"redis://127.0.0.1:{redis_sentinel.replica.port}/0"
    app = build(env)
    with DramatiqProcess("apps.basic", env, artifacts / "workers.log", processes=1, threads=2) as workers:
        # When jobs are sent
        for i in range(5):
            app.ok.send(i)
        # Then they run as in any store outage (first deliveries of actors without a key do not
        # wait for the store), their records buffered in the worker, never written to the replica
        wait_until(lambda: int(app.effects.get(app.fx("ok")) or 0) >= 5, timeout=30, what="the jobs run")
        wait_until(lambda: "is a read-only replica" in workers.log(), timeout=30, what="the refusal said")
        log = workers.log()
    assert redis_sentinel.replica.client().dbsize() == 0
    # And the log says what is wrong in one clear error line at boot, and once more when the
    # first write is refused; never the raw READONLY error, never a traceback per batch
    errors = [line for line in log.splitlines() if "[ERROR]" in line or "[CRITICAL]" in line]
    assert 1 <= len(errors) <= 2 and all("is a read-only replica" in line for line in errors), log
    assert "point the store at the primary" in errors[0]
    assert "READONLY" not in log and "Traceback" not in log, log


def test_an_eviction_policy_that_may_drop_markers_is_said_at_boot(
    tmp_path: Path, redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    from dramatiq.brokers.stub import StubBroker

    for policy, warned in (("allkeys-lru", True), ("noeviction", False)):
        server = PrivateRedis(tmp_path)
        server.start_args = ["--appendonly", "no", "--maxmemory", "100mb", "--maxmemory-policy", policy]
        server.start()
        try:
            # Given the bundle on a store whose Redis evicts (or not)
            broker = StubBroker()
            store = dr.RedisStore(server.url + "/0")
            dr.install(broker, store, notifiers=[])
            caplog.clear()
            # When a worker boots
            with caplog.at_level(logging.WARNING, logger="dramatiq_reliable"):
                worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
                worker.start()
                worker.stop()
            # Then one line says so when it may evict, none when it may not
            lines = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
            assert len(lines) == (1 if warned else 0), lines
            if warned:
                assert f"maxmemory-policy {policy}" in lines[0] and "noeviction" in lines[0]
            store.close()
            broker.close()
        finally:
            server.stop()
    assert redis.Redis.from_url(redis_server).ping()


def test_a_replica_down_costs_one_wait_timeout_then_writes_go_on(
    redis_sentinel: Any, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a store behind Sentinel whose replica is down
    store = dr.open_store(f"{redis_sentinel.url}?prefix={ns}")
    assert isinstance(store, dr.RedisStore)
    write(store, "warm")
    redis_sentinel.replica.kill()
    # When twenty writes are made
    with caplog.at_level(logging.WARNING, logger="dramatiq_reliable.store"):
        for i in range(20):
            write(store, f"j{i}", serial=bool(i % 2))
    # Then all are written, one line says the replica did not acknowledge, and the following
    # calls stopped waiting (the back-off) instead of each paying the timeout
    assert all(store.get_job(f"j{i}") is not None for i in range(20))
    lines = [r.getMessage() for r in caplog.records if "replica(s) acknowledged" in r.getMessage()]
    assert len(lines) == 1 and "0 of 1 replica(s)" in lines[0], lines
    assert store._replicas.command() is None
    store.close()
