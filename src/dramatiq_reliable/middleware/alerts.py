"""Alerts: one clear message per problem per window, fleet-wide."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name

from .. import _validate, events, metrics
from .._clock import from_ms, now_ms
from ..actors.context import current_run
from ..alert import Alert
from ..errors import ConfigurationError
from ..events import KINDS, Event
from ..notifiers import LogNotifier, Notifier
from ..store.base import Store
from . import _throttle
from ._heartbeat import heartbeat_for
from ._outbox import Outbox
from ._run import JobRun
from .base import Outcome, ReliableMiddleware, resolve, retries_of

#: The kinds alerted on by default (``retrying`` is opt-in).
DEFAULT_ALERT_ON = ("failed", "stuck", "abandoned", "backlog")
#: Seconds of the throttle window: 5 minutes.
DEFAULT_WINDOW = 300
#: Alerts each notifier's queue holds; beyond, they are dropped and counted.
DEFAULT_QUEUE_SIZE = 1000
#: Events waiting for the next heartbeat at most; beyond, they are dropped and counted.
MAX_PENDING_EVENTS = 1000
#: Summaries and recovered notices taken per heartbeat at most.
DUE_LIMIT = 100
#: Seconds a stopping worker waits for its queued alerts to be sent.
DRAIN_TIMEOUT = 2.0
#: Job ids remembered as alerted through their finish op (so an event about one is not repeated).
RECENT = 1024


def kinds_of(value: Any, where: str) -> frozenset[str]:
    """Validate an ``alert_on`` value: a tuple of kinds (empty or ``None``: none; a bare string is refused)."""
    if value is None:
        return frozenset()
    kinds = frozenset(_validate.names("alert_on", value, where=where, example="'failed'", of="alert kinds"))
    unknown = sorted(str(k) for k in kinds - set(KINDS))
    if unknown:
        raise ConfigurationError(f"{where}: unknown alert kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    return kinds


class Alerts(ReliableMiddleware):
    """Turns failures, stuck and abandoned jobs and backlogs into notifications, throttled fleet-wide.

    At most one notification per (kind, actor, error type) per ``window`` across every worker
    process and host: the decision is made in the store, in the same call that writes the
    job's final state. The next notification after a throttled stretch says how many were
    suppressed and since when; if none comes, one process sends a summary once the window
    ends. Each notification says which job type, how many, the error in plain words, one
    example job id, and whether retries may still recover it.

    Kinds: ``failed`` (dead-lettered, or failed without retries), ``retrying`` (an attempt
    failed and will be retried; opt-in), ``stuck``, ``abandoned`` (from the Watchdog's events)
    and ``backlog`` (from backlog events).

    Notifiers run on their own threads, one per notifier and process: a slow, failing or
    unreachable notifier never delays or breaks a job; its failures are logged and counted
    (``notifier_errors_total``), and a full queue drops alerts with a count
    (``alerts_dropped_total``). When the store cannot be reached, each process throttles on
    its own and says so in the alert.

    Parameters:
      store(Store): where throttles are kept (shared by the fleet).
      notifiers(list[Notifier]): callables taking an :class:`~dramatiq_reliable.Alert`
        (:class:`~dramatiq_reliable.LogNotifier`, :class:`~dramatiq_reliable.WebhookNotifier`,
        :class:`~dramatiq_reliable.SentryNotifier`, or any function). Defaults to
        ``[LogNotifier()]``.
      window(float): seconds; at most one notification per key per window. Defaults to 300.
      alert_on(tuple[str]): the kinds to alert on. Defaults to ``("failed", "stuck",
        "abandoned", "backlog")``.
      notify_recovered(bool): also send a "recovered" notice when a key has been quiet for a
        whole window. Defaults to False.
      queue_size(int): alerts each notifier's queue holds. Defaults to 1000.

    Actor options:
      alert_on(tuple[str]): this actor's kinds, instead of the middleware's (``()``: none).

    Raises:
      ConfigurationError: a bad window, kind, notifier or queue size.

    Example::

        dr.install(broker, store, window=600, notifiers=[dr.WebhookNotifier(SLACK_URL)])

        @dramatiq.actor(max_retries=3, alert_on=("failed", "retrying"))
        def charge(order_id): ...
    """

    def __init__(
        self,
        store: Store,
        *,
        notifiers: Iterable[Notifier] | None = None,
        window: float = DEFAULT_WINDOW,
        alert_on: Iterable[str] = DEFAULT_ALERT_ON,
        notify_recovered: bool = False,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        super().__init__(store)
        window = _validate.seconds("window", window, below=10 * 86_400)
        queue_size = _validate.count("queue_size", queue_size)
        notify_recovered = _validate.flag("notify_recovered", notify_recovered)
        chosen = [LogNotifier()] if notifiers is None else list(notifiers)
        for notifier in chosen:
            if not callable(notifier):
                raise ConfigurationError(f"a notifier must be callable (take an Alert), not {notifier!r}")
        self.window = float(window)
        self.window_ms = max(int(window * 1000), 1)
        self.alert_on = kinds_of(alert_on, "Alerts")
        self.notify_recovered = bool(notify_recovered)
        self.notifiers = chosen
        self.outbox = Outbox(chosen, queue_size)
        #: Seconds between two checks for due summaries (the heartbeat's interval for Alerts).
        self.interval = max(0.5, min(self.window / 10, 5.0))
        self._actor_kinds: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._events: list[Event] = []
        self._in_flight: list[tuple[Event, Alert]] = []
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._local = _throttle.LocalThrottle()
        self._unsubscribe = weakref.finalize(self, events.subscribe(_listener(weakref.ref(self))))

    def close(self) -> None:
        """Stop listening to events (the Watchdog's, DeadLetters')."""
        self._unsubscribe()

    def __repr__(self) -> str:
        return f"<Alerts store={self.store.url} window={self.window:g}s notifiers={self.notifiers!r}>"

    @property
    def actor_options(self) -> set[str]:
        return {"alert_on"}

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        if "alert_on" in actor.options:
            self._actor_kinds[actor.actor_name] = kinds_of(actor.options["alert_on"], f"actor {actor.actor_name!r}")

    def declare_metrics(self, broker: Broker) -> None:
        super().declare_metrics(broker)
        metrics.declare("alerts_dropped_total", notifier="*")
        for label in self.outbox.labels():
            metrics.declare("notifier_errors_total", notifier=label)
            metrics.declare("alerts_dropped_total", notifier=label)

    def kinds_for(self, actor_name: str) -> frozenset[str]:
        """The kinds alerted on for an actor (its ``alert_on`` option, else the middleware's)."""
        return self._actor_kinds.get(actor_name, self.alert_on)

    # -- jobs: decided in the finish op -----------------------------------------------------------

    def on_finish(self, broker: Broker, message: MessageProxy, run: JobRun, outcome: Outcome) -> None:
        status, err, detail = outcome
        if status not in ("failed", "retrying"):
            return
        self._remember(run.id)
        if status not in self.kinds_for(message.actor_name):
            return
        actor = broker.actors.get(message.actor_name)
        retries = retries_of(broker)
        alert = Alert(
            kind=status,
            actor=message.actor_name,
            queue=q_name(message.queue_name),
            error_type=err["type"] if err else "",
            error_message=_throttle.first_line(err.get("message", "")) if err else "",
            job_id=run.id,
            at=from_ms(now_ms()),
            keys=dict(run.keys or {}),
            attempt=run.attempt,
            max_retries=resolve(message, actor, "max_retries", retries.max_retries if retries else 0),
            detail=detail,
            window=self.window,
        )
        run.alert = alert
        run.stage(self.journal, "finish", "al", _throttle.section(alert, self.window_ms, self.notify_recovered))

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        self._deliver(message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._deliver(message)

    def _deliver(self, message: MessageProxy) -> None:
        run = JobRun.of(message, create=False)
        alert = run.alert if run is not None else None
        if run is not None:
            run.alert = None
        if run is None or alert is None:
            return
        result = run.results.get(self.journal) or {}
        decision = result.get("alert")
        if not isinstance(decision, dict):  # the store could not be reached: decide here
            self._send(alert, self._local.decide(alert, self.window_ms), local=True)
        else:
            self._send(alert, decision)

    def _send(self, alert: Alert, decision: dict[str, Any], *, local: bool = False) -> None:
        if decision.get("notify"):
            self.outbox.put(_throttle.decided(alert, decision, local=local))
        else:
            metrics.inc("alerts_suppressed_total", kind=alert.kind)

    def _remember(self, job_id: str) -> None:
        with self._lock:
            self._recent[job_id] = None
            if len(self._recent) > RECENT:
                self._recent.popitem(last=False)

    # -- events: stuck, abandoned, backlog (and failures seen elsewhere) ---------------------------

    def on_event(self, event: Event) -> None:
        """Queue an event for the next heartbeat, which asks the store whether to notify."""
        if event.kind not in KINDS or event.kind not in self.kinds_for(event.actor):
            return
        if event.kind in ("failed", "retrying") and event.job_id:
            run = current_run()
            with self._lock:
                if event.job_id in self._recent or (run is not None and run.id == event.job_id):
                    return  # decided in the job's own finish op
        with self._lock:
            if len(self._events) >= MAX_PENDING_EVENTS:
                metrics.inc("alerts_dropped_total", notifier="*")
                return
            self._events.append(event)
        heartbeat_for(self.store).add(self)

    # -- the heartbeat: events, summaries, recovered notices --------------------------------------

    def after_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        heartbeat_for(self.store).add(self)

    def after_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        if not self.outbox.drain(DRAIN_TIMEOUT):
            self.logger.warning("Some alerts were not sent before shutdown (a notifier is slow or hangs).")

    def beat_ops(self) -> list[dict[str, Any]]:
        with self._lock:
            pending, self._events = self._events, []
        self._in_flight = [(e, _throttle.from_event(e, self.window)) for e in pending]
        ops = [
            {"k": "alert", "id": e.job_id or "-", "al": _throttle.section(a, self.window_ms, self.notify_recovered)}
            for e, a in self._in_flight
        ]
        ops.append({"k": "alerts_due", "id": "-", "al": {"limit": DUE_LIMIT}})
        return ops

    def beat_results(self, results: list[dict[str, Any]] | None, error: BaseException | None) -> None:
        in_flight, self._in_flight = self._in_flight, []
        results = results or []
        for i, (_event, alert) in enumerate(in_flight):
            decision = results[i].get("alert") if i < len(results) else None
            if isinstance(decision, dict):
                self._send(alert, decision)
            else:
                self._send(alert, self._local.decide(alert, self.window_ms), local=True)
        due = results[len(in_flight)].get("due") if len(results) > len(in_flight) else None
        for entry in due if isinstance(due, list) else []:
            self.outbox.put(_throttle.from_due(entry))


def _listener(ref: weakref.ReferenceType[Alerts]) -> Callable[[Event], None]:
    """An event listener that does not keep its Alerts alive."""

    def listener(event: Event) -> None:
        alerts = ref()
        if alerts is not None:
            alerts.on_event(event)

    return listener
