"""The base of the bundle's middlewares: one start op and one finish op per message.

Every middleware of the bundle stages its part of a message's transition on the shared
:class:`~._run.JobRun`; the broker's :class:`~._commit.Committer` writes it once every
middleware on that store has staged its part: the start without waiting, the end waiting, in
``before_ack``/``before_nack``, so a message is acked only once its final state is written (or
buffered, if the store is down).

Deciding the outcome in ``before_ack``/``before_nack`` rather than ``after_process_message``
means the bundle sees Retries' verdict wherever it sits in the middleware list.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Retries

from .. import metrics, sentry
from .._clock import now_ms
from ..actors.context import set_current
from ..store._buffer import RANKS
from ._commit import committer_for
from ._control import Controls, controls_for
from ._run import JobRun

if TYPE_CHECKING:
    from ..store.base import Store
    from ..store.journal import Journal

Outcome = tuple[str, "dict[str, str] | None", str]


class ReliableMiddleware(dramatiq.Middleware):
    """Shared hook plumbing. Subclasses implement ``on_start`` and ``on_finish``."""

    store: Store

    def __init__(self, store: Store) -> None:
        from ..store.base import Store as _Store

        if not isinstance(store, _Store):
            raise TypeError(f"{type(self).__name__} needs a store (dr.RedisStore or dr.MemoryStore), not {store!r}")
        self.store = store
        self.logger = logging.getLogger(f"dramatiq_reliable.middleware.{type(self).__name__}")
        self._controls: tuple[int, Controls | None] = (0, None)
        #: (the broker's middleware list, its size, whether this one closes a phase): asked on every hook.
        self._last: tuple[Any, int, bool] = (None, -1, False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} store={self.store.url}>"

    @property
    def journal(self) -> Journal:
        """This process's journal for the store."""
        return self.store.journal

    # -- ordering -------------------------------------------------------------------------------

    def is_last(self, broker: Broker) -> bool:
        """True if this middleware's hooks complete a phase for its store (see :mod:`._commit`).

        Remembered until the broker's middleware list changes (asked several times per job).
        """
        middleware = broker.middleware
        known, size, last = self._last
        if known is not middleware or size != len(middleware):
            last = committer_for(broker).closes(self)
            self._last = (middleware, len(middleware), last)
        return last

    # -- hooks ----------------------------------------------------------------------------------

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        check_once(broker)

    def after_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        metrics.declare_actor(actor.actor_name, actor.queue_name)

    def before_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        check_once(broker)
        self.declare_metrics(broker)
        if self.is_last(broker):
            check_server(self.store, self.logger)
            # Read paused actors and cancelled jobs before the first job.
            self.controls(broker, worker)

    def controls(self, broker: Broker, worker: dramatiq.Worker | None = None) -> Controls:
        """This process's operator controls (paused, cancelled), read from the store once at boot."""
        pid, controls = self._controls
        if controls is None or pid != os.getpid() or worker is not None:
            controls = controls_for(self.store)
            # The Watchdog's beat interval, so that both ride in one store call per beat.
            beat = [getattr(m, "interval", None) for m in broker.middleware if hasattr(m, "heartbeat_interval")]
            controls.boot(broker, worker, next((b for b in beat if b), None))
            self._controls = (os.getpid(), controls)
        return controls

    def declare_metrics(self, broker: Broker) -> None:
        """Make the counters this middleware increments exist at 0, before the first job.

        For the label sets the process knows (its actors and queues; subclasses add theirs),
        so that an alert on ``increase()`` fires on the first event, not the second.
        """
        for actor in list(broker.actors.values()):
            metrics.declare_actor(actor.actor_name, actor.queue_name)
        metrics.declare("store_writes_buffered_total")
        metrics.declare("store_writes_collapsed_total")
        metrics.declare("store_replica_wait_timeouts_total")
        for rank in RANKS:
            metrics.declare("store_writes_dropped_total", rank=rank)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        run = JobRun.of(message)
        assert run is not None
        if not run.began:  # the first of the bundle: paused? cancelled? (in memory, no store call)
            run.began = True
            self.controls(broker).check(broker, message, run)
            set_current(run)
        last = self.is_last(broker)
        if last:  # after the others' on_start (JobState's computes the business keys)
            sentry.tag_job(run)
        self.on_start(broker, message, run)
        if last:
            committer_for(broker).started(self, run)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        run = JobRun.of(message)
        assert run is not None
        if self.is_last(broker):
            self.controls(broker).done(run)
        if exception is None:
            return
        if run.throws is None:
            actor = broker.actors.get(run.actor)
            throws = run.msg.options.get("throws") or (actor.options.get("throws") if actor else None)
            run.throws = bool(throws) and isinstance(exception, throws)  # type: ignore[arg-type]

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        run = JobRun.of(message)
        assert run is not None
        run.skipped = True
        if self.is_last(broker):
            self.controls(broker).done(run)

    def before_delay_message(self, broker: Broker, message: MessageProxy) -> None:
        if self.is_last(broker):
            self.controls(broker).delay_message(message)

    def before_ack(self, broker: Broker, message: MessageProxy) -> None:
        self._finish(broker, message, nacked=False)

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._finish(broker, message, nacked=True)

    def _finish(self, broker: Broker, message: MessageProxy, *, nacked: bool) -> None:
        run = JobRun.of(message, create=False)
        if run is None:
            msg = message._message
            if "eta" in msg.options or msg.queue_name.endswith(".DQ"):
                return  # a delayed message moved to its queue: not the end of anything
            run = JobRun.of(message)  # dead-lettered before any hook of ours saw it start
            assert run is not None
        outcome = run.decide(nacked)
        try:
            self.on_finish(broker, message, run, outcome)
        except Exception:
            # A before_ack hook must never raise: Dramatiq would then neither ack nor nack.
            self.logger.exception("Could not record the end of message %r.", message.message_id)
        finally:
            if self.is_last(broker):
                try:
                    committer_for(broker).finished(self, run)
                finally:
                    run.finished = True
                    set_current(None)
                    self._observe(message, run, outcome[0])

    def _observe(self, message: MessageProxy, run: JobRun, outcome: str) -> None:
        if outcome == "deferred":
            return
        ran = (now_ms() - run.started_ms) / 1000 if run.began else None
        waited = (run.started_ms - run.msg.message_timestamp) / 1000 if run.began and run.attempt == 1 else None
        metrics.observe_job(run.actor, run.queue, outcome, ran, waited)

    # -- for subclasses -------------------------------------------------------------------------

    def on_start(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        """Stage this middleware's part of the start of ``message`` (``before_process_message``)."""

    def on_finish(self, broker: Broker, message: MessageProxy, run: JobRun, outcome: Outcome) -> None:
        """Stage this middleware's part of the end of ``message`` (``before_ack``/``before_nack``)."""


def check_server(store: Store, logger: logging.Logger) -> None:
    """Say once, at a worker's boot, what is wrong with the store's server (never raises)."""
    from ..errors import StoreUnavailable

    try:
        for warning in store.check_server():
            logger.warning("%s.", warning)
    except StoreUnavailable as exc:
        logger.error("%s.", exc)
    except Exception as exc:
        logger.debug("Could not check the store's server: %s", exc)


def check_once(broker: Broker) -> None:
    """Refuse a broker with two middlewares of the same class of the bundle.

    Dramatiq only warns about it; the bundle's hooks would run twice for every job.

    Raises:
      ConfigurationError: with the class named.
    """
    seen: set[type] = set()
    for m in broker.middleware:
        if isinstance(m, ReliableMiddleware):
            if type(m) in seen:
                from ..errors import ConfigurationError

                raise ConfigurationError(f"{type(m).__name__} was added to this broker twice; add each middleware once")
            seen.add(type(m))


def retries_of(broker: Broker) -> Retries | None:
    """The broker's Retries middleware, if it has one."""
    for m in broker.middleware:
        if isinstance(m, Retries):
            return m
    return None


def resolve(message: MessageProxy | dramatiq.Message[Any], actor: Any, name: str, default: Any) -> Any:
    """An option's value: the message's, else the actor's, else ``default`` (``None``-aware)."""
    options = message.options
    if name in options:
        return options[name]
    if actor is not None and name in actor.options:
        return actor.options[name]
    return default
