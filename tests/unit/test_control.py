"""Operator controls on StubBroker + MemoryStore: pause, resume, cancel, retry now."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_reliable as dr
from dramatiq_reliable.errors import ConfigurationError
from dramatiq_reliable.middleware._control import controls_for
from tests.helpers import wait_until


@pytest.fixture
def store() -> dr.MemoryStore:
    return dr.MemoryStore()


@pytest.fixture
def broker(stub_broker: StubBroker, store: dr.MemoryStore) -> StubBroker:
    dr.install(stub_broker, store, heartbeat_interval=0.1, abandon_after=1, sweep_interval=0.1)
    return stub_broker


def status(store: dr.Store, job_id: str) -> str | None:
    record = store.get_job(job_id)
    return record.status.value if record else None


def test_pause_holds_without_spending_attempts_and_resume_runs(broker, store) -> None:
    ran: list[int] = []

    @dramatiq.actor(max_retries=0)
    def work(i: int) -> None:
        ran.append(i)

    # Given a paused actor
    first = dr.pause(store, actor="work", by="tester")
    assert first.changed and first.since is not None
    again = dr.pause(store, actor="work")
    assert not again.changed and again.since == first.since
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        # When its jobs are sent
        sent = [work.send(i) for i in range(3)]
        # Then they are held: not run, still queued, one "held" event each
        wait_until(lambda: all(any("is paused" in e.detail for e in store.get_job(m.message_id).events) for m in sent))
        time.sleep(0.3)
        assert ran == []
        assert [status(store, m.message_id) for m in sent] == ["queued"] * 3
        assert [p.name for p in dr.paused(store)] == ["work"]
        # When it is resumed
        assert dr.resume(store, actor="work").changed
        assert not dr.resume(store, actor="work").changed
        # Then each runs once, on its first attempt
        wait_until(lambda: all(status(store, m.message_id) == "done" for m in sent), timeout=20)
        assert sorted(ran) == [0, 1, 2]
        assert all(store.get_job(m.message_id).attempts == 1 for m in sent)
        held = [e for e in store.get_job(sent[0].message_id).events if e.detail == "put back: actor work is paused"]
        assert len(held) == 1
    finally:
        worker.stop()


def test_cancel_a_queued_job_never_runs_it(broker, store) -> None:
    ran: list[int] = []

    @dramatiq.actor(max_retries=0)
    def work(i: int) -> None:
        ran.append(i)

    # Given a job sent while no worker runs
    message = work.send(1)
    # When it is cancelled, then a worker starts
    (result,) = dr.cancel(store, [message.message_id], by="tester")
    assert result.state == "cancelled" and result.was == "queued"
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        broker.join(work.queue_name)
        worker.join()
    finally:
        worker.stop()
    # Then it never ran and its record says who cancelled it and that its delivery was skipped
    assert ran == []
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.CANCELLED
    assert "cancelled by tester" in record.events[-2].detail
    assert record.events[-1].detail == "delivery skipped: the job was cancelled"
    # And cancelling again, or an unknown id, changes nothing
    assert dr.cancel(store, [message.message_id])[0].state == "cancelled"
    assert not dr.cancel(store, [message.message_id])[0].changed
    assert dr.cancel(store, ["nope"])[0].state == "unknown"


def test_cancel_a_running_job_stops_it_at_its_next_step(broker, store) -> None:
    steps: list[int] = []
    started = threading.Event()

    @dramatiq.actor(max_retries=3)
    def long(n: int) -> None:
        started.set()
        for i in range(n):
            dr.once(f"step{i}", steps.append, i)
            time.sleep(0.05)

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        message = long.send(400)
        started.wait(5)
        wait_until(lambda: status(store, message.message_id) == "running")
        dr.cancel(store, [message.message_id])
        wait_until(lambda: store.get_job(message.message_id).events[-1].detail.startswith("stopped"), timeout=10)
    finally:
        worker.stop()
    record = store.get_job(message.message_id)
    assert record.status is dr.Status.CANCELLED and record.attempts == 1
    assert 0 < len(steps) < 400


def test_interrupt_stops_a_running_job_at_once(broker, store) -> None:
    started = threading.Event()
    finished: list[bool] = []

    @dramatiq.actor(max_retries=3, cancellable="interrupt")
    def spin() -> None:
        started.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        message = spin.send()
        started.wait(5)
        wait_until(lambda: status(store, message.message_id) == "running")
        dr.cancel(store, [message.message_id])
        wait_until(lambda: store.get_job(message.message_id).events[-1].detail.startswith("stopped"), timeout=10)
    finally:
        worker.stop()
    assert finished == []
    assert status(store, message.message_id) == "cancelled"


def test_cancellable_must_be_step_or_interrupt(broker) -> None:
    with pytest.raises(ConfigurationError, match="cancellable"):

        @dramatiq.actor(cancellable="yes")
        def nope() -> None: ...


def test_bulk_cancel_selects_unfinished_jobs(broker, store) -> None:
    @dramatiq.actor(max_retries=0)
    def work(i: int) -> None: ...

    sent = [work.send(i) for i in range(5)]
    results = dr.cancel_where(store, actor="work")
    assert sorted(r.id for r in results) == sorted(m.message_id for m in sent)
    assert dr.cancel_where(store, actor="work") == []
    with pytest.raises(ConfigurationError, match="finished"):
        dr.cancel_where(store, status="done")
    with pytest.raises(ConfigurationError):
        dr.cancel_where(store)


def test_retry_now_runs_a_retrying_job_once(broker, store) -> None:
    attempts: list[float] = []

    @dramatiq.actor(max_retries=3, min_backoff=60_000, max_backoff=60_000)
    def flaky() -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise ValueError("first attempt fails")

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        message = flaky.send()
        wait_until(lambda: status(store, message.message_id) == "retrying")
        assert dr.retry_now(store, "nope").state == "unknown"
        result = dr.retry_now(store, message.message_id)
        assert result.state == "now"
        wait_until(lambda: status(store, message.message_id) == "done", timeout=15)
        assert len(attempts) == 2
        assert dr.retry_now(store, message.message_id).state == "done"
    finally:
        worker.stop()


def test_controls_are_read_at_boot(broker, store) -> None:
    dr.pause(store, queue="default")
    controls = controls_for(store)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert "default" in controls.paused_queues
    finally:
        worker.stop()


def test_the_check_costs_no_store_call_per_job(stub_broker, store) -> None:
    # Given the bundle with a slow heartbeat, and a count of the control reads the store gets
    dr.install(stub_broker, store, heartbeat_interval=60, abandon_after=120)
    reads: list[int] = []
    apply = store.apply

    def counting(batch):
        reads.extend(1 for op in batch.get("ops", []) if op.get("k") == "ctl_beat")
        return apply(batch)

    store.apply = counting  # type: ignore[method-assign]

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def work(i: int) -> None: ...

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        # When 200 jobs run
        for i in range(200):
            work.send(i)
        stub_broker.join(work.queue_name)
        worker.join()
    finally:
        worker.stop()
    # Then the controls were read once, at boot, not per job
    assert len(reads) == 1
