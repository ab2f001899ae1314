"""DeadLetters, replay and purge on StubBroker + MemoryStore (the broker-specific paths run in tests/integration)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

import dramatiq_reliable as dr
from dramatiq_reliable import metrics
from dramatiq_reliable.dead import reconcile
from dramatiq_reliable.errors import ConfigurationError
from dramatiq_reliable.middleware.idempotency import REPLAY_OPTION
from dramatiq_reliable.middleware.job_state import JobState
from tests.helpers import wait_until


class SMTPTimeout(Exception):
    pass


def build(broker: StubBroker, store: dr.MemoryStore, *, dead_letters: bool = True, **options: Any) -> SimpleNamespace:
    if dead_letters:
        dr.install(broker, store, **options)
    else:
        from dramatiq_reliable.install import add

        add(broker, JobState(store))
    ran: Counter[str] = Counter()
    broken = {"on": True}

    @dramatiq.actor(broker=broker, max_retries=1, min_backoff=10, max_backoff=20)
    def fragile(i: int) -> None:
        job = dr.current_job()
        assert job is not None
        ran[f"fragile:{i}:{job.attempt}"] += 1
        if broken["on"]:
            raise SMTPTimeout(f"attempt {job.attempt} of {i} timed out")

    @dramatiq.actor(broker=broker, throws=(SMTPTimeout,))
    def hopeless(i: int) -> None:
        ran[f"hopeless:{i}"] += 1
        if broken["on"]:
            raise SMTPTimeout("no retry for this one")

    @dramatiq.actor(broker=broker, max_retries=0)
    def fine(i: int) -> None:
        ran[f"fine:{i}"] += 1

    return SimpleNamespace(fragile=fragile, hopeless=hopeless, fine=fine, ran=ran, broken=broken)


@pytest.fixture
def store() -> dr.MemoryStore:
    return dr.MemoryStore()


@pytest.fixture
def app(stub_broker: StubBroker, store: dr.MemoryStore) -> Iterator[SimpleNamespace]:
    ns = build(stub_broker, store)
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    ns.worker = worker
    yield ns
    worker.stop()


def settle(broker: StubBroker, store: dr.Store, worker: dramatiq.Worker) -> None:
    for queue in list(broker.queues):
        if not queue.endswith(".DQ"):
            broker.join(queue)
    worker.join()
    store.journal.flush()


def statuses(store: dr.Store, messages: list[Any]) -> list[str | None]:
    return [getattr(store.get_job(m.message_id), "status", None) for m in messages]


def test_dead_letter_keeps_the_final_error_and_the_message(
    stub_broker: StubBroker, store: dr.MemoryStore, app: Any
) -> None:
    before = metrics.value("dead_letters_total", actor="fragile", queue="default")
    # Given a job that fails both its attempts
    sent = app.fragile.send(1)
    wait_until(lambda: statuses(store, [sent]) == ["failed"], timeout=10)
    settle(stub_broker, store, app.worker)

    # Then its dead letter carries the error of the last attempt, not of the one before
    letter = store.get_dead_letter(sent.message_id)
    assert letter is not None
    assert letter.error is not None and letter.error.type == "SMTPTimeout"
    assert letter.error.message == "attempt 2 of 1 timed out"
    assert "SMTPTimeout: attempt 2 of 1 timed out" in (letter.error.traceback or "")
    assert letter.job.attempts == 2 and letter.job.max_retries == 1
    assert letter.message is not None and letter.message["message_id"] == sent.message_id
    assert letter.message["options"]["retries"] == 1  # the message as it was delivered the last time
    assert letter.recorded and letter.queue == "default" and letter.actor == "fragile"
    assert metrics.value("dead_letters_total", actor="fragile", queue="default") == before + 1


def test_a_throws_error_is_dead_lettered_at_once(stub_broker: StubBroker, store: dr.MemoryStore, app: Any) -> None:
    sent = app.hopeless.send(1)
    wait_until(lambda: store.get_dead_letter(sent.message_id) is not None, timeout=10)
    letter = store.get_dead_letter(sent.message_id)
    assert letter is not None and letter.job.attempts == 1 and letter.error is not None
    assert "not retried" in letter.job.events[-1].detail


def test_jobs_that_end_well_leave_no_dead_letter(stub_broker: StubBroker, store: dr.MemoryStore, app: Any) -> None:
    app.broken["on"] = False
    sent = [app.fine.send(1), app.fragile.send(2)]
    wait_until(lambda: statuses(store, sent) == ["done", "done"], timeout=10)
    settle(stub_broker, store, app.worker)
    assert not store.dead_letters().items
    assert store.dead_letter_stats().total == 0


def test_a_failure_that_is_acked_is_not_a_dead_letter(store: dr.MemoryStore) -> None:
    # Without Retries, Dramatiq acks a failed message: nothing is dead-lettered
    broker = StubBroker(middleware=[], fail_fast_default=False)
    dr.install(broker, store)
    assert not any(isinstance(m, Retries) for m in broker.middleware)

    @dramatiq.actor(broker=broker)
    def hopeless() -> None:
        raise SMTPTimeout("no retries here")

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        sent = hopeless.send()
        wait_until(lambda: statuses(store, [sent]) == ["failed"], timeout=10)
        settle(broker, store, worker)
    finally:
        worker.stop()
    assert not broker.dead_letters
    assert store.get_dead_letter(sent.message_id) is None


def test_replay_runs_the_job_once_with_its_id_and_history(
    stub_broker: StubBroker, store: dr.MemoryStore, app: Any
) -> None:
    # Given a dead letter whose cause is then fixed
    sent = app.fragile.send(1)
    wait_until(lambda: store.get_dead_letter(sent.message_id) is not None, timeout=10)
    settle(stub_broker, store, app.worker)
    app.broken["on"] = False

    # When it is replayed twice
    (first,) = dr.replay(store, stub_broker, [sent.message_id])
    (second,) = dr.replay(store, stub_broker, [sent.message_id])

    # Then it was enqueued once, and the second call says why it did nothing
    assert first.outcome == "replayed" and first.ok
    assert second.outcome == "not dead" and "replayed at" in second.detail and not second.ok
    wait_until(lambda: statuses(store, [sent]) == ["done"], timeout=10)
    settle(stub_broker, store, app.worker)
    assert app.ran["fragile:1:1"] == 2  # first run, and the replay (a fresh attempt 1)
    record = store.get_job(sent.message_id)
    assert record is not None and record.attempts == 1
    assert [e.status for e in record.events] == [
        "queued", "running", "retrying", "queued", "running", "failed", "queued", "running", "done"
    ]  # fmt: skip
    assert record.events[6].detail.startswith("replayed from the dead-letter queue by ")
    assert store.get_dead_letter(sent.message_id) is None
    assert not stub_broker.dead_letters


def test_replay_and_purge_name_who_acted(stub_broker: StubBroker, store: dr.MemoryStore, app: Any) -> None:
    sent = [app.fragile.send(n) for n in (7, 8)]
    wait_until(lambda: all(store.get_dead_letter(m.message_id) for m in sent), timeout=10)
    settle(stub_broker, store, app.worker)
    with pytest.raises(ConfigurationError, match="by must be"):
        dr.replay(store, stub_broker, [sent[0].message_id], by="  ")
    assert store.get_dead_letter(sent[0].message_id) is not None  # nothing changed
    dr.purge(store, stub_broker, [sent[1].message_id], by="ops ticket 42")
    record = store.get_job(sent[1].message_id)
    assert record is not None and record.events[-1].detail == "purged from the dead-letter queue by ops ticket 42"


def test_a_replay_that_fails_again_is_a_dead_letter_again(
    stub_broker: StubBroker, store: dr.MemoryStore, app: Any
) -> None:
    sent = app.hopeless.send(1)
    wait_until(lambda: store.get_dead_letter(sent.message_id) is not None, timeout=10)
    settle(stub_broker, store, app.worker)
    assert dr.replay(store, stub_broker, [sent.message_id])[0].outcome == "replayed"
    wait_until(lambda: app.ran["hopeless:1"] == 2, timeout=10)
    settle(stub_broker, store, app.worker)
    letter = store.get_dead_letter(sent.message_id)
    assert letter is not None and letter.job.status.value == "failed"
    assert letter.message is not None and letter.message["options"][REPLAY_OPTION] > 0
    assert len(stub_broker.dead_letters) == 1


def test_dry_run_changes_nothing(stub_broker: StubBroker, store: dr.MemoryStore, app: Any) -> None:
    sent = app.hopeless.send(1)
    wait_until(lambda: store.get_dead_letter(sent.message_id) is not None, timeout=10)
    settle(stub_broker, store, app.worker)
    assert dr.replay(store, stub_broker, [sent.message_id], dry_run=True)[0].outcome == "would replay"
    assert dr.purge(store, stub_broker, [sent.message_id], dry_run=True)[0].outcome == "would purge"
    settle(stub_broker, store, app.worker)
    assert app.ran["hopeless:1"] == 1
    assert store.get_dead_letter(sent.message_id) is not None and len(stub_broker.dead_letters) == 1
    assert statuses(store, [sent]) == ["failed"]


def test_purge_removes_only_the_dead_letters_named(stub_broker: StubBroker, store: dr.MemoryStore, app: Any) -> None:
    sent = [app.hopeless.send(i) for i in range(3)]
    wait_until(lambda: all(store.get_dead_letter(m.message_id) for m in sent), timeout=10)
    settle(stub_broker, store, app.worker)
    results = dr.purge(store, stub_broker, [sent[0].message_id, sent[1].message_id, "nope"])
    assert [r.outcome for r in results] == ["purged", "purged", "not found"]
    assert [p.message_id for p in stub_broker.dead_letters] == [sent[2].message_id]
    assert [x.id for x in store.dead_letters()] == [sent[2].message_id]
    record = store.get_job(sent[0].message_id)
    assert record is not None and record.status.value == "failed"
    assert record.events[-1].detail.startswith("purged from the dead-letter queue")


def test_a_dead_letter_the_store_never_saw_is_found_and_replayable(
    stub_broker: StubBroker, store: dr.MemoryStore
) -> None:
    # Given an app without DeadLetters: the broker dead-letters, the store keeps no copy
    ns = build(stub_broker, store, dead_letters=False)
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        sent = ns.fragile.send(9)
        wait_until(lambda: statuses(store, [sent]) == ["failed"], timeout=10)
        settle(stub_broker, store, worker)
        assert not store.dead_letters().items

        # When the dead letters are listed with the broker
        page = dr.dead.find(store, stub_broker)

        # Then it is there, marked as not recorded, with the error the message carries (on real
        # brokers the one of the attempt before the last; the stub keeps the last one)
        (letter,) = page.items
        assert letter.id == sent.message_id and not letter.recorded
        assert letter.error is not None and letter.error.type == "SMTPTimeout"
        assert "of 9 timed out" in letter.error.message and "not recorded" in letter.error.message
        assert letter.job.attempts == 2  # JobState's record

        # And it can be replayed
        ns.broken["on"] = False
        assert dr.replay(store, stub_broker, [sent.message_id])[0].outcome == "replayed"
        wait_until(lambda: statuses(store, [sent]) == ["done"], timeout=10)
        settle(stub_broker, store, worker)
        assert not stub_broker.dead_letters and not dr.dead.find(store, stub_broker).items
    finally:
        worker.stop()


def test_a_copy_gone_from_the_broker_is_forgotten_not_replayed(
    stub_broker: StubBroker, store: dr.MemoryStore, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconcile, "GRACE_MS", 0)
    sent = [app.hopeless.send(i) for i in range(2)]
    wait_until(lambda: all(store.get_dead_letter(m.message_id) for m in sent), timeout=10)
    settle(stub_broker, store, app.worker)

    # Given the broker's copies are gone (expired, or removed by another tool)
    for items in stub_broker.dead_letters_by_queue.values():
        items.clear()

    # Then replaying one says so and enqueues nothing
    assert dr.replay(store, stub_broker, [sent[0].message_id])[0].outcome == "gone"
    # And listing forgets the other
    assert not dr.dead.find(store, stub_broker).items
    settle(stub_broker, store, app.worker)
    assert app.ran["hopeless:0"] == 1
    record = store.get_job(sent[1].message_id)
    assert record is not None and record.status.value == "failed"
    assert record.events[-1].detail.startswith("no longer in the dead-letter queue")


def test_a_replay_of_a_job_already_done_is_skipped_by_idempotency(
    stub_broker: StubBroker, store: dr.MemoryStore, app: Any
) -> None:
    # Given a job that completed, and a copy of its message in the dead-letter queue (as when a
    # redelivered copy is failed by AgeLimit)
    app.broken["on"] = False
    sent = app.fragile.send(5)
    wait_until(lambda: statuses(store, [sent]) == ["done"], timeout=10)
    settle(stub_broker, store, app.worker)
    proxy = dramatiq.broker.MessageProxy(sent)
    stub_broker.dead_letters_by_queue["default"].append(proxy)

    # When it is replayed
    (result,) = dr.replay(store, stub_broker, [sent.message_id])
    assert result.outcome == "replayed"
    settle(stub_broker, store, app.worker)

    # Then the work is not done twice: the record stays done, with the skip in its history
    assert app.ran["fragile:5:1"] == 1
    record = store.get_job(sent.message_id)
    assert record is not None and record.status.value == "done"
    assert "so its status is kept" in record.events[-2].detail
    assert record.events[-1].detail == "skipped: a redelivery of this completed job"


def test_a_replay_delivered_twice_runs_once(stub_broker: StubBroker, store: dr.MemoryStore, app: Any) -> None:
    sent = app.hopeless.send(3)
    wait_until(lambda: store.get_dead_letter(sent.message_id) is not None, timeout=10)
    settle(stub_broker, store, app.worker)
    app.broken["on"] = False
    letter = store.get_dead_letter(sent.message_id)
    assert letter is not None and letter.message is not None
    # A second copy of the replayed message (as an at-least-once broker may deliver)
    assert dr.replay(store, stub_broker, [sent.message_id])[0].outcome == "replayed"
    settle(stub_broker, store, app.worker)
    copy = dr.dead.clean(Message(**{**letter.message, "args": tuple(letter.message["args"])}), 1)
    stub_broker.enqueue(copy)
    settle(stub_broker, store, app.worker)
    assert app.ran["hopeless:3"] == 2  # the first run, and the replay; not the copy
    assert statuses(store, [sent]) == ["done"]


def test_clean_resets_what_a_replay_must_not_keep() -> None:
    old = Message(
        queue_name="default.DQ",
        actor_name="a",
        args=(1,),
        kwargs={"k": 2},
        options={
            "retries": 3,
            "traceback": "tb",
            "requeue_timestamp": 5,
            "eta": 6,
            "redis_message_id": "r",
            "dr_put_back": 2,
            "max_retries": 3,
            "pipe_target": {"x": 1},
        },
        message_id="m1",
        message_timestamp=1,
    )
    new = dr.dead.clean(old, 1234)
    assert new.message_id == "m1" and new.queue_name == "default" and new.message_timestamp == 1234
    assert new.args == (1,) and new.kwargs == {"k": 2}
    assert new.options == {"max_retries": 3, "pipe_target": {"x": 1}, REPLAY_OPTION: 1234}


def test_bad_input_is_refused(stub_broker: StubBroker, store: dr.MemoryStore) -> None:
    with pytest.raises(dr.ConfigurationError):
        dr.replay(store, stub_broker, "abc")  # type: ignore[arg-type]
    with pytest.raises(dr.ConfigurationError):
        dr.purge(store, stub_broker, [""])
    with pytest.raises(dr.ConfigurationError):
        dr.replay(object(), stub_broker, ["x"])  # type: ignore[arg-type]
    assert dr.replay(store, stub_broker, ["nope"])[0].outcome == "not found"
    with pytest.raises(dr.ConfigurationError):
        dr.DeadLetters(store, retention=0)
    with pytest.raises(dr.NotFound):
        dr.dead.show(store, stub_broker, "nope")


def test_install_order_options_and_queues(stub_broker: StubBroker, store: dr.MemoryStore) -> None:
    added = dr.install(stub_broker, store, dead_letter_retention=3600, retention=60)
    assert [type(m).__name__ for m in added] == ["Idempotency", "JobState", "DeadLetters", "Watchdog", "Alerts"]
    names = [type(m).__name__ for m in stub_broker.middleware]
    assert names.index("Idempotency") < names.index("JobState") < names.index("DeadLetters") < names.index("Retries")
    assert added[2].retention == 3600 and added[1].retention == 60  # type: ignore[attr-defined]

    @dramatiq.actor(broker=stub_broker, queue_name="invoices")
    def invoice() -> None: ...

    store.journal.flush()
    assert "invoices" in store.dead_letter_queues()


class FlakyStore(dr.MemoryStore):
    """A MemoryStore that can be made unreachable, for all calls or for some op kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refuse: set[str] = set()

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if self.down or any(op["k"] in self.refuse for op in batch["ops"]):
            raise dr.StoreUnavailable("store unreachable: test")
        return super().apply(batch)

    def ping(self) -> None:
        if self.down:
            raise dr.StoreUnavailable("store unreachable: test")

    def _load_dead(self, ids: Any) -> Any:
        if self.down:
            raise dr.StoreUnavailable("store unreachable: test")
        return super()._load_dead(ids)


def test_dead_lettered_while_the_store_is_down(stub_broker: StubBroker) -> None:
    store = FlakyStore()
    ns = build(stub_broker, store, on_store_error="run")  # Idempotency would hold the job back
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        # Given the store goes down before a job dies
        store.down = True
        sent = ns.hopeless.send(1)
        wait_until(lambda: len(stub_broker.dead_letters) == 1, timeout=10, what="dead-lettered anyway")
        assert not store.client.keys(store.k("dead", "*"))

        # When it answers again, the buffered capture lands, with the final error
        store.down = False
        wait_until(lambda: store.get_dead_letter(sent.message_id) is not None, timeout=10)
        letter = store.get_dead_letter(sent.message_id)
        assert letter is not None and letter.recorded and letter.error is not None
        assert letter.error.message == "no retry for this one"
    finally:
        worker.stop()


def test_store_down_during_a_replay(
    stub_broker: StubBroker, app: Any, store: dr.MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = FlakyStore()
    sent = app.hopeless.send(1)
    wait_until(lambda: store.get_dead_letter(sent.message_id) is not None, timeout=10)
    settle(stub_broker, store, app.worker)
    # The test's store object holds the state; move it into the flaky one
    flaky.__dict__.update({k: v for k, v in store.__dict__.items() if k not in ("down", "refuse")})

    # Down before the first step: nothing moves
    flaky.refuse = {"replay"}
    (result,) = dr.replay(flaky, stub_broker, [sent.message_id])
    assert result.outcome == "unreachable" and len(stub_broker.dead_letters) == 1
    flaky.down = True
    with pytest.raises(dr.StoreUnavailable):
        dr.replay(flaky, stub_broker, [sent.message_id])
    flaky.down = False

    # Down after the broker moved it: it is replayed; the store's stale copy is forgotten later
    app.broken["on"] = False
    flaky.refuse = {"replayed"}
    (result,) = dr.replay(flaky, stub_broker, [sent.message_id])
    assert result.outcome == "replayed" and "store not updated" in result.detail
    flaky.refuse = set()
    settle(stub_broker, flaky, app.worker)
    assert not stub_broker.dead_letters and app.ran["hopeless:1"] == 2
    monkeypatch.setattr(reconcile, "GRACE_MS", 0)
    assert not dr.dead.find(flaky, stub_broker).items
