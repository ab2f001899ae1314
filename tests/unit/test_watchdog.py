"""The Watchdog on StubBroker + MemoryStore: stuck jobs, options, the process's lifecycle."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimit

import dramatiq_reliable as dr
from dramatiq_reliable import events, metrics
from dramatiq_reliable.backlog import READY_OPTION
from dramatiq_reliable.errors import StoreUnavailable
from dramatiq_reliable.install import ORDER
from dramatiq_reliable.middleware import _watcher
from dramatiq_reliable.middleware._run import JobRun
from dramatiq_reliable.middleware.watchdog import TIME_LIMIT_GRACE
from tests.helpers import wait_until

FAST = {"heartbeat_interval": 0.1, "abandon_after": 0.5, "sweep_interval": 0.1}


class FlakyStore(dr.MemoryStore):
    """A MemoryStore that can be made unreachable."""

    down = False

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if self.down:
            raise StoreUnavailable("store down (test)")
        return super().apply(batch)

    def ping(self) -> None:
        if self.down:
            raise StoreUnavailable("store down (test)")


@pytest.fixture
def heard() -> Iterator[list[events.Event]]:
    got: list[events.Event] = []
    unsubscribe = events.subscribe(got.append)
    yield got
    unsubscribe()


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def broker(store: FlakyStore) -> Iterator[StubBroker]:
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    dr.install(broker, store, **FAST)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def worker(broker: StubBroker) -> Iterator[dramatiq.Worker]:
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


def watchdog_of(broker: dramatiq.Broker) -> dr.Watchdog:
    return next(m for m in broker.middleware if isinstance(m, dr.Watchdog))


def status(store: dr.Store, job_id: str) -> str | None:
    record = store.get_job(job_id)
    return record.status.value if record else None


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"heartbeat_interval": 5, "abandon_after": 9},
        {"abandon_after": 0},
        {"sweep_interval": -1},
        {"stuck_after": 0},
        {"heartbeat_interval": True},
        {"consumer_timeout": "30m"},
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(dr.ConfigurationError):
        dr.Watchdog(dr.MemoryStore(), **options)


def test_a_bad_stuck_after_fails_at_declaration(broker: StubBroker) -> None:
    with pytest.raises(dr.ConfigurationError, match="stuck_after"):

        @dramatiq.actor(broker=broker, stuck_after="5m")
        def job() -> None: ...


def test_install_puts_the_watchdog_after_job_state(broker: StubBroker) -> None:
    assert [dr.Idempotency, dr.JobState, dr.DeadLetters, dr.Watchdog, dr.Alerts] == ORDER
    ours = [type(m) for m in broker.middleware if type(m) in ORDER]
    assert ours == ORDER
    assert watchdog_of(broker).abandon_after == 0.5


def test_stuck_after_comes_from_the_message_the_actor_the_watchdog_then_the_time_limit() -> None:
    # Given a Watchdog without a default, on a broker whose TimeLimit allows 60 s
    broker = StubBroker()
    broker.add_middleware(dr.JobState(dr.MemoryStore()))
    wd = dr.Watchdog(dr.MemoryStore())
    broker.add_middleware(wd)
    wd._time_limit = next(m.time_limit for m in broker.middleware if isinstance(m, TimeLimit))

    @dramatiq.actor(broker=broker, stuck_after=30)
    def own() -> None: ...

    @dramatiq.actor(broker=broker, time_limit=10_000)
    def limited() -> None: ...

    @dramatiq.actor(broker=broker)
    def plain() -> None: ...

    assert wd.stuck_after_of(own.message(), own) == 30
    assert wd.stuck_after_of(own.message_with_options(stuck_after=3), own) == 3
    assert wd.stuck_after_of(limited.message(), limited) == 10 + TIME_LIMIT_GRACE
    assert wd.stuck_after_of(plain.message(), plain) == 600 + TIME_LIMIT_GRACE
    wd.stuck_after = 45
    assert wd.stuck_after_of(plain.message(), plain) == 45
    assert wd.stuck_after_of(own.message(), own) == 30
    wd.stuck_after, wd._time_limit = None, None
    assert wd.stuck_after_of(plain.message(), plain) is None


# -- stuck --------------------------------------------------------------------------------------


def test_a_job_past_stuck_after_is_stuck_with_its_stack_then_done(
    broker: StubBroker, worker: dramatiq.Worker, store: dr.Store, heard: list[events.Event]
) -> None:
    # Given an actor that blocks in time.sleep for longer than its stuck_after
    @dramatiq.actor(broker=broker, stuck_after=0.3)
    def blocked(seconds: float) -> None:
        time.sleep(seconds)

    before = metrics.value("stuck_jobs_total", actor="blocked")

    # When it runs
    message = blocked.send(1.5)

    # Then it is marked stuck, with the stack of its thread, innermost last
    record = wait_until(
        lambda: (r := store.get_job(message.message_id)) and r.status.value == "stuck" and r, timeout=10
    )
    assert record.stack is not None and record.stack[-1]["function"] == "blocked"
    assert "time.sleep(seconds)" in record.stack[-1]["code"]
    assert record.stack[-1]["file"].endswith("test_watchdog.py")
    assert "dramatiq/worker.py" in " ".join(f["file"] for f in record.stack)
    assert "past its stuck_after of 0.3s" in record.events[-1].detail
    assert metrics.value("stuck_jobs_total", actor="blocked") == before + 1
    [event] = wait_until(lambda: [e for e in heard if e.kind == "stuck"], timeout=5, what="the stuck event")
    assert event.job_id == message.message_id and event.actor == "blocked" and event.extra["stack"] == record.stack

    # And when it ends it is done, its stack cleared
    broker.join(blocked.queue_name)
    worker.join()
    record = store.get_job(message.message_id)
    assert record is not None and record.status.value == "done" and record.stack is None
    assert [e.status for e in record.events] == ["queued", "running", "stuck", "done"]


def test_a_job_that_ends_in_time_is_never_stuck(
    broker: StubBroker, worker: dramatiq.Worker, store: dr.Store, heard: list[events.Event]
) -> None:
    @dramatiq.actor(broker=broker, stuck_after=1)
    def quick() -> None:
        time.sleep(0.2)

    messages = [quick.send() for _ in range(4)]
    broker.join(quick.queue_name)
    worker.join()
    time.sleep(0.3)  # a watchdog tick after the end: nothing is marked late
    assert [status(store, m.message_id) for m in messages] == ["done"] * 4
    assert not [e for e in heard if e.kind == "stuck"]


def test_a_stuck_job_is_marked_once_the_store_answers_again(
    broker: StubBroker,
    worker: dramatiq.Worker,
    store: FlakyStore,
    heard: list[events.Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_watcher, "STUCK_RETRY", 0.2)

    @dramatiq.actor(broker=broker, stuck_after=0.3)
    def hangs() -> None:
        time.sleep(2.5)

    # Given the store down when the job passes its stuck_after
    message = hangs.send()
    wait_until(lambda: status(store, message.message_id) == "running", timeout=5)
    store.down = True
    time.sleep(0.8)
    assert not [e for e in heard if e.kind == "stuck"]

    # When it answers again, the job is marked stuck
    store.down = False
    wait_until(lambda: status(store, message.message_id) == "stuck", timeout=10, what="stuck after the outage")
    stuck = wait_until(lambda: [e.job_id for e in heard if e.kind == "stuck"], timeout=5, what="the stuck event")
    assert stuck == [message.message_id]


def test_the_watcher_thread_survives_its_errors(
    broker: StubBroker, worker: dramatiq.Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    wd = watchdog_of(broker)
    assert wd._watcher is not None
    calls = []

    def broken(now: float) -> None:
        calls.append(now)
        raise RuntimeError("boom")

    monkeypatch.setattr(wd._watcher, "step", broken)
    wait_until(lambda: len(calls) >= 2, timeout=5, what="two failing ticks")
    assert wd._watcher.is_alive()


# -- the process --------------------------------------------------------------------------------


def test_a_worker_process_is_known_while_it_runs_and_forgotten_when_it_stops(
    broker: StubBroker, store: dr.Store
) -> None:
    @dramatiq.actor(broker=broker)
    def job() -> None: ...

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    [proc] = wait_until(store.worker_processes, timeout=5, what="the first heartbeat")
    assert proc.alive and proc.queues == ["default", "default.DQ"] and proc.running == 0
    assert watchdog_of(broker)._watcher is not None

    worker.stop()
    assert store.worker_processes() == []
    assert watchdog_of(broker)._watcher is None


def test_a_job_still_running_when_its_worker_stops_is_abandoned(
    broker: StubBroker, store: dr.Store, heard: list[events.Event]
) -> None:
    @dramatiq.actor(broker=broker)
    def long() -> None:
        time.sleep(1.5)

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    message = long.send()
    wait_until(lambda: status(store, message.message_id) == "running", timeout=5)
    before = metrics.value("abandoned_jobs_total", actor="long")

    # When the worker stops without waiting for it
    worker.stop(timeout=100)

    # Then the job is abandoned, with the reason, and the process is kept dead (for recovery)
    record = store.get_job(message.message_id)
    assert record is not None and record.status.value == "abandoned"
    assert "shut down before it finished" in record.events[-1].detail
    assert metrics.value("abandoned_jobs_total", actor="long") == before + 1
    assert [e.job_id for e in heard if e.kind == "abandoned"] == [message.message_id]
    [proc] = store.worker_processes()
    assert not proc.alive and proc.running == 1
    time.sleep(1.6)  # let the job's thread end before the broker is closed


def test_a_failing_heartbeat_is_logged_once(
    broker: StubBroker, worker: dramatiq.Worker, store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_reliable.middleware.Watchdog")
    # Given the store down for several beats (every 0.1 s), then up again
    store.down = True
    time.sleep(0.5)
    store.down = False
    wait_until(lambda: any("works again" in r.getMessage() for r in caplog.records), timeout=10)
    # Then the outage was logged once
    failures = [r for r in caplog.records if "Heartbeat of" in r.getMessage() and "failed" in r.getMessage()]
    assert len(failures) == 1


def test_a_sweep_is_reported_as_logs_metrics_and_events(heard: list[events.Event]) -> None:
    before = metrics.value("abandoned_jobs_total", actor="charge")
    item = {
        "id": "j1",
        "actor": "charge",
        "queue": "q",
        "att": 2,
        "maxr": 3,
        "keys": {"order_id": "7"},
        "proc": "h:1:x",
    }
    _watcher.report_abandoned([item, {"id": "j2", "proc": "h:1:x"}, "junk"])
    assert metrics.value("abandoned_jobs_total", actor="charge") == before + 1
    event = heard[0]
    assert (event.kind, event.job_id, event.attempts, event.max_retries, event.keys) == (
        "abandoned",
        "j1",
        2,
        3,
        {"order_id": "7"},
    )
    assert event.error_type == "WorkerLost" and "h:1:x" in event.detail
    assert [e.job_id for e in heard] == ["j1", "j2"]


def test_a_delayed_message_is_stamped_when_it_becomes_ready(broker: StubBroker, worker: dramatiq.Worker) -> None:
    seen: list[dict[str, Any]] = []

    @dramatiq.actor(broker=broker)
    def later() -> None:
        job = dr.current_job()
        assert job is not None
        seen.append(dict(job.message.options))

    sent = time.time() * 1000
    later.send_with_options(delay=200)
    later.send()
    broker.join(later.queue_name)
    worker.join()
    stamped = [o for o in seen if READY_OPTION in o]
    assert len(seen) == 2 and len(stamped) == 1
    assert stamped[0][READY_OPTION] >= sent + 200


def test_the_watchdog_alone_still_reports_stuck_jobs(heard: list[events.Event]) -> None:
    # Given the Watchdog without JobState (no records)
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    store = dr.MemoryStore()
    broker.add_middleware(dr.Watchdog(store, **FAST), before=dramatiq.middleware.Retries)

    @dramatiq.actor(broker=broker, stuck_after=0.2)
    def slow() -> None:
        time.sleep(0.8)

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        message = slow.send()
        broker.join(slow.queue_name)
        worker.join()
        assert [e.job_id for e in heard if e.kind == "stuck"] == [message.message_id]
        assert store.get_job(message.message_id) is None
    finally:
        worker.stop()
        broker.close()


# -- RabbitMQ's consumer_timeout ----------------------------------------------------------------


def test_actors_that_may_outlive_rabbitmq_consumer_timeout_are_named_at_boot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = StubBroker()

    @dramatiq.actor(broker=broker, time_limit=3_600_000)
    def report() -> None: ...

    @dramatiq.actor(broker=broker, time_limit=60_000)
    def email() -> None: ...

    @dramatiq.actor(broker=broker)
    def defaulted() -> None: ...

    caplog.set_level(logging.WARNING, logger="dramatiq_reliable.middleware.Watchdog")
    _watcher.warn_consumer_timeout(broker, 600_000, 1800)
    assert [r.args[0] for r in caplog.records] == ["report"]
    assert "its time_limit is 1h" in caplog.records[0].getMessage()

    caplog.clear()
    _watcher.warn_consumer_timeout(broker, None, 1800)  # no TimeLimit: only explicit limits are bounded
    assert sorted(r.args[0] for r in caplog.records) == ["defaulted", "report"]


def test_a_job_running_close_to_rabbitmq_consumer_timeout_is_warned_about_once(
    broker: StubBroker, caplog: pytest.LogCaptureFixture
) -> None:
    wd = watchdog_of(broker)
    wd.rabbitmq, wd.consumer_timeout = True, 10.0
    watcher = _watcher.Watcher(wd, tick=60)
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    run = JobRun(MessageProxy(message))
    job = _watcher.RunningJob(run, ident=0, since=100.0, stuck_after=None)
    caplog.set_level(logging.WARNING, logger="dramatiq_reliable.middleware.Watchdog")

    watcher.check(job, now=108.0)  # 80 %: not yet
    assert not caplog.records
    watcher.check(job, now=109.5)
    watcher.check(job, now=115.0)
    [record] = caplog.records
    assert "consumer_timeout" in record.getMessage() and message.message_id in record.getMessage()
