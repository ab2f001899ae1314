"""A broker is known by its server, not by the address a fleet was given for it.

Two worker fleets that name one Redis as ``localhost`` and as ``127.0.0.1`` share the queues,
so the Watchdog of one must put back the unacked messages of the other's dead processes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from dramatiq_reliable.brokers import broker_identity
from tests.apps.watchdog import FAST, build
from tests.conftest import BROKER_DB, ServerEnv, cleanup_env, make_env
from tests.helpers import DramatiqProcess, wait_until

pytestmark = pytest.mark.integration


def localhost(url: str) -> str:
    """The same URL with its host spelled ``localhost``."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", "the test Redis must be named by its loopback address"
    return url.replace("127.0.0.1", "localhost", 1)


@pytest.fixture
def redis_env(redis_server: str, ns: str) -> Iterator[ServerEnv]:
    env = make_env("redis", redis_server, None, ns)
    yield env
    cleanup_env(env, redis_server)


def test_one_redis_named_two_ways_has_one_identity_and_other_databases_another(redis_server: str, ns: str) -> None:
    # Given brokers on one Redis database named by two addresses, and one on another database
    url = f"{redis_server}/{BROKER_DB}"
    first = RedisBroker(url=url, namespace=ns, middleware=[])
    second = RedisBroker(url=localhost(url), namespace=ns, middleware=[])
    other_db = RedisBroker(url=f"{redis_server}/{BROKER_DB - 1}", namespace=ns, middleware=[])
    try:
        # Then the two names give one identity, and the other database another one
        assert broker_identity(first) == broker_identity(second)
        assert broker_identity(first) != broker_identity(other_db)
        assert broker_identity(first).startswith("redis:")
    finally:
        for broker in (first, second, other_db):
            broker.client.delete(f"{ns}:__dr_identity__")
            broker.close()


def test_one_rabbitmq_named_two_ways_has_one_identity(rabbitmq_server: str) -> None:
    first = RabbitmqBroker(url=rabbitmq_server, middleware=[])
    second = RabbitmqBroker(url=localhost(rabbitmq_server), middleware=[])
    assert broker_identity(first) == broker_identity(second)
    assert broker_identity(first).startswith("amqp:")


def test_fleets_naming_one_redis_two_ways_recover_each_others_killed_jobs(
    redis_env: ServerEnv, artifacts: Path
) -> None:
    # Given a fleet that names the broker's Redis as 127.0.0.1, running a job
    app = build(redis_env)
    store = redis_env.store()
    first = DramatiqProcess("apps.watchdog", redis_env, artifacts / "first.log", processes=1, threads=2)
    other_env = {**redis_env, "DR_TEST_BROKER": localhost(redis_env.broker_url)}
    second = DramatiqProcess("apps.watchdog", other_env, artifacts / "second.log", processes=1, threads=2)
    try:
        first.start()
        held = app.hold.send("h")
        wait_until(lambda: (r := store.get_job(held.message_id)) and r.status.value == "running", timeout=30)
        # And another fleet, on the same Redis named localhost, consuming the same queue
        second.start()

        # When the first fleet's worker process is killed
        victim = store.get_job(held.message_id)
        assert victim is not None and victim.worker is not None
        killed_at = time.monotonic()
        os.kill(int(victim.worker.split(":")[1]), signal.SIGKILL)

        # Then the second fleet's Watchdog puts the message back and runs it, long before
        # Dramatiq's own recovery (a broker heartbeat older than 60 s, then a 0.1 % roll)
        deadline = FAST["abandon_after"] + FAST["sweep_interval"] + 20
        wait_until(
            lambda: int(app.effects.get(app.fx("hold:h:runs")) or 0) == 2, timeout=deadline, what="the job run again"
        )
        print(f"\nkill -> running again on the other fleet: {time.monotonic() - killed_at:.1f} s")
        app.effects.set(app.fx("release:h"), 1)
        wait_until(lambda: (r := store.get_job(held.message_id)) and r.status.value == "done", timeout=30)
    finally:
        first.kill()
        second.stop()
    record = store.get_job(held.message_id)
    assert record is not None
    assert [e.status.value if hasattr(e.status, "value") else e.status for e in record.events][-1] == "done"
    assert int(app.effects.get(app.fx("hold:h:done")) or 0) == 1
