"""Alerts on a StubBroker and a MemoryStore: throttling, summaries, kinds, failure paths."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest

import dramatiq_reliable as dr
from dramatiq_reliable import events, metrics
from dramatiq_reliable.errors import StoreUnavailable
from tests.helpers import wait_until
from tests.unit.alerting import Bundle, Clock, Collector, bundle_of, install_clock, make_bundle

FAST = {"min_backoff": 10, "max_backoff": 20}


class SMTPError(Exception):
    pass


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return install_clock(monkeypatch)


@pytest.fixture
def bundle(request: pytest.FixtureRequest) -> Iterator[Bundle]:
    yield from make_bundle(**getattr(request, "param", {"window": 60}))


def smtp_actor(bundle: Bundle, **options: Any) -> Any:
    options.setdefault("max_retries", 0)

    @dramatiq.actor(broker=bundle.broker, track=("order_id",), **options)
    def send_invoice(order_id: int) -> None:
        raise SMTPError(f"SMTP server smtp.example.com refused order {order_id}\nmore lines")

    return send_invoice


def test_one_alert_for_many_failures_then_the_count(bundle: Bundle) -> None:
    # Given an actor whose SMTP server is down
    send = smtp_actor(bundle)
    bundle.start()
    suppressed = metrics.value("alerts_suppressed_total", kind="failed")

    # When 30 of its jobs fail within the window
    ids = [send.send(order_id=i).message_id for i in range(30)]
    bundle.settle()

    # Then one alert is sent, and the 29 others are counted as suppressed
    [alert] = bundle.collector.alerts
    assert metrics.value("alerts_suppressed_total", kind="failed") == suppressed + 29
    assert alert.kind == "failed" and alert.actor == "send_invoice" and alert.queue == "default"
    assert alert.error_type == "SMTPError"
    assert (
        alert.error_message.startswith("SMTP server smtp.example.com refused order") and "\n" not in alert.error_message
    )
    assert alert.job_id in ids and alert.count == 1 and alert.suppressed == 0
    assert alert.keys == {"order_id": str(ids.index(alert.job_id))}
    assert alert.recoverable is False and alert.attempt == 1 and alert.max_retries == 0
    text = alert.text
    assert "[failed] send_invoice: 1 job failed for good: SMTPError" in text
    assert alert.job_id in text and "Retries will not recover it" in text
    # And every job is recorded as failed, as without Alerts
    assert all(bundle.store.get_job(i).status == dr.Status.FAILED for i in ids)  # type: ignore[union-attr]


def test_summary_when_the_window_ends(clock: Clock) -> None:
    with bundle_of(window=10) as bundle:
        # Given 5 failures within a window: one alert
        send = smtp_actor(bundle)
        bundle.start()
        ids = [send.send(order_id=i).message_id for i in range(5)]
        bundle.settle()
        assert len(bundle.collector.alerts) == 1

        # When the window ends without another failure
        clock.advance(10)

        # Then one process's heartbeat sends a summary of the 4 suppressed ones
        _, summary = bundle.collector.wait(2)
        assert summary.summary and summary.count == 4 and summary.suppressed == 4
        assert summary.job_id in ids and summary.error_type == "SMTPError" and summary.keys
        assert summary.since is not None and summary.at is not None and summary.since <= summary.at
        assert "4 more jobs failed for good" in summary.text and "These were suppressed" in summary.text


def test_recovered_notice_after_a_quiet_window(clock: Clock) -> None:
    with bundle_of(window=10, notify_recovered=True) as bundle:
        send = smtp_actor(bundle)
        bundle.start()
        send.send(order_id=1)
        bundle.settle()
        clock.advance(10)
        _, recovered = bundle.collector.wait(2)
        assert recovered.recovered and recovered.recoverable is None
        assert recovered.title == "[recovered] send_invoice: no new failed (SMTPError) for 10s"


def test_each_error_type_and_actor_has_its_own_alert(bundle: Bundle) -> None:
    @dramatiq.actor(broker=bundle.broker, max_retries=0)
    def parse(kind: str) -> None:
        raise {"key": KeyError, "value": ValueError}[kind]("bad input")

    send = smtp_actor(bundle)
    bundle.start()
    for _ in range(3):
        parse.send("key")
        parse.send("value")
        send.send(order_id=1)
    bundle.settle()
    keys = sorted(a.key for a in bundle.collector.alerts)
    assert keys == [
        ("failed", "parse", "KeyError"),
        ("failed", "parse", "ValueError"),
        ("failed", "send_invoice", "SMTPError"),
    ]


def test_actor_alert_on_retrying_and_none(bundle: Bundle) -> None:
    # Given one actor alerting on retries only, one alerting on nothing
    send = smtp_actor(bundle, max_retries=1, alert_on=("retrying",), **FAST)

    @dramatiq.actor(broker=bundle.broker, max_retries=0, alert_on=())
    def quiet() -> None:
        raise RuntimeError("nobody is told")

    bundle.start()
    send.send(order_id=7)
    quiet.send()
    bundle.settle()

    # Then only the retried attempt is alerted, and it says retries may recover it
    [alert] = bundle.collector.alerts
    assert alert.kind == "retrying" and alert.recoverable is True and alert.attempt == 1
    assert "Retries may still recover it." in alert.text


def test_bad_alert_on_fails_at_declaration(bundle: Bundle) -> None:
    with pytest.raises(dr.ConfigurationError, match="unknown alert kind"):

        @dramatiq.actor(broker=bundle.broker, alert_on=("failed", "explode"))
        def typo() -> None: ...


def test_a_raising_notifier_is_counted_and_the_others_still_get_it() -> None:
    def broken(alert: dr.Alert) -> None:
        raise RuntimeError("pager down")

    collector = Collector()
    with bundle_of(window=60, notifiers=[broken, collector]) as bundle:
        send = smtp_actor(bundle)
        bundle.start()
        errors = metrics.value("notifier_errors_total", notifier="broken")
        message = send.send(order_id=1)
        bundle.settle()
        assert len(collector.alerts) == 1
        assert metrics.value("notifier_errors_total", notifier="broken") == errors + 1
        assert metrics.value("alerts_sent_total", kind="failed", notifier="collector") >= 1
        assert bundle.store.get_job(message.message_id).status == dr.Status.FAILED  # type: ignore[union-attr]


def test_a_hanging_notifier_never_delays_jobs_and_a_full_queue_drops(caplog) -> None:
    # Given a notifier that blocks until released, with room for 2 queued alerts
    release = threading.Event()
    got: list[dr.Alert] = []

    def hanging(alert: dr.Alert) -> None:
        release.wait(60)
        got.append(alert)

    with bundle_of(window=60, notifiers=[hanging], queue_size=2) as bundle:

        @dramatiq.actor(broker=bundle.broker, max_retries=0)
        def fail(i: int) -> None:
            raise type(f"Error{i}", (Exception,), {})(f"failure {i}")  # a new error type: never throttled

        bundle.start()
        dropped = metrics.value("alerts_dropped_total", notifier="hanging")

        # When 12 jobs fail, each worth an alert
        ids = [fail.send(i).message_id for i in range(12)]

        # Then every job finishes while the notifier is still blocked on the first alert
        bundle.join()
        assert not release.is_set() and got == []
        assert all(bundle.store.get_job(i).status == dr.Status.FAILED for i in ids)  # type: ignore[union-attr]

        # And the alerts that did not fit were dropped and counted, never waited for
        new_drops = metrics.value("alerts_dropped_total", notifier="hanging") - dropped
        assert new_drops >= 12 - 3
        # and the log said so, with how many, at once
        assert "Alert queue of notifier hanging is full (2); 1 alert(s) dropped since the last line" in caplog.text
        release.set()
        assert bundle.alerts.outbox.drain(10)
        assert len(got) + new_drops == 12


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


def test_store_outage_throttles_per_process_then_counts_what_happened(clock: Clock) -> None:
    store = FlakyStore()
    # (Idempotency would put jobs back while the store is down: let them run unchecked)
    with bundle_of(store, window=10, on_store_error="run") as bundle:
        send = smtp_actor(bundle)
        bundle.start()

        # Given the store is unreachable
        store.down = True
        ids = [send.send(order_id=i).message_id for i in range(3)]
        bundle.settle()

        # Then jobs still fail normally (dead-lettered), and one alert says it was throttled locally
        assert len(bundle.broker.dead_letters) == 3
        [alert] = bundle.collector.alerts
        assert alert.local and "throttled by one worker process only" in alert.text

        # When the store answers again long after (the buffered writes are replayed late)
        clock.advance(30)
        store.down = False

        # Then the records are written, and the occurrences are counted into a summary
        wait_until(lambda: all(store.get_job(i) is not None for i in ids), timeout=10, what="replayed records")
        _, summary = bundle.collector.wait(2)
        assert summary.summary and summary.suppressed == 3 and not summary.local


@pytest.mark.parametrize("bundle", [{"window": 5}], indirect=True)  # a heartbeat every 0.5 s
def test_events_are_throttled_through_the_store(bundle: Bundle) -> None:
    smtp_actor(bundle, alert_on=("failed", "stuck"))
    bundle.start()
    # When the Watchdog reports two stuck jobs of one actor
    for job in ("j1", "j2"):
        events.emit(dr.events.Event(kind="stuck", actor="send_invoice", job_id=job, detail="running for 10m"))
    # and an abandoned one of an actor that is not alerted on it
    events.emit(dr.events.Event(kind="abandoned", actor="send_invoice", job_id="j3"))
    # Then one alert is sent (at the next heartbeat)
    [alert] = bundle.collector.wait(1)
    wait_until(lambda: metrics.value("alerts_suppressed_total", kind="stuck") >= 1, timeout=10)
    assert bundle.alerts.outbox.drain(5)
    assert len(bundle.collector.alerts) == 1
    assert alert.kind == "stuck" and alert.job_id == "j1" and alert.recoverable is None
    assert "It is still running and may yet finish." in alert.text


def test_a_failure_event_about_a_job_already_alerted_is_not_repeated(bundle: Bundle) -> None:
    send = smtp_actor(bundle)
    bundle.start()
    message = send.send(order_id=1)
    bundle.settle()
    # When DeadLetters tells about the same dead-lettered job
    events.emit(dr.events.Event(kind="failed", actor="send_invoice", job_id=message.message_id, error_type="SMTPError"))
    # Then nothing more is sent (the event was dropped before reaching the store)
    assert bundle.alerts._events == [] and bundle.alerts._in_flight == []
    assert len(bundle.collector.alerts) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 0}, "window must be a positive number"),
        ({"window": -5}, "window must be a positive number"),
        ({"window": "300"}, "window must be a positive number"),
        ({"window": True}, "window must be a positive number"),
        ({"notifiers": [42]}, "a notifier must be callable"),
        ({"alert_on": ("failed", "bogus")}, "unknown alert kind"),
        ({"queue_size": 0}, "queue_size must be a positive integer"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(dr.ConfigurationError, match=message):
        dr.Alerts(dr.MemoryStore(), **options)


def test_install_passes_notifiers_and_window_to_alerts() -> None:
    from dramatiq.brokers.stub import StubBroker

    def notify(alert: dr.Alert) -> None: ...

    broker = StubBroker()
    added = dr.install(broker, dr.MemoryStore(), notifiers=[notify], window=42, alert_on=("failed",))
    alerts = next(m for m in added if isinstance(m, dr.Alerts))
    assert alerts.notifiers == [notify] and alerts.window == 42 and alerts.alert_on == {"failed"}
    names = [type(m).__name__ for m in broker.middleware]
    assert names.index("Idempotency") < names.index("JobState") < names.index("Alerts") < names.index("Retries")
    alerts.close()


def test_default_notifier_is_the_log() -> None:
    alerts = dr.Alerts(dr.MemoryStore())
    assert [type(n) for n in alerts.notifiers] == [dr.LogNotifier]
    alerts.close()


@pytest.mark.parametrize(
    ("kind", "count", "outlook"),
    [
        ("failed", 1, "Retries will not recover it: it is dead-lettered"),
        ("failed", 7, "Retries will not recover them: they are dead-lettered"),
        ("retrying", 2, "Retries may still recover them."),
        ("stuck", 1, "It is still running and may yet finish."),
        ("abandoned", 1, "The broker delivers it again, so a retry may still recover it."),
        ("backlog", 1, ""),
    ],
)
def test_alert_text_says_what_how_many_and_the_outlook(kind: str, count: int, outlook: str) -> None:
    alert = dr.Alert(
        kind=kind,
        actor="send_invoice",
        queue="mail",
        error_type="SMTPError",
        error_message="refused",
        job_id="job-9",
        count=count,
        suppressed=count - 1,
        keys={"order_id": "4711"},
        detail="dead-lettered after 4 attempts: SMTPError: refused",
        window=300,
    )
    text = alert.text
    assert text.splitlines()[0].startswith(f"[{kind}] send_invoice: {count} ")
    assert "Error: refused" in text and "Example job: job-9 (order_id=4711) on queue mail." in text
    assert "Dead-lettered after 4 attempts: SMTPError: refused." in text
    assert outlook in text
    assert ("suppressed since" in text) == (count > 1)
    assert alert.to_json()["text"] == text and alert.to_json()["window_seconds"] == 300
