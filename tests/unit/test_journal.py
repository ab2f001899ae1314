"""The journal: group commit, lingering starts, and what happens while the store is unreachable.

The store here is a recording double of the ``Store.apply`` contract: the journal is the subject.
The same behaviours against a real Redis that goes away are in ``tests/integration``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dramatiq_reliable import metrics
from dramatiq_reliable._clock import now_ms
from dramatiq_reliable.errors import StoreUnavailable
from dramatiq_reliable.store.journal import Journal
from dramatiq_reliable.store.memory import MemoryStore


class RecordingStore(MemoryStore):
    """A MemoryStore that records each batch, can be slowed down, and can be made unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[dict[str, Any]]] = []
        self.down = False
        self.delay = 0.0

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if self.down:
            raise StoreUnavailable("store memory:// unreachable: down for the test")
        time.sleep(self.delay)
        self.batches.append(list(batch["ops"]))
        return super().apply(batch)

    def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("down")


def op(kind: str, job_id: str) -> dict[str, Any]:
    if kind == "start":
        return {"k": "start", "id": job_id, "job": {"actor": "a", "queue": "q", "att": 1, "worker": "w"}}
    return {"k": "finish", "id": job_id, "job": {"outcome": "done", "att": 1}}


@pytest.fixture
def store() -> RecordingStore:
    return RecordingStore()


def ms(at: Any) -> int:
    return round(at.timestamp() * 1000)


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_waiting_writes_of_many_threads_share_store_calls(store) -> None:
    # Given a store call that takes a while, and 16 threads each waiting for its write
    store.delay = 0.02
    journal = Journal(store)
    slots = []

    def write(i: int) -> None:
        slots.append(journal.submit(op("finish", f"j{i}"), wait=True))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then every write was applied, in far fewer calls than writes
    assert all(slot.done and slot.error is None for slot in slots)
    assert sum(len(b) for b in store.batches) == 16
    assert len(store.batches) <= 4
    assert all(store.get_job(f"j{i}") is not None for i in range(16))


def test_a_lingering_start_joins_its_end_in_one_batch(store) -> None:
    journal = Journal(store, linger=5.0)
    start = journal.submit(op("start", "a"), wait=False, linger=True)
    journal.submit(op("finish", "b"), wait=True)  # another job's flush does not take it
    assert [o["id"] for o in store.batches[-1]] == ["b"]
    journal.submit(op("finish", "a"), wait=True, after=start)
    assert [(o["k"], o["id"]) for o in store.batches[-1]] == [("start", "a"), ("finish", "a")]
    assert start.done


def test_a_lingering_start_is_written_after_linger_by_itself(store) -> None:
    journal = Journal(store, linger=0.05)
    slot = journal.submit(op("start", "long"), wait=False, linger=True)
    deadline = time.monotonic() + 5
    while not slot.done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slot.done and store.get_job("long").status.value == "running"


def test_unreachable_store_releases_waiters_at_once_and_replays_in_order(store) -> None:
    journal = Journal(store, retry_interval=0.05)
    store.down = True
    started = time.monotonic()
    first = journal.submit(op("start", "x"), wait=True)
    other = journal.submit(op("start", "y"), wait=True)
    second = journal.submit(op("finish", "x"), wait=True)
    question = journal.submit(
        {"k": "claim", "id": "x", "idem": {"key": "k", "token": "t", "lease_ms": 1000}}, wait=True, retry=False
    )
    assert time.monotonic() - started < 1.0
    assert isinstance(first.error, StoreUnavailable) and isinstance(question.error, StoreUnavailable)
    # the question is not kept for later, and x's end carries its start
    assert journal.degraded and journal.backlog == 2

    store.down = False
    wait_for(lambda: not journal.degraded)
    assert journal.backlog == 0
    assert [(o["k"], o["id"]) for o in store.batches[-1]] == [("start", "y"), ("finish", "x")]
    record = store.get_job("x")
    assert record.status.value == "done" and record.actor == "a" and record.worker == "w"
    assert [e.status for e in record.events] == ["running", "done"]
    assert second.done and other.done


def test_a_full_buffer_of_final_writes_drops_the_oldest_and_counts_them(store, caplog) -> None:
    journal = Journal(store, max_backlog=3, retry_interval=60)
    store.down = True
    before = metrics.value("store_writes_dropped_total", rank="final")
    for i in range(5):
        journal.submit(op("finish", f"d{i}"), wait=True)
    assert journal.backlog == 3
    assert metrics.value("store_writes_dropped_total", rank="final") - before == 2
    assert [s.op["id"] for s in journal._backlog.slots()] == ["d2", "d3", "d4"]
    assert "Store write buffer full (3 writes): 1 dropped" in caplog.text


def test_a_batch_the_store_rejects_fails_its_writes_without_degrading() -> None:
    class Refusing(RecordingStore):
        def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
            raise ValueError("a bug")

    journal = Journal(Refusing())
    slot = journal.submit(op("finish", "z"), wait=True)
    assert isinstance(slot.error, ValueError) and not journal.degraded


def put_back(job_id: str) -> list[dict[str, Any]]:
    """The writes of one put-back of a keyed job whose key could not be checked: an event, then its due time."""
    detail = "put back: store unavailable (down)"
    return [
        {"k": "finish", "id": job_id, "job": {"outcome": "deferred", "att": 1, "detail": detail}},
        {"k": "due", "id": job_id, "job": {}},
    ]


def test_put_back_churn_never_crowds_out_final_writes(store, caplog) -> None:
    # Given a buffer of 50 writes while the store is down, and 10 jobs that ended early in the outage
    journal = Journal(store, max_backlog=50, retry_interval=0.05)
    store.down = True
    dropped = metrics.value("store_writes_dropped_total")
    finals_dropped = metrics.value("store_writes_dropped_total", rank="final")
    for i in range(10):
        journal.submit(op("finish", f"done{i}"), wait=True)
    # When 100 keyed jobs are put back again and again (far more writes than the buffer holds),
    # and two more jobs end among them
    for cycle in range(5):
        for k in range(100):
            for write in put_back(f"keyed{k}"):
                journal.submit(write, wait=False)
        journal.submit(op("finish", f"late{cycle}"), wait=True)

    # Then each keyed job's churn collapsed into one put-back and one due; what did not fit is
    # noise, dropped with a log line and counted
    assert journal.backlog == 50
    assert "Store write buffer full (50 writes): 1 dropped since the store went away (0 final" in caplog.text
    assert metrics.value("store_writes_dropped_total") > dropped
    assert metrics.value("store_writes_dropped_total", rank="final") == finals_dropped

    # And once the store is back, every final write is applied
    store.down = False
    wait_for(lambda: not journal.degraded and "Store reachable again" in caplog.text)
    for job_id in [*(f"done{i}" for i in range(10)), *(f"late{c}" for c in range(5))]:
        record = store.get_job(job_id)
        assert record is not None and record.status.value == "done", job_id
    assert "Store reachable again; 50 buffered writes applied" in caplog.text


def test_final_writes_are_the_last_dropped(store) -> None:
    # Given a buffer full of final writes
    journal = Journal(store, max_backlog=3, retry_interval=60)
    store.down = True
    for i in range(3):
        journal.submit(op("finish", f"f{i}"), wait=True)
    # When a start and a put-back come: they are dropped, not the final writes
    journal.submit(op("start", "s"), wait=False)
    journal.submit(put_back("p")[0], wait=False)
    assert [s.op["id"] for s in journal._backlog.slots()] == ["f0", "f1", "f2"]
    # And a start makes room for itself by dropping the oldest put-back, never a final write
    journal.max_backlog = 5
    journal.submit(put_back("p")[0], wait=False)
    journal.submit(op("start", "s"), wait=False)
    journal.submit(op("start", "t"), wait=False)
    assert [s.op["id"] for s in journal._backlog.slots()] == ["f0", "f1", "f2", "s", "t"]


def test_repeated_put_backs_of_a_job_are_one_event_that_says_how_many(store) -> None:
    journal = Journal(store, retry_interval=0.05)
    store.down = True
    journal.submit(
        {"k": "enqueue", "id": "k", "job": {"actor": "a", "queue": "q", "enq_ms": 1, "detail": "enqueued"}}, wait=True
    )
    for _ in range(7):
        for write in put_back("k"):
            journal.submit(write, wait=False)
    assert journal.backlog == 2  # the enqueue and one put-back
    store.down = False
    wait_for(lambda: not journal.degraded)
    record = store.get_job("k")
    assert [(e.status, e.detail.split(" (")[0]) for e in record.events] == [
        ("queued", "enqueued"),
        ("queued", "put back: store unavailable"),
    ]
    assert "(7 times while the store was unreachable, the last at " in record.events[-1].detail


def test_buffered_events_keep_the_time_they_happened(store) -> None:
    # Given writes made while the store is down
    journal = Journal(store, retry_interval=0.05)
    store.down = True
    start = journal.submit(op("start", "x"), wait=False)
    end = journal.submit(op("finish", "x"), wait=True)
    running = journal.submit(op("start", "y"), wait=False)
    wait_for(lambda: now_ms() > running.at + 5)  # the replay comes later
    # When they are replayed
    store.down = False
    wait_for(lambda: not journal.degraded)
    replayed = now_ms()
    # Then their events and times are those of the writes, not of the replay
    x, y = store.get_job("x"), store.get_job("y")
    assert [(e.status, ms(e.at)) for e in x.events] == [("running", start.at), ("done", end.at)]
    assert ms(x.started_at) == start.at and ms(x.finished_at) == end.at
    assert ms(y.events[0].at) == ms(y.started_at) == running.at < replayed


def test_a_late_event_goes_where_its_time_puts_it(store) -> None:
    # Given a put-back buffered by a process cut off from the store
    cut_off, other = Journal(store, retry_interval=60), Journal(store)
    store.down = True
    cut_off.submit(put_back("j")[0], wait=True)
    earlier = cut_off._backlog.slots()[0].op["at_ms"]
    store.down = False
    # and the job then enqueued again and done by another process
    wait_for(lambda: now_ms() > earlier + 5)
    other.submit({"k": "enqueue", "id": "j", "job": {"actor": "a", "queue": "q", "enq_ms": earlier - 10}}, wait=True)
    other.submit(op("start", "j"), wait=True)
    other.submit(op("finish", "j"), wait=True)
    # When the first process's buffer is replayed
    cut_off._recover()
    # Then the put-back event sits where its time puts it, with the status the job had then
    record = store.get_job("j")
    assert [e.status for e in record.events] == ["queued", "queued", "running", "done"]
    assert ms(record.events[0].at) == earlier and record.events[0].detail.startswith("put back")
    assert record.status.value == "done"


def test_a_job_put_back_during_an_outage_is_never_recorded_as_running(store, stub_broker, monkeypatch) -> None:
    import dramatiq

    import dramatiq_reliable as dr
    from dramatiq_reliable.middleware import idempotency

    # Given JobState and Idempotency added by hand, JobState first (so it stages the start before
    # Idempotency finds it cannot check the key), a keyed actor, and its store unreachable
    monkeypatch.setattr(idempotency, "STORE_ERROR_DELAY", 0.05)
    stub_broker.add_middleware(dr.JobState(store))
    stub_broker.add_middleware(dr.Idempotency(store))
    calls = []

    @dramatiq.actor(idempotency_key="k:{n}", track=("n",))
    def keyed(n):
        calls.append(n)

    store.down = True
    message = keyed.send(1)
    deferred = metrics.value("idempotency_deferred_total")
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        # When it is put back again and again, then the store comes back
        wait_for(lambda: metrics.value("idempotency_deferred_total") >= deferred + 3)
        store.down = False
        wait_for(lambda: calls == [1] and store.get_job(message.message_id).status.value == "done", timeout=15)
    finally:
        worker.stop()

    # Then its record shows it queued, put back, then one run: never running while it was not
    record = store.get_job(message.message_id)
    assert [e.status for e in record.events].count("running") == 1, record.events
    assert [e.status for e in record.events][-2:] == ["running", "done"]
    assert "times while the store was unreachable" in " ".join(e.detail for e in record.events)
    assert record.keys == {"n": "1"} and record.actor == "keyed"


def test_flush_unsent_applies_the_writes_nobody_waited_for_but_not_lingering_starts(store: RecordingStore) -> None:
    from dramatiq_reliable.store.journal import flush_unsent

    journal = Journal(store, linger=60)  # the background thread would not flush for a minute
    slot = journal.submit({"k": "enqueue", "id": "e1", "job": {"actor": "a", "queue": "q"}}, wait=False)
    start = journal.submit(op("start", "s1"), wait=False, linger=True)
    assert journal.unsent
    flush_unsent()
    assert slot.done and slot.ok
    assert not journal.unsent
    assert store.get_job("e1") is not None
    # A running job's start keeps lingering for its end
    assert not start.done and store.get_job("s1") is None
