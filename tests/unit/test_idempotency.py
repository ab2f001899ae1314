"""Idempotency on StubBroker + MemoryStore: redeliveries, keys, leases, unique, once."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable.errors import ArgumentsError, ConfigurationError, DuplicateJob, StoreUnavailable
from dramatiq_reliable.middleware import idempotency
from dramatiq_reliable.middleware.idempotency import REDELIVERED_OPTION


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
    # When the same message (same id) is delivered again, as after a crash before the ack, marked
    # as a redelivery (RabbitMQ's redelivered flag; the Watchdog's mark on Redis)
    broker.enqueue(message.copy(options={REDELIVERED_OPTION: 1}))
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
    assert info.value.job_id == first.message_id and info.value.key == "sync:sync:a"
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
    assert not store.client.exists(store.k("idem", "once", "invoice:inv:9"))  # dropped once the job completed its key


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
    assert store.client.get(store.k("idem", "done", f"msg:{message.message_id}")) == message.message_id.encode()
    stub_broker.enqueue(message.copy(options={REDELIVERED_OPTION: 1}))
    drain(stub_broker, stub_worker)
    assert calls == [1]


def test_no_marker_is_written_when_the_record_serves(broker, store, stub_worker) -> None:
    @dramatiq.actor
    def plain(n):
        pass

    message = plain.send(1)
    drain(broker, stub_worker)
    assert store.get_job(message.message_id).status is dr.Status.DONE
    assert store.client.get(store.k("idem", "done", f"msg:{message.message_id}")) is None


def test_keys_are_scoped_per_actor(broker, store, stub_worker) -> None:
    # Given two actors whose templates render the same string for the same order
    calls = []

    @dramatiq.actor(idempotency_key="{order_id}")
    def invoice(order_id):
        calls.append(("invoice", order_id))

    @dramatiq.actor(idempotency_key="{order_id}")
    def ship(order_id):
        calls.append(("ship", order_id))

    # When both are sent for order 7, then the invoice again
    first = invoice.send(7)
    drain(broker, stub_worker)
    shipped = ship.send(7)
    again = invoice.send(7)
    drain(broker, stub_worker)

    # Then each actor did its work once: the second actor is not a duplicate of the first
    assert sorted(calls) == [("invoice", 7), ("ship", 7)]
    assert store.get_job(shipped.message_id).status is dr.Status.DONE
    assert store.get_job(again.message_id).duplicate_of == first.message_id
    assert store.client.get(store.k("idem", "done", "ship:7")) == shipped.message_id.encode()


def test_a_unique_job_without_a_key_runs_again_once_finished(broker, store, stub_worker) -> None:
    calls = []

    @dramatiq.actor(unique=True)
    def refresh(account):
        calls.append(account)

    first = refresh.send("a")
    drain(broker, stub_worker)
    # When the same send is made after the first job finished
    second = refresh.send("a")
    drain(broker, stub_worker)

    # Then it is a new job that runs
    assert calls == ["a", "a"]
    assert [store.get_job(m.message_id).status for m in (first, second)] == [dr.Status.DONE] * 2
    # And a redelivery of the finished job is still skipped (its message id completed)
    broker.enqueue(second)
    drain(broker, stub_worker)
    assert calls == ["a", "a"]


def test_a_unique_job_with_a_key_keeps_its_idempotency(broker, store, stub_worker) -> None:
    calls = []

    @dramatiq.actor(unique=True, idempotency_key="sync:{account}")
    def sync(account):
        calls.append(account)

    first = sync.send("a")
    drain(broker, stub_worker)
    second = sync.send("a")  # not refused: the first job has finished
    drain(broker, stub_worker)
    third = sync.send("a")  # nor after a skipped one
    drain(broker, stub_worker)

    assert calls == ["a"]
    assert [store.get_job(m.message_id).duplicate_of for m in (second, third)] == [first.message_id] * 2


def test_a_skipped_unique_job_frees_its_reservation_without_job_state(stub_broker, stub_worker) -> None:
    # Without JobState there is no record to tell that the holder finished: the end of the job
    # itself must free the key.
    store = dr.MemoryStore()
    dr.install_one(stub_broker, dr.Idempotency(store))
    calls = []

    @dramatiq.actor(unique=True, idempotency_key="sync:{account}")
    def sync(account):
        calls.append(account)

    sync.send("a")
    drain(stub_broker, stub_worker)
    sync.send("a")
    drain(stub_broker, stub_worker)
    sync.send("a")  # raises DuplicateJob if the skipped job kept the key reserved
    drain(stub_broker, stub_worker)
    assert calls == ["a"]


def test_once_steps_are_shared_by_every_message_with_the_key(broker, store, stub_worker) -> None:
    # Given an order whose first job charged, then failed for good before the email
    charges, emails = [], []

    @dramatiq.actor(idempotency_key="order:{order_id}", max_retries=0)
    def order(order_id, email_works):
        receipt = dr.once("charge", lambda: charges.append(order_id) or f"r{order_id}")
        if not email_works:
            raise TimeoutError("smtp")
        dr.once("email", emails.append, receipt)

    first = order.send(3, False)
    drain(broker, stub_worker)
    assert store.get_job(first.message_id).status is dr.Status.FAILED
    assert store.once_get("order:order:3", "charge") == '"r3"'

    # When the order is sent again
    second = order.send(3, True)
    drain(broker, stub_worker)

    # Then the charge is not repeated, the email is sent, and the steps are dropped
    assert charges == [3] and emails == ["r3"]
    assert store.get_job(second.message_id).status is dr.Status.DONE
    assert not store.client.exists(store.k("idem", "once", "order:order:3"))


def test_once_steps_without_a_key_belong_to_the_job(broker, store, stub_worker) -> None:
    charges = []

    @dramatiq.actor(max_retries=0)
    def order(order_id):
        dr.once("charge", lambda: charges.append(order_id))
        raise TimeoutError("smtp")

    order.send(4)
    order.send(4)
    drain(broker, stub_worker)
    assert charges == [4, 4]  # two jobs, nothing says they are the same


class FlakyStore(dr.MemoryStore):
    """A MemoryStore that can be made unreachable."""

    down = False

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if self.down:
            raise StoreUnavailable("store memory:// unreachable: test outage")
        return super().apply(batch)

    def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("store memory:// unreachable: test outage")


def test_while_the_store_is_down_first_deliveries_without_a_key_run_and_the_rest_wait(
    stub_broker: StubBroker, stub_worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(idempotency, "STORE_ERROR_DELAY", 0.2)
    caplog.set_level(logging.INFO, logger="dramatiq_reliable")
    store = FlakyStore()
    dr.install(stub_broker, store, lease=2)
    calls = []

    @dramatiq.actor
    def plain(n):
        calls.append(n)

    @dramatiq.actor(idempotency_key="k:{n}")
    def keyed(n):
        calls.append(("keyed", n))

    # Given a store that cannot be reached
    store.down = True
    # When a job without a key, one with a key, and a possible redelivery are delivered
    first = plain.send(1)
    held = [keyed.send(2), stub_broker.enqueue(plain.message(3).copy(options={REDELIVERED_OPTION: 1}))]
    # Then only the first delivery without a key runs; the other two are put back, again and again
    wait_for(
        lambda: all(f"Message {m.message_id!r} put back" in caplog.text for m in held) and calls == [1],
        what="the first job done, the two others put back",
    )
    assert calls == [1] and not stub_broker.dead_letters
    # And once the store answers, the buffered record is written and the two others run
    store.down = False
    wait_for(lambda: len(calls) == 3, what="the two others run")
    assert sorted(map(str, calls)) == sorted(map(str, [1, ("keyed", 2), 3]))
    wait_for(lambda: store.get_job(first.message_id) is not None, what="the buffered record")
    assert store.get_job(first.message_id).status is dr.Status.DONE


def wait_for(check, *, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
