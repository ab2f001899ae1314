"""Idempotency on StubBroker + MemoryStore: redeliveries, keys, leases, unique, once."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable.errors import ArgumentsError, ConfigurationError, DuplicateJob


@pytest.fixture
def store() -> dr.MemoryStore:
    return dr.MemoryStore()


@pytest.fixture
def broker(stub_broker: StubBroker, store: dr.MemoryStore) -> StubBroker:
    dr.install(stub_broker, store, lease=2)
    return stub_broker


def drain(broker: StubBroker, worker: dramatiq.Worker, rounds: int = 1, pause: float = 0.05) -> None:
    for _ in range(rounds):
        broker.join("default", fail_fast=False)
        worker.join()
        time.sleep(pause)


def test_a_redelivered_completed_message_is_skipped_and_keeps_done(broker, store, stub_worker) -> None:
    calls = []

    @dramatiq.actor
    def work(n):
        calls.append(n)

    message = work.send(1)
    drain(broker, stub_worker)
    # When the same message (same id) is delivered again, as after a crash before the ack
    broker.enqueue(message)
    drain(broker, stub_worker)

    assert calls == [1]
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.DONE
    assert record.events[-1].status == "skipped" and "redelivery" in record.events[-1].detail
    assert not broker.dead_letters


def test_a_duplicate_key_is_skipped_and_points_to_the_job_that_did_the_work(broker, store, stub_worker) -> None:
    calls = []

    @dramatiq.actor(idempotency_key="invoice:{order_id}")
    def invoice(order_id, customer_id):
        calls.append(order_id)

    first = invoice.send(4711, 1)
    drain(broker, stub_worker)
    second = invoice.send(4711, 2)
    other = invoice.send(4712, 1)
    drain(broker, stub_worker)

    assert sorted(calls) == [4711, 4712]
    skipped = store.get_job(second.message_id)
    assert skipped.status is dr.Status.SKIPPED
    assert skipped.duplicate_of == first.message_id
    assert store.get_job(other.message_id).status is dr.Status.DONE


def test_a_failed_attempt_releases_the_key_and_the_retry_runs(broker, store, stub_worker) -> None:
    calls = []

    @dramatiq.actor(idempotency_key="k:{n}", max_retries=2, min_backoff=10, max_backoff=20)
    def flaky(n):
        calls.append(n)
        if len(calls) == 1:
            raise ConnectionError("down")

    message = flaky.send(1)
    drain(broker, stub_worker, rounds=4)
    assert calls == [1, 1]
    assert store.get_job(message.message_id).status is dr.Status.DONE


def test_two_deliveries_of_one_key_never_run_at_once(broker, store, stub_worker) -> None:
    running = []
    overlap = []
    lock = threading.Lock()

    @dramatiq.actor(idempotency_key="report:{day}")
    def report(day, tag):
        with lock:
            if running:
                overlap.append(tag)
            running.append(tag)
        time.sleep(0.3)
        with lock:
            running.remove(tag)

    a = report.send("mon", "a")
    b = report.send("mon", "b")
    deadline = time.time() + 10
    while time.time() < deadline:
        statuses = {store.get_job(a.message_id).status, store.get_job(b.message_id).status}
        if statuses == {dr.Status.DONE, dr.Status.SKIPPED}:
            break
        time.sleep(0.05)
    assert statuses == {dr.Status.DONE, dr.Status.SKIPPED}
    assert overlap == []
    loser = a if store.get_job(a.message_id).status is dr.Status.SKIPPED else b
    events = [e.detail for e in store.get_job(loser.message_id).events]
    assert any("put back" in d for d in events)  # it waited for the lease, then found the key done


def test_unique_refuses_a_second_send_while_pending(broker, store, stub_worker) -> None:
    @dramatiq.actor(unique=True, idempotency_key="sync:{account}")
    def sync(account):
        time.sleep(0.2)

    first = sync.send("a")
    with pytest.raises(DuplicateJob) as info:
        sync.send("a")
    assert info.value.job_id == first.message_id and info.value.key == "k:sync:a"
    sync.send("b")  # another key is fine
    drain(broker, stub_worker)
    # Once it finished, the key is free again
    again = sync.send("a")
    assert again.message_id != first.message_id


def test_once_runs_a_step_once_across_attempts(broker, store, stub_worker) -> None:
    charges, emails = [], []

    @dramatiq.actor(idempotency_key="inv:{order_id}", max_retries=3, min_backoff=10, max_backoff=20)
    def invoice(order_id):
        receipt = dr.once("charge", lambda: charges.append(order_id) or {"receipt": f"r{order_id}"})
        if len(emails) < 1:
            emails.append("failed")
            raise TimeoutError("smtp")
        dr.once("email", emails.append, receipt["receipt"])

    message = invoice.send(9)
    drain(broker, stub_worker, rounds=4)
    assert charges == [9]
    assert emails == ["failed", "r9"]
    assert store.get_job(message.message_id).status is dr.Status.DONE
    assert message.message_id not in store.checkpoints  # dropped once the job completed


def test_once_rejects_a_non_json_result_and_misuse(broker, store, stub_worker) -> None:
    errors = []

    @dramatiq.actor(max_retries=0)
    def bad():
        try:
            dr.once("obj", object)
        except ArgumentsError as exc:
            errors.append(str(exc))

    bad.send()
    drain(broker, stub_worker)
    assert "not JSON" in errors[0]
    with pytest.raises(ConfigurationError, match="outside a job"):
        dr.once("x", print)


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("inv:{order}", "names 'order', which is not one of its arguments"),
        ("inv:{0}", "must name arguments"),
        (42, "must be a non-empty str.format template or a callable"),
        ("inv:{order_id", "malformed idempotency_key"),
    ],
)
def test_bad_templates_fail_at_declaration(broker, template, match) -> None:
    with pytest.raises(ConfigurationError, match=match):

        @dramatiq.actor(idempotency_key=template)
        def invoice(order_id):
            return None


def test_a_key_that_cannot_be_made_fails_at_send(broker, store) -> None:
    @dramatiq.actor(idempotency_key=lambda order_id=None: order_id)
    def invoice(order_id=None):
        return None

    @dramatiq.actor(idempotency_key="inv:{order_id}")
    def invoice2(order_id=None, **extra):
        return None

    with pytest.raises(ConfigurationError, match="must produce a non-empty string, not 7"):
        invoice.send(7)
    with pytest.raises(ConfigurationError, match="needs 'order_id'"):
        invoice2.send()
    assert not store.find_jobs().items


def test_bad_constructor_options(store) -> None:
    with pytest.raises(ConfigurationError, match="on_store_error"):
        dr.Idempotency(store, on_store_error="ignore")
    with pytest.raises(ConfigurationError, match="lease"):
        dr.Idempotency(store, lease=-1)


def test_the_record_is_the_marker_only_when_job_state_keeps_it_long_enough(stub_broker, stub_worker) -> None:
    store = dr.MemoryStore()
    dr.install(stub_broker, store, ttl=3600, retention=60)  # records kept shorter than ttl
    calls = []

    @dramatiq.actor
    def short(n):
        calls.append(n)

    message = short.send(1)
    drain(stub_broker, stub_worker)
    assert store.sget("done", f"msg:{message.message_id}") == message.message_id
    stub_broker.enqueue(message)
    drain(stub_broker, stub_worker)
    assert calls == [1]


def test_no_marker_is_written_when_the_record_serves(broker, store, stub_worker) -> None:
    @dramatiq.actor
    def plain(n):
        pass

    message = plain.send(1)
    drain(broker, stub_worker)
    assert store.get_job(message.message_id).status is dr.Status.DONE
    assert store.sget("done", f"msg:{message.message_id}") is None
