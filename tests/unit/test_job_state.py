"""JobState on StubBroker + MemoryStore: statuses, attempts, errors, snapshots, keys."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable.errors import ArgumentsError, ConfigurationError


@pytest.fixture
def store() -> dr.MemoryStore:
    return dr.MemoryStore()


@pytest.fixture
def broker(stub_broker: StubBroker, store: dr.MemoryStore) -> StubBroker:
    dr.install(stub_broker, store)
    return stub_broker


def run_all(broker: StubBroker, worker: dramatiq.Worker, queue: str = "default") -> None:
    broker.join(queue, fail_fast=False)
    worker.join()


def test_a_job_that_succeeds_is_queued_running_done(broker, store, stub_worker) -> None:
    # Given an actor
    @dramatiq.actor
    def add(x, y):
        return None

    # When it is sent and processed
    message = add.send(1, 2)
    assert store.get_job(message.message_id).status is dr.Status.QUEUED
    run_all(broker, stub_worker)

    # Then its record went queued -> running -> done, with the timings and worker
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.DONE
    assert [e.status for e in record.events] == ["queued", "running", "done"]
    assert record.attempts == 1
    assert record.args == {"x": 1, "y": 2}
    assert record.enqueued_at <= record.started_at <= record.finished_at
    assert record.worker.endswith(":" + record.worker.split(":")[-1]) and record.worker.count(":") == 2
    assert record.error is None


def test_retrying_is_told_from_failed(broker, store, stub_worker) -> None:
    attempts = []

    @dramatiq.actor(max_retries=2, min_backoff=10, max_backoff=20)
    def fails_twice():
        attempts.append(1)
        if len(attempts) < 3:
            raise ValueError(f"attempt {len(attempts)}")

    @dramatiq.actor(max_retries=1, min_backoff=10, max_backoff=20)
    def always_fails():
        raise KeyError("missing")

    ok = fails_twice.send()
    dead = always_fails.send()
    for _ in range(4):
        run_all(broker, stub_worker)
        time.sleep(0.05)

    record = store.get_job(ok.message_id)
    assert record.status is dr.Status.DONE
    assert record.attempts == 3
    statuses = [e.status for e in record.events]
    assert statuses == ["queued", "running", "retrying", "queued", "running", "retrying", "queued", "running", "done"]
    assert record.error.type == "ValueError"  # the last error is kept, the history says it recovered

    failed = store.get_job(dead.message_id)
    assert failed.status is dr.Status.FAILED
    assert failed.attempts == 2 and failed.max_retries == 1
    assert failed.error.type == "KeyError" and "missing" in failed.error.message
    assert "KeyError" in failed.error.traceback
    assert failed.events[-1].detail.startswith("dead-lettered after 2 attempts")


def test_throws_fails_at_once(broker, store, stub_worker) -> None:
    class Permanent(Exception):
        pass

    @dramatiq.actor(max_retries=5, throws=(Permanent,))
    def bad():
        raise Permanent("no")

    message = bad.send()
    run_all(broker, stub_worker)
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.FAILED and record.attempts == 1
    assert "not retried" in record.events[-1].detail


def test_without_retries_a_failure_is_failed_not_done(store) -> None:
    # Given a broker without the Retries middleware (Dramatiq then acks failures)
    broker = StubBroker(middleware=[], fail_fast_default=False)
    dr.install(broker, store)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:

        @dramatiq.actor(broker=broker)
        def boom():
            raise RuntimeError("x")

        message = boom.send()
        run_all(broker, worker)
    finally:
        worker.stop()
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.FAILED
    assert "was not retried" in record.events[-1].detail


def test_delayed_message_shows_when_it_is_due(broker, store, stub_worker) -> None:
    @dramatiq.actor
    def later():
        return None

    message = later.send_with_options(delay=200)
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.QUEUED
    assert record.due_at is not None and "due at" in record.events[0].detail
    time.sleep(0.3)
    run_all(broker, stub_worker)
    assert store.get_job(message.message_id).status is dr.Status.DONE


def test_track_records_business_keys_as_strings(broker, store, stub_worker) -> None:
    @dramatiq.actor(track=("order_id", "customer_id"))
    def invoice(order_id, customer_id, note=""):
        return None

    message = invoice.send(4711, customer_id="c-9")
    run_all(broker, stub_worker)
    assert store.get_job(message.message_id).keys == {"order_id": "4711", "customer_id": "c-9"}
    assert [r.id for r in store.find_jobs(key=("order_id", "4711"))] == [message.message_id]
    assert not store.find_jobs(key=("order_id", "4712")).items


def test_track_names_must_be_arguments(broker) -> None:
    with pytest.raises(ConfigurationError, match="names 'order', which is not one of its arguments"):

        @dramatiq.actor(track=("order",))
        def invoice(order_id):
            return None

    with pytest.raises(ConfigurationError, match="tuple of argument names"):

        @dramatiq.actor(track="order_id")
        def invoice2(order_id):
            return None


def test_secrets_are_redacted_and_big_args_capped(stub_broker, store, stub_worker) -> None:
    dr.install(stub_broker, store, max_args_bytes=200)

    @dramatiq.actor
    def login(user, password, options):
        return None

    message = login.send("ann", "hunter2", {"api_key": "k", "nested": {"Authorization": "Bearer x"}, "n": 1})
    big = login.send("bob", "pw", {"blob": "x" * 1000})
    run_all(stub_broker, stub_worker)
    args = store.get_job(message.message_id).args
    assert args == {
        "user": "ann",
        "password": "[redacted]",
        "options": {"api_key": "[redacted]", "nested": {"Authorization": "[redacted]"}, "n": 1},
    }
    capped = store.get_job(big.message_id).args
    assert capped["_truncated"] is True and capped["_bytes"] > 1000 and len(capped["_preview"]) <= 100
    assert "hunter2" not in str([store.client.get(k) for k in store.client.keys(store.k("job", "*"))])


def test_non_json_arguments_are_refused_at_send(broker, store) -> None:
    @dramatiq.actor
    def takes(obj):
        return None

    with pytest.raises(ArgumentsError, match="argument 'obj' is a object, which is not JSON-serializable"):
        takes.send(object())
    assert not store.find_jobs().items


def test_the_history_is_bounded(stub_broker, store, stub_worker) -> None:
    dr.install(stub_broker, store, history=3)

    @dramatiq.actor(max_retries=3, min_backoff=5, max_backoff=10)
    def flappy():
        raise ValueError("x")

    message = flappy.send()
    for _ in range(6):
        run_all(stub_broker, stub_worker)
        time.sleep(0.03)
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.FAILED
    assert len(record.events) == 3 and record.events[-1].status == "failed"


def test_current_job_inside_and_outside(broker, store, stub_worker) -> None:
    seen = []

    @dramatiq.actor(track=("order_id",), max_retries=1, min_backoff=5, max_backoff=10)
    def inspect_me(order_id):
        job = dr.current_job()
        seen.append((job.id, job.actor, job.attempt, job.keys))
        if job.attempt == 1:
            raise ValueError("again")

    message = inspect_me.send(7)
    for _ in range(3):
        run_all(broker, stub_worker)
        time.sleep(0.03)
    assert seen == [
        (message.message_id, "inspect_me", 1, {"order_id": "7"}),
        (message.message_id, "inspect_me", 2, {"order_id": "7"}),
    ]
    assert dr.current_job() is None


def test_install_refuses_twice_and_unknown_options(stub_broker, store) -> None:
    dr.install(stub_broker, store)
    with pytest.raises(ConfigurationError, match="already on this broker"):
        dr.install(stub_broker, store)
    with pytest.raises(ConfigurationError, match="unknown option"):
        dr.install(StubBroker(), store, retension=3)


def test_a_middleware_added_twice_fails_at_declaration(stub_broker, store) -> None:
    # Dramatiq's add_middleware only warns about a duplicate: the bundle refuses it
    stub_broker.add_middleware(dr.JobState(store))
    stub_broker.add_middleware(dr.JobState(store))
    with pytest.raises(ConfigurationError, match="JobState was added to this broker twice"):

        @dramatiq.actor
        def anything():
            return None


def test_bad_options_fail_at_construction(store) -> None:
    with pytest.raises(ConfigurationError, match="retention"):
        dr.JobState(store, retention=0)
    with pytest.raises(ConfigurationError, match="max_args_bytes"):
        dr.JobState(store, max_args_bytes="big")
    with pytest.raises(TypeError, match="needs a store"):
        dr.JobState("redis://localhost")


class GatedStore(dr.MemoryStore):
    """A MemoryStore whose batches wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def apply(self, batch):
        self.gate.wait(timeout=30)
        return super().apply(batch)


def test_send_does_not_wait_for_the_record_and_a_read_in_the_process_finds_it(stub_broker) -> None:
    store = GatedStore()
    dr.install(stub_broker, store)

    @dramatiq.actor
    def work(i):
        return None

    # Given a store that applies nothing yet
    sent: list[dramatiq.Message] = []
    sender = threading.Thread(target=lambda: sent.append(work.send(1)))
    # When a job is sent
    sender.start()
    sender.join(timeout=10)
    # Then send() returned although its record is not written
    assert not sender.is_alive() and len(sent) == 1
    assert store.journal.unsent
    # And once the store answers, a read in the sending process finds the record at once
    store.gate.set()
    record = store.get_job(sent[0].message_id)
    assert record is not None and record.status is dr.Status.QUEUED
    assert record.events[0].detail == "enqueued"
