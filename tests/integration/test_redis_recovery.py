"""Forcing Dramatiq's recovery of a dead process's messages on a real Redis, and never a live one's.

Worker processes are played by RedisBrokers whose consumers fetch messages (they then sit in
``__acks__.<broker id>.<queue>``, as in a worker) and whose broker heartbeat the test ages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from dramatiq_reliable._clock import now_ms
from dramatiq_reliable.brokers import broker_identity
from dramatiq_reliable.middleware._recovery import Pending, RedisRecovery
from dramatiq_reliable.middleware._redelivery import REDELIVERED_OPTION
from tests.conftest import BROKER_DB, delete_prefix

pytestmark = pytest.mark.integration


class Fleet:
    """Brokers on one namespace: one sends, the others fetch like worker processes."""

    def __init__(self, url: str, ns: str) -> None:
        self.url = url
        self.ns = ns
        self.queue = f"{ns}_q"
        self.client = redis.Redis.from_url(url)
        self.sender = self.broker()
        self.sender.declare_queue(self.queue)

        @dramatiq.actor(broker=self.sender, queue_name=self.queue)
        def job(i: int) -> None: ...

        self.job = job

    def broker(self) -> RedisBroker:
        return RedisBroker(url=self.url, namespace=self.ns, middleware=[])

    def fetch(self, broker: RedisBroker, count: int) -> list[Any]:
        """Make ``broker`` hold ``count`` unacked messages, as a worker process does."""
        consumer = broker.consume(self.queue, prefetch=count, timeout=100)
        got = []
        while len(got) < count:
            message = next(consumer)
            if message is not None:
                got.append(message)
        return got

    def age(self, broker: RedisBroker, ms: int) -> None:
        """Make ``broker``'s last broker heartbeat ``ms`` old."""
        self.client.zadd(f"{self.ns}:__heartbeats__", {broker.broker_id: now_ms() - ms})

    def waiting(self) -> int:
        return int(self.client.llen(f"{self.ns}:{self.queue}"))

    def held(self, broker: RedisBroker) -> int:
        return int(self.client.scard(f"{self.ns}:__acks__.{broker.broker_id}.{self.queue}"))

    def pending(self, broker: RedisBroker, queues: list[str] | None = None) -> Pending:
        return Pending(
            proc=f"dead:{broker.broker_id[:6]}",
            bid=broker.broker_id,
            broker=broker_identity(broker),
            ns=self.ns,
            queues=[self.queue, f"{self.queue}.DQ"] if queues is None else queues,
        )


def recovery_of(broker: RedisBroker) -> RedisRecovery:
    return RedisRecovery(broker, identity=broker_identity(broker), min_silence_ms=2_000)


@pytest.fixture
def fleet(redis_server: str, ns: str) -> Iterator[Fleet]:
    url = f"{redis_server}/{BROKER_DB}"
    fleet = Fleet(url, f"dramatiq-{ns}")
    yield fleet
    delete_prefix(redis.Redis.from_url(url), fleet.ns + ":")


def test_a_dead_process_messages_go_back_to_their_queue_at_once(fleet: Fleet) -> None:
    # Given a process that died holding 2 messages, silent on the broker for 10 s
    for i in range(3):
        fleet.job.send(i)
    dead = fleet.broker()
    fleet.fetch(dead, 2)
    fleet.age(dead, 10_000)
    assert (fleet.waiting(), fleet.held(dead)) == (1, 2)

    # When the sweeper of a live process recovers it
    live = fleet.broker()
    done = recovery_of(live).recover([fleet.pending(dead)], {dead.broker_id})

    # Then its messages are waiting again, and it is gone from the broker's heartbeats
    assert done == [fleet.pending(dead).proc]
    assert (fleet.waiting(), fleet.held(dead)) == (3, 0)
    assert fleet.client.zscore(f"{fleet.ns}:__heartbeats__", dead.broker_id) is None
    # And the two it held are marked as possible redeliveries (a worker checks them first); the
    # one it never fetched is not
    consumer = live.consume(fleet.queue, prefetch=3, timeout=100)
    got: list[Any] = []
    while len(got) < 3:
        message = next(consumer)
        if message is not None:
            got.append(message)
    marked = sorted(m.args[0] for m in got if REDELIVERED_OPTION in m.options)
    assert len(marked) == 2 and 2 not in marked


def test_a_live_process_as_silent_as_the_dead_one_is_never_robbed(fleet: Fleet) -> None:
    # Given a dead process, and a live one (not proven dead) even more silent, both holding messages
    for i in range(4):
        fleet.job.send(i)
    dead, slow = fleet.broker(), fleet.broker()
    fleet.fetch(dead, 2)
    fleet.fetch(slow, 1)
    fleet.age(dead, 10_000)
    fleet.age(slow, 20_000)
    recovery = recovery_of(fleet.broker())

    # When recovery runs, it waits: maintenance would take the live one's message too
    assert recovery.recover([fleet.pending(dead)], {dead.broker_id}) == []
    assert (fleet.waiting(), fleet.held(dead), fleet.held(slow)) == (1, 2, 1)

    # When the live one talks to the broker again, the dead one's messages are put back, only them
    fleet.age(slow, 0)
    assert recovery.recover([fleet.pending(dead)], {dead.broker_id}) == [fleet.pending(dead).proc]
    assert (fleet.waiting(), fleet.held(dead), fleet.held(slow)) == (3, 0, 1)


def test_a_process_still_talking_to_the_broker_is_left_alone(fleet: Fleet) -> None:
    # Given a process the store takes for dead, whose broker heartbeat is recent
    fleet.job.send(1)
    dead = fleet.broker()
    fleet.fetch(dead, 1)
    fleet.age(dead, 500)
    recovery = recovery_of(fleet.broker())
    assert recovery.recover([fleet.pending(dead)], {dead.broker_id}) == []
    assert fleet.held(dead) == 1


def test_queues_unknown_to_the_store_are_found_from_the_broker(fleet: Fleet) -> None:
    # Given a process that died before telling which queues it consumed
    fleet.job.send(1)
    dead = fleet.broker()
    fleet.fetch(dead, 1)
    fleet.age(dead, 10_000)
    recovery = recovery_of(fleet.broker())
    assert recovery.recover([fleet.pending(dead, queues=[])], {dead.broker_id}) == [fleet.pending(dead).proc]
    assert (fleet.waiting(), fleet.held(dead)) == (1, 0)


def test_processes_of_other_brokers_or_long_gone_are_not_touched(fleet: Fleet) -> None:
    dead = fleet.broker()
    recovery = recovery_of(fleet.broker())
    elsewhere = Pending(proc="x", bid=dead.broker_id, broker="10.0.0.9:6379/0", ns=fleet.ns, queues=[fleet.queue])
    other_ns = Pending(proc="y", bid=dead.broker_id, broker=broker_identity(dead), ns="other", queues=[fleet.queue])
    assert recovery.recover([elsewhere, other_ns], {dead.broker_id}) == []
    # A broker id without a heartbeat left has nothing in the broker any more: done
    gone = fleet.pending(dead)
    assert recovery.recover([gone], {dead.broker_id}) == [gone.proc]


def test_messages_a_stopped_worker_prefetched_but_never_ran_are_put_back(
    redis_server: str, ns: str, redis_store: Any
) -> None:
    # Given a worker whose Redis consumer fetched three messages and was stopped before it
    # handed them out (they sit in its ack set; Dramatiq's shutdown requeues only what it handed out)
    import dramatiq_reliable as dr

    url = f"{redis_server}/{BROKER_DB}"
    broker = RedisBroker(url=url, namespace=f"dramatiq-{ns}")
    client = redis.Redis.from_url(url)
    queue = f"{ns}_q"
    try:
        dr.install(broker, redis_store, notifiers=[])

        @dramatiq.actor(broker=broker, queue_name=queue)
        def job(i: int) -> None: ...

        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
        worker.start()
        consumer = worker.consumers[queue]
        consumer.pause()
        consumer.paused_event.wait(5)
        for i in range(3):
            job.send(i)
        consumer.consumer.message_cache.extend(broker.do_fetch(queue, 3))
        acks = f"dramatiq-{ns}:__acks__.{broker.broker_id}.{queue}"
        assert client.scard(acks) == 3

        # When the worker stops
        worker.stop()

        # Then they are back in their queue, and the stopped process holds nothing
        assert client.scard(acks) == 0
        assert client.llen(f"dramatiq-{ns}:{queue}") == 3
    finally:
        broker.close()
        delete_prefix(client, f"dramatiq-{ns}:")
