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
    second = journal.submit(op("finish", "x"), wait=True)
    question = journal.submit(
        {"k": "claim", "id": "x", "idem": {"key": "k", "token": "t", "lease_ms": 1000}}, wait=True, retry=False
    )
    assert time.monotonic() - started < 1.0
    assert isinstance(first.error, StoreUnavailable) and isinstance(question.error, StoreUnavailable)
    assert journal.degraded and journal.backlog == 2  # the question is not kept for later

    store.down = False
    deadline = time.monotonic() + 5
    while journal.degraded and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not journal.degraded and journal.backlog == 0
    assert [(o["k"], o["id"]) for o in store.batches[-1]] == [("start", "x"), ("finish", "x")]
    assert store.get_job("x").status.value == "done"
    assert second.done


def test_a_full_buffer_drops_the_oldest_writes_and_counts_them(store) -> None:
    journal = Journal(store, max_backlog=3, retry_interval=60)
    store.down = True
    before = metrics.value("store_writes_dropped_total")
    for i in range(5):
        journal.submit(op("finish", f"d{i}"), wait=True)
    assert journal.backlog == 3
    assert metrics.value("store_writes_dropped_total") - before == 2
    assert [s.op["id"] for s in journal._backlog] == ["d2", "d3", "d4"]


def test_a_batch_the_store_rejects_fails_its_writes_without_degrading() -> None:
    class Refusing(RecordingStore):
        def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
            raise ValueError("a bug")

    journal = Journal(Refusing())
    slot = journal.submit(op("finish", "z"), wait=True)
    assert isinstance(slot.error, ValueError) and not journal.degraded
