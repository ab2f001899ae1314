"""The scheduler's decisions on StubBroker + MemoryStore, with an injected clock.

Several ``Scheduler`` objects on one store stand for schedulers on several hosts. The real
processes on real Redis and RabbitMQ are in ``tests/integration/test_cron.py``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed

import dramatiq_reliable as dr
from dramatiq_reliable import metrics
from dramatiq_reliable._clock import now_ms
from dramatiq_reliable.actors.cron import FIRE_OPTION
from dramatiq_reliable.scheduler import RETRY_DELAY_MS
from tests.helpers import wait_until

#: A whole second, in ms, near the real time (JobState's records expire by the real clock).
T0 = now_ms() // 1000 * 1000


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class FlakyBroker(StubBroker):
    """A stub broker whose enqueue fails while ``down`` (a broker outage)."""

    down = False

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        if self.down:
            raise ConnectionClosed(OSError("connection refused"))
        return super().enqueue(message, delay=delay)


class FlakyStore(dr.MemoryStore):
    """A memory store that is unreachable for the op kinds in ``down``."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.down: set[str] = set()

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if any(op["k"] in self.down for op in batch.get("ops", [])):
            raise dr.StoreUnavailable("store memory:// unreachable: test outage")
        return super().apply(batch)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker() -> Iterator[FlakyBroker]:
    broker = FlakyBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def store(clock: Clock) -> FlakyStore:
    return FlakyStore(clock=clock)


def app(broker: StubBroker, store: dr.Store, expression: str = "* * * * * *", **actor_options: Any) -> dr.Schedule:
    dr.install(broker, store)

    @dr.cron(expression, args=(1,))
    @dramatiq.actor(broker=broker, queue_name="cron_q", max_retries=0, **actor_options)
    def tick(n: int) -> None:
        ran.append(n)

    ran: list[int] = []
    schedule = dr.registry_of(broker).get("tick")
    assert schedule is not None
    return schedule


def sent(broker: StubBroker) -> list[dramatiq.Message[Any]]:
    return [dramatiq.Message.decode(data) for data in list(broker.queues["cron_q"].queue)]


def schedulers(broker: StubBroker, store: dr.Store, clock: Clock, n: int = 3, **options: Any) -> list[dr.Scheduler]:
    options.setdefault("misfire_grace", 10)
    options.setdefault("claim_lease", 2)
    return [dr.Scheduler(broker, store, clock=clock, **options) for _ in range(n)]


def test_each_tick_is_enqueued_once_however_many_schedulers_fire_it(
    broker: FlakyBroker, store: FlakyStore, clock: Clock
) -> None:
    schedule = app(broker, store)
    a, b, c = schedulers(broker, store, clock)
    fires = [T0, T0 + 1000, T0 + 2000]
    for fire in fires:
        # When three schedulers fire the same tick (in any order)
        clock.now = fire + 5
        outcomes = [s.fire(schedule, fire) for s in (b, a, c)]
        # Then exactly one enqueues it
        assert sorted(outcomes) == ["enqueued", "taken", "taken"]
    messages = sent(broker)
    assert [m.message_id for m in messages] == [schedule.job_id(f) for f in fires]
    assert [m.options[FIRE_OPTION] for m in messages] == fires
    assert all(m.args == (1,) for m in messages)
    # And each tick's job is recorded under the id derived from its claim
    record = store.get_job(schedule.job_id(fires[-1]))
    assert record is not None and record.status.value == "queued"
    last = store.cron_last(["tick"])["tick"]
    assert (last.job_id, last.state) == (schedule.job_id(fires[-1]), "sent")


def test_a_claim_whose_scheduler_died_is_taken_over_once(broker: FlakyBroker, store: FlakyStore, clock: Clock) -> None:
    schedule = app(broker, store)
    a, b, c = schedulers(broker, store, clock)
    # Given scheduler A claimed a tick and died before enqueueing it
    store.cron_claim("tick", T0, schedule.job_id(T0), owner=a.owner, lease_ms=a.lease_ms, grace_ms=a.grace_ms, now=T0)
    assert b.fire(schedule, T0) == "taken"
    # When the others do their upkeep within the lease, nothing happens
    clock.now = T0 + a.lease_ms - 1
    b.maintain()
    assert sent(broker) == []
    # And after the lease, one of them enqueues it, with the tick's job id
    clock.now = T0 + a.lease_ms + 1
    b.maintain()
    c.maintain()
    assert [m.message_id for m in sent(broker)] == [schedule.job_id(T0)]
    assert metrics.value("cron_takeovers_total", schedule="tick") >= 1
    last = store.cron_last(["tick"])["tick"]
    assert (last.state, last.by) == ("sent", b.owner)


def test_a_takeover_past_the_grace_gives_the_tick_up(broker: FlakyBroker, store: FlakyStore, clock: Clock) -> None:
    schedule = app(broker, store)
    a, b, _ = schedulers(broker, store, clock)
    store.cron_claim("tick", T0, schedule.job_id(T0), owner=a.owner, lease_ms=a.lease_ms, grace_ms=a.grace_ms, now=T0)
    before = metrics.value("cron_ticks_missed_total", schedule="tick")
    # When no scheduler looks before the tick's misfire grace runs out
    clock.now = T0 + a.grace_ms + 1
    b.maintain()
    # Then it is not enqueued late, and is counted and recorded as missed
    assert sent(broker) == []
    assert metrics.value("cron_ticks_missed_total", schedule="tick") == before + 1
    assert store.cron_last(["tick"])["tick"].state == "missed"


def test_a_copy_enqueued_twice_after_a_lapsed_claim_runs_once(
    broker: FlakyBroker, store: FlakyStore, clock: Clock
) -> None:
    # Given scheduler A enqueued a tick but stalled past its lease before confirming,
    # so B took it over and enqueued the same message id again
    schedule = app(broker, store)
    a, b, _ = schedulers(broker, store, clock)
    clock.now = T0
    store.cron_claim("tick", T0, schedule.job_id(T0), owner=a.owner, lease_ms=a.lease_ms, grace_ms=a.grace_ms, now=T0)
    message = broker.get_actor("tick").message_with_options(args=(1,), **{FIRE_OPTION: T0})
    broker.enqueue(message.copy(message_id=schedule.job_id(T0)))
    clock.now = T0 + a.lease_ms + 1
    b.maintain()
    assert [m.message_id for m in sent(broker)] == [schedule.job_id(T0)] * 2
    # When a worker processes both copies
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broker.join("cron_q")
        worker.join()
    finally:
        worker.stop()
    # Then Idempotency ran the job once and skipped the redelivery
    record = store.get_job(schedule.job_id(T0))
    assert record is not None and record.status.value == "done"
    assert [e.status for e in record.events].count("running") == 1


def test_a_failed_enqueue_is_retried_by_any_scheduler(broker: FlakyBroker, store: FlakyStore, clock: Clock) -> None:
    schedule = app(broker, store)
    a, b, _ = schedulers(broker, store, clock)
    # Given the broker is down when A fires a tick
    broker.down = True
    assert a.fire(schedule, T0) == "failed"
    assert b.fire(schedule, T0) == "taken"
    # When the broker is back and the retry delay has passed, a scheduler's upkeep enqueues it
    broker.down = False
    clock.now = T0 + RETRY_DELAY_MS - 1
    b.maintain()
    assert sent(broker) == []
    clock.now = T0 + RETRY_DELAY_MS + 1
    b.maintain()
    a.maintain()
    assert [m.message_id for m in sent(broker)] == [schedule.job_id(T0)]


def test_a_tick_later_than_the_grace_is_not_enqueued(broker: FlakyBroker, store: FlakyStore, clock: Clock) -> None:
    schedule = app(broker, store)
    (a,) = schedulers(broker, store, clock, n=1)
    clock.now = T0 + a.grace_ms + 1
    assert a.fire(schedule, T0) == "missed"
    clock.now = T0 + a.grace_ms
    assert a.fire(schedule, T0) == "enqueued"
    assert len(sent(broker)) == 1


def test_store_outage_claims_are_retried_within_the_grace(broker: FlakyBroker, store: FlakyStore, clock: Clock) -> None:
    schedule = app(broker, store)
    (a,) = schedulers(broker, store, clock, n=1)
    # Given the store is unreachable at two ticks
    store.down = {"cron_claim"}
    errors = metrics.value("store_errors_total", op="cron_claim")
    assert a.fire(schedule, T0) == "deferred"
    assert a.fire(schedule, T0 + 1000) == "deferred"
    a.maintain()
    assert sent(broker) == []
    assert metrics.value("store_errors_total", op="cron_claim") >= errors + 2  # under the label every store error has
    # When it answers again after the first tick's grace but within the second's
    store.down = set()
    clock.now = T0 + a.grace_ms + 500
    a.maintain()
    # Then the tick still within its grace is enqueued, the other is given up
    assert [m.options[FIRE_OPTION] for m in sent(broker)] == [T0 + 1000]
    a.maintain()
    assert len(sent(broker)) == 1


def test_a_confirm_that_met_a_store_error_is_retried(broker: FlakyBroker, store: FlakyStore, clock: Clock) -> None:
    schedule = app(broker, store)
    a, b, _ = schedulers(broker, store, clock)
    store.down = {"cron_confirm"}
    errors = metrics.value("store_errors_total", op="cron_confirm")
    assert a.fire(schedule, T0) == "enqueued"
    assert metrics.value("store_errors_total", op="cron_confirm") == errors + 1
    store.down = set()
    a.maintain()  # the confirm goes first, so the upkeep never takes its own tick over
    clock.now = T0 + a.lease_ms + 1
    b.maintain()
    assert len(sent(broker)) == 1
    assert store.cron_last(["tick"])["tick"].state == "sent"


def test_a_unique_actor_skips_a_tick_while_its_previous_job_is_pending(
    broker: FlakyBroker, store: FlakyStore, clock: Clock
) -> None:
    schedule = app(broker, store, unique=True)
    (a,) = schedulers(broker, store, clock, n=1)
    assert a.fire(schedule, T0) == "enqueued"
    clock.now = T0 + 1000
    assert a.fire(schedule, T0 + 1000) == "skipped"
    assert len(sent(broker)) == 1
    assert store.cron_last(["tick"])["tick"].state == "skipped"


# -- starting after a gap ----------------------------------------------------------------------


def seed_last_tick(store: dr.Store, schedule: dr.Schedule, fire: int) -> None:
    job = schedule.job_id(fire)
    store.cron_claim(schedule.name, fire, job, owner="gone", lease_ms=1000, grace_ms=10_000, now=fire)
    store.cron_confirm(schedule.name, fire, owner="gone", now=fire)


@pytest.mark.parametrize("coalesce", [True, False])
def test_after_a_five_minute_gap_no_burst_only_ticks_within_the_grace(
    broker: FlakyBroker, store: FlakyStore, clock: Clock, coalesce: bool
) -> None:
    # Given every scheduler was down for 5 minutes after the last tick of a per-second schedule
    schedule = app(broker, store)
    seed_last_tick(store, schedule, T0 - 300_000)
    (a,) = schedulers(broker, store, clock, n=1, coalesce=coalesce)
    before = metrics.value("cron_ticks_missed_total", schedule="tick")
    # When a scheduler starts
    due = a.catch_up(now=T0 + 300)
    fires = [fire for _, fire in due]
    # Then the 290 ticks older than misfire_grace (10 s) are skipped and counted
    assert metrics.value("cron_ticks_missed_total", schedule="tick") == before + 290
    # And those within the grace run once each, or only the latest when coalescing
    expected = [T0 - 9000 + i * 1000 for i in range(10)]
    assert fires == (expected[-1:] if coalesce else expected)


def test_nothing_to_catch_up_for_a_schedule_that_never_ticked_or_ticks_now(
    broker: FlakyBroker, store: FlakyStore, clock: Clock
) -> None:
    schedule = app(broker, store)
    (a,) = schedulers(broker, store, clock, n=1)
    assert a.catch_up(now=T0) == []
    seed_last_tick(store, schedule, T0)
    assert a.catch_up(now=T0 + 500) == []


def test_options_are_checked(broker: FlakyBroker, store: FlakyStore) -> None:
    app(broker, store)
    with pytest.raises(dr.ConfigurationError, match=r"claim_lease .* must be less than misfire_grace"):
        dr.Scheduler(broker, store, misfire_grace=10, claim_lease=10)
    with pytest.raises(dr.ConfigurationError, match="misfire_grace must be a positive number"):
        dr.Scheduler(broker, store, misfire_grace=0)
    other = StubBroker()
    with pytest.raises(dr.ConfigurationError, match="actor 'tick' is not on this broker"):
        dr.Scheduler(other, store, schedules=dr.registry_of(broker))


def test_run_fires_ticks_on_time_and_stops_when_asked(broker: FlakyBroker) -> None:
    # Given a real clock and APScheduler's loop
    store = dr.MemoryStore()
    schedule = app(broker, store)
    scheduler = dr.Scheduler(broker, store, misfire_grace=5, claim_lease=1)
    thread = threading.Thread(target=scheduler.run, kwargs={"handle_signals": False})
    thread.start()
    try:
        # Then ticks are enqueued, one per second, each under its derived id
        wait_until(lambda: len(sent(broker)) >= 2, timeout=10, what="two ticks")
    finally:
        scheduler.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    messages = sent(broker)
    fires = [m.options[FIRE_OPTION] for m in messages]
    assert [m.message_id for m in messages] == [schedule.job_id(f) for f in fires]
    assert all(b - a == 1000 for a, b in pairwise(fires))
    assert all(f % 1000 == 0 for f in fires)


def test_schedulers_across_fall_back_fire_a_fixed_local_time_once(broker: FlakyBroker, clock: Clock) -> None:
    # Given a daily 02:30 Berlin schedule, last fired the day before the clocks fall back (2024-10-27)
    store = dr.MemoryStore(clock=clock)
    dr.install(broker, store)

    @dr.cron("30 2 * * *", timezone="Europe/Berlin", name="nightly")
    @dr.cron("*/30 * * * *", timezone="Europe/Berlin", name="half_hourly")
    @dramatiq.actor(broker=broker, queue_name="cron_q")
    def report() -> None: ...

    nightly, half_hourly = dr.registry_of(broker).get("nightly"), dr.registry_of(broker).get("half_hourly")
    assert nightly is not None and half_hourly is not None
    first_0230 = 1729989000000  # 2024-10-27 00:30 UTC = 02:30 CEST
    seed_last_tick(store, nightly, first_0230 - 86_400_000)
    seed_last_tick(store, half_hourly, first_0230 - 3_600_000)
    # When every scheduler was down through the night and one starts just after the second 02:30
    # (01:31 UTC), with a grace of two hours and no coalescing
    clock.now = first_0230 + 3_660_000
    a, b = schedulers(broker, store, clock, n=2, misfire_grace=7200, coalesce=False)
    due = a.catch_up()
    # Then the nightly job is due once (the first 02:30); the half-hourly one at each real half hour
    assert [(s.name, f) for s, f in due if s.name == "nightly"] == [("nightly", first_0230)]
    halves = [f for s, f in due if s.name == "half_hourly"]
    assert halves == [first_0230 - 1_800_000 + i * 1_800_000 for i in range(4)]
    # And two schedulers firing them enqueue each once, under distinct ids
    for schedule, fire in due:
        assert sorted([a.fire(schedule, fire), b.fire(schedule, fire)]) == ["enqueued", "taken"]
    ids = [m.message_id for m in sent(broker)]
    assert len(ids) == len(set(ids)) == 5


def test_without_apscheduler_run_says_which_extra_to_install(
    broker: FlakyBroker, store: FlakyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    app(broker, store)
    scheduler = dr.Scheduler(broker, store)
    monkeypatch.setitem(sys.modules, "apscheduler.schedulers.blocking", None)
    with pytest.raises(dr.ConfigurationError, match=r"install dramatiq-reliable\[cron\]"):
        scheduler.run(handle_signals=False)


@pytest.mark.parametrize("coalesce", [True, False])
def test_a_scheduler_that_fell_behind_coalesces_queued_ticks(
    broker: FlakyBroker, store: FlakyStore, clock: Clock, coalesce: bool
) -> None:
    from dramatiq_reliable._ticks import TickThread

    # Given three ticks of a schedule queued while the tick thread was busy (a stall)
    schedule = app(broker, store)
    (a,) = schedulers(broker, store, clock, n=1, coalesce=coalesce)
    clock.now = T0 + 2500
    ticks = TickThread(a, interval=60)
    for fire in (T0, T0 + 1000, T0 + 2000):
        ticks.submit(schedule.name, [fire])
    # When it catches up
    ticks.start()
    wait_until(lambda: ticks._queue.empty() and len(sent(broker)) >= (1 if coalesce else 3), timeout=10)
    ticks.stop()
    ticks.join(timeout=10)
    # Then only the latest is enqueued with coalesce, each one without
    fires = [m.options[FIRE_OPTION] for m in sent(broker)]
    assert fires == ([T0 + 2000] if coalesce else [T0, T0 + 1000, T0 + 2000])


def test_every_tick_is_checked_as_a_possible_redelivery() -> None:
    from dramatiq_reliable.middleware._redelivery import CRON_FIRE_OPTION

    assert CRON_FIRE_OPTION == FIRE_OPTION
