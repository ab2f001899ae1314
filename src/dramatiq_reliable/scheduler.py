"""The cron scheduler: runs a broker's ``@dr.cron`` schedules; safe on several hosts at once.

Every scheduler computes the same fire times (APScheduler's ``CronTrigger``). At each tick it
**claims** ``(schedule, fire time)`` in the store; only the claimer enqueues, and the message's
id is derived from the claim (:meth:`Schedule.job_id`), so ``jobs show`` of that id is the
tick's job. After the enqueue the claimer **confirms** the tick. A claim still unconfirmed
after ``claim_lease`` (its scheduler died, or its broker failed) is taken over by any running
scheduler, which enqueues the same message id.

What that guarantees, with every scheduler sharing one store and the same options:

* a tick is enqueued once while its claimer lives; if the claimer dies between claim and
  enqueue, another scheduler enqueues it, ``claim_lease`` to ``claim_lease`` + one upkeep later;
* a tick is lost only if no scheduler can claim and enqueue it within ``misfire_grace``
  (store or broker down that long, or every scheduler down): it is then logged and counted
  in ``cron_ticks_missed_total``, never enqueued late;
* if a claimer dies *after* its enqueue but before its confirm (or stalls longer than
  ``claim_lease`` in between), the tick's message may be enqueued twice, with the same id;
  the Idempotency middleware (``dr.install``) then runs it once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq

from . import _validate, metrics
from ._clock import format_duration, now_ms
from ._ticks import keepalive, run_loop
from .actors.cron import FIRE_OPTION, SCHEDULE_OPTION, Schedule, registry_of
from .control import cron_paused
from .errors import ConfigurationError, DuplicateJob, StoreError
from .store.base import Store
from .store.memory import MemoryStore

logger = logging.getLogger("dramatiq_reliable.scheduler")

#: Seconds after its fire time a tick may still be enqueued.
DEFAULT_MISFIRE_GRACE = 60.0
#: Seconds a claim may stay unconfirmed before another scheduler takes the tick over.
DEFAULT_CLAIM_LEASE = 15.0
#: Milliseconds before a tick whose enqueue failed is tried again (by any scheduler).
RETRY_DELAY_MS = 2_000
#: Missed ticks counted at most when a scheduler starts after a long gap.
COUNT_LIMIT = 10_000


class Scheduler:
    """Runs the cron schedules of a broker. Run one per host; they share the work through the store.

    Parameters:
      broker(dramatiq.Broker): the app's broker; ticks are sent through it, with its middleware.
      store(Store): where ticks are claimed; the same store for every scheduler (and the app's,
        so that ``cron list`` finds the ticks' jobs).
      misfire_grace(float): seconds after its fire time a tick may still be enqueued: by a
        scheduler that starts (or recovers) late, or that takes over a dead one's claim. Older
        ticks are skipped, logged and counted. Defaults to 60.
      coalesce(bool): when several ticks of one schedule are due at once (a scheduler starting
        after every one was down, a process that stalled), enqueue only the latest. Defaults to True.
      claim_lease(float): seconds a claim may stay unconfirmed before another scheduler takes
        the tick over. Must be less than ``misfire_grace``. Defaults to 15.
      schedules(iterable[Schedule]): defaults to the schedules registered on ``broker``.
      clock(callable): the current time in milliseconds (tests pass their own).

    Raises:
      ConfigurationError: a bad option, or a schedule whose actor is not on ``broker``.

    Example::

        Scheduler(broker, store, misfire_grace=300).run()   # blocks until SIGTERM/SIGINT
    """

    def __init__(
        self,
        broker: dramatiq.Broker,
        store: Store,
        *,
        misfire_grace: float = DEFAULT_MISFIRE_GRACE,
        coalesce: bool = True,
        claim_lease: float = DEFAULT_CLAIM_LEASE,
        schedules: Iterable[Schedule] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        misfire_grace = _validate.seconds("misfire_grace", misfire_grace)
        claim_lease = _validate.seconds("claim_lease", claim_lease)
        if claim_lease >= misfire_grace:
            raise ConfigurationError(
                f"claim_lease ({claim_lease:g}s) must be less than misfire_grace ({misfire_grace:g}s): a tick whose "
                "scheduler died after claiming it is taken over only within its misfire grace"
            )
        self.broker = broker
        self.store = store
        self.misfire_grace = float(misfire_grace)
        self.coalesce = bool(coalesce)
        self.claim_lease = float(claim_lease)
        self.grace_ms = int(misfire_grace * 1000)
        self.lease_ms = int(claim_lease * 1000)
        self.clock = clock
        self.schedules = list(registry_of(broker) if schedules is None else schedules)
        self._by_name = {s.name: s for s in self.schedules}
        for s in self.schedules:
            if s.actor_name not in broker.actors:
                raise ConfigurationError(f"cron schedule {s.name!r}: actor {s.actor_name!r} is not on this broker")
        #: Identifies this scheduler in claims: ``host:pid:random``.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        #: Seconds between two upkeeps (retries, takeovers, broker keepalive).
        self.upkeep_interval = min(max(self.claim_lease / 4, 0.25), 5.0)
        self._unclaimed: set[tuple[str, int]] = set()
        self._unconfirmed: dict[tuple[str, int], str] = {}
        self._stop = threading.Event()

    # -- one tick ---------------------------------------------------------------------------------

    def _pinned(self, at: int | None = None) -> int | None:
        """The time a store call runs at: the store's own clock, unless a test's clock drives time."""
        if self.clock is now_ms:
            return None
        return self.clock() if at is None else at

    def fire_by_name(self, name: str, fire_ms: int) -> str:
        return self.fire(self._by_name[name], fire_ms)

    def fire(self, schedule: Schedule, fire_ms: int, *, by_hand: bool = False) -> str:
        """Enqueue the tick ``fire_ms`` of ``schedule``, unless another scheduler claimed it.

        A schedule paused with ``dramatiq-reliable cron pause`` is claimed and recorded as
        ``paused`` instead, unless fired ``by_hand`` (``cron run``).

        Returns:
          str: ``"enqueued"``; ``"taken"`` (claimed elsewhere); ``"missed"`` (later than
          ``misfire_grace``); ``"skipped"`` (a ``unique`` actor's previous job is pending);
          ``"paused"``; ``"deferred"`` (store unreachable: retried at each upkeep) or ``"failed"``
          (enqueue failed: retried by any scheduler after ``RETRY_DELAY_MS``).
        """
        now = self.clock()
        if now - fire_ms > self.grace_ms:
            logger.warning(
                "Schedule %r: tick %s missed by %s (misfire_grace %ss); not enqueued.",
                schedule.name,
                _when(schedule, fire_ms),
                format_duration((now - fire_ms) / 1000),
                _secs(self.misfire_grace),
            )
            metrics.inc("cron_ticks_missed_total", schedule=schedule.name)
            return "missed"
        job_id = schedule.job_id(fire_ms)
        try:
            outcome, holder = self.store.cron_claim(
                schedule.name,
                fire_ms,
                job_id,
                owner=self.owner,
                lease_ms=self.lease_ms,
                grace_ms=self.grace_ms,
                now=self._pinned(now),
            )
        except StoreError as exc:
            when = _when(schedule, fire_ms)
            logger.warning("Schedule %r: cannot claim tick %s (%s); retrying.", schedule.name, when, exc)
            metrics.inc("store_errors_total", op="cron_claim")
            self._unclaimed.add((schedule.name, fire_ms))
            return "deferred"
        if outcome != "claimed":
            logger.debug("Schedule %r: tick %s is %s's.", schedule.name, _when(schedule, fire_ms), holder)
            return "taken"
        if not by_hand and cron_paused(self.store, schedule.name):
            logger.info(
                "Schedule %r: tick %s not enqueued: the schedule is paused.", schedule.name, _when(schedule, fire_ms)
            )
            self._confirm(schedule.name, fire_ms, "paused")
            return "paused"
        return self._enqueue(schedule, fire_ms, job_id)

    def _enqueue(self, schedule: Schedule, fire_ms: int, job_id: str) -> str:
        when = _when(schedule, fire_ms)
        try:
            actor = self.broker.get_actor(schedule.actor_name)
            options = {SCHEDULE_OPTION: schedule.name, FIRE_OPTION: fire_ms}
            message = actor.message_with_options(args=schedule.args, kwargs=dict(schedule.kwargs), **options)
            self.broker.enqueue(message.copy(message_id=job_id))
        except DuplicateJob as exc:
            logger.info("Schedule %r: tick %s skipped: %s.", schedule.name, when, exc)
            self._confirm(schedule.name, fire_ms, "skipped")
            return "skipped"
        except Exception as exc:
            logger.error(
                "Schedule %r: tick %s (job %s) could not be enqueued (%s: %s); retrying in %d ms.",
                schedule.name,
                when,
                job_id,
                type(exc).__name__,
                exc,
                RETRY_DELAY_MS,
            )
            metrics.inc("cron_enqueue_errors_total", schedule=schedule.name)
            try:
                self.store.cron_release(
                    schedule.name, fire_ms, owner=self.owner, retry_ms=RETRY_DELAY_MS, now=self._pinned()
                )
            except StoreError:
                pass  # the claim lapses after claim_lease instead
            return "failed"
        self._confirm(schedule.name, fire_ms, "sent")
        logger.info("Schedule %r: tick %s enqueued as job %s.", schedule.name, when, job_id)
        metrics.inc("cron_ticks_total", schedule=schedule.name)
        return "enqueued"

    def _confirm(self, name: str, fire_ms: int, state: str) -> None:
        try:
            outcome, holder = self.store.cron_confirm(name, fire_ms, owner=self.owner, state=state, now=self._pinned())
        except StoreError as exc:
            logger.warning("Schedule %r: cannot confirm tick %d (%s); retrying.", name, fire_ms, exc)
            metrics.inc("store_errors_total", op="cron_confirm")
            self._unconfirmed[(name, fire_ms)] = state
            return
        self._unconfirmed.pop((name, fire_ms), None)
        if outcome == "late":
            logger.warning(
                "Schedule %r: tick %d was taken over by %s during this scheduler's enqueue; its job may be "
                "enqueued twice, with the same id.",
                name,
                fire_ms,
                holder,
            )

    # -- upkeep -----------------------------------------------------------------------------------

    def maintain(self) -> None:
        """Retry confirms and claims that met a store error, take over lapsed claims, keep the broker alive."""
        for (name, fire_ms), state in list(self._unconfirmed.items()):
            self._confirm(name, fire_ms, state)
        for name, fire_ms in sorted(self._unclaimed, key=lambda t: t[1]):
            self._unclaimed.discard((name, fire_ms))
            self.fire_by_name(name, fire_ms)
        try:
            names = list(self._by_name)
            ticks = self.store.cron_sweep(names, owner=self.owner, lease_ms=self.lease_ms, now=self._pinned())
        except StoreError as exc:
            logger.warning("Cannot look for lapsed claims: %s", exc)
            ticks = []
        for tick in ticks:
            self._took(tick)
        keepalive(self.broker)

    def _took(self, tick: dict[str, Any]) -> None:
        schedule = self._by_name.get(str(tick.get("name")))
        if schedule is None:
            return
        fire_ms, job_id, holder = int(tick["fire"]), str(tick["job"]), str(tick.get("by"))
        if tick.get("o") == "missed":
            logger.error(
                "Schedule %r: tick %s (job %s) was claimed by %s but not enqueued within misfire_grace; given up.",
                schedule.name,
                _when(schedule, fire_ms),
                job_id,
                holder,
            )
            metrics.inc("cron_ticks_missed_total", schedule=schedule.name)
            return
        if holder != self.owner:
            logger.warning(
                "Schedule %r: taking over tick %s (job %s) from %s, whose claim lapsed.",
                schedule.name,
                _when(schedule, fire_ms),
                job_id,
                holder,
            )
            metrics.inc("cron_takeovers_total", schedule=schedule.name)
        self._enqueue(schedule, fire_ms, job_id)

    # -- starting ---------------------------------------------------------------------------------

    def catch_up(self, *, now: int | None = None) -> list[tuple[Schedule, int]]:
        """The ticks missed since each schedule's last tick that are still within ``misfire_grace``.

        Ticks older than that are skipped, logged and counted; with ``coalesce`` only the
        latest of a schedule's missed ticks is returned. A schedule that never ticked has
        nothing to catch up.

        Raises:
          StoreUnavailable: the store cannot be reached.
        """
        at = self.clock() if now is None else now
        last = self.store.cron_last(list(self._by_name), now=self._pinned(at))
        due: list[tuple[Schedule, int]] = []
        for schedule in self.schedules:
            tick = last.get(schedule.name)
            if tick is None:
                continue
            last_ms = round(tick.fire_at.timestamp() * 1000)
            horizon = at - self.grace_ms
            if last_ms < horizon:
                old = len(schedule.fires_between(last_ms, horizon, limit=COUNT_LIMIT))
                if old:
                    logger.warning(
                        "Schedule %r: %s%d tick(s) since %s missed by more than misfire_grace (%ss); not enqueued.",
                        schedule.name,
                        "at least " if old >= COUNT_LIMIT else "",
                        old,
                        _when(schedule, last_ms),
                        _secs(self.misfire_grace),
                    )
                    metrics.inc("cron_ticks_missed_total", old, schedule=schedule.name)
            fires = schedule.fires_between(max(last_ms, horizon), at)
            if self.coalesce and len(fires) > 1:
                logger.info("Schedule %r: %d missed ticks coalesced into the latest.", schedule.name, len(fires))
                fires = fires[-1:]
            for fire_ms in fires:
                when = _when(schedule, fire_ms)
                logger.info("Schedule %r: tick %s was missed; due now (within misfire_grace).", schedule.name, when)
                due.append((schedule, fire_ms))
        return due

    # -- running ----------------------------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT, when called from the main thread).

        Stopping finishes the tick being enqueued, then returns; due ticks not yet claimed are
        left to the other schedulers (or to the next start, within ``misfire_grace``).

        Raises:
          ConfigurationError: no schedules, or APScheduler is not installed.
          StoreUnavailable: the store cannot be reached at start.
        """
        if not self.schedules:
            raise ConfigurationError("no cron schedules to run: declare them with @dr.cron")
        if isinstance(self.store, MemoryStore):
            logger.warning("The store is a MemoryStore: other scheduler processes do not see its claims.")
        cutoff = self.clock()
        due = self.catch_up(now=cutoff)
        logger.info(
            "Scheduler %s runs %d schedule(s) (%s); misfire_grace=%ss coalesce=%s claim_lease=%ss.",
            self.owner,
            len(self.schedules),
            ", ".join(s.name for s in self.schedules),
            _secs(self.misfire_grace),
            self.coalesce,
            _secs(self.claim_lease),
        )
        run_loop(self, cutoff, due, self._stop, handle_signals=handle_signals)
        logger.info("Scheduler %s stopped.", self.owner)

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread-safe; callable from a signal handler)."""
        self._stop.set()


def _when(schedule: Schedule, fire_ms: int) -> str:
    return schedule.local_time(fire_ms).isoformat()


def _secs(seconds: float) -> str:
    return f"{seconds:g}"


def run_now(broker: dramatiq.Broker, store: Store, name: str, *, now: int | None = None) -> tuple[str, str]:
    """Fire one tick of the schedule ``name`` now, by hand (``dramatiq-reliable cron run``).

    The tick is the current second's: it is claimed like any tick, so two runs in the same
    second, or a run and the scheduler's own tick of that second, enqueue one job. It fires
    even if the schedule is paused.

    Returns:
      tuple[str, str]: the outcome (as :meth:`Scheduler.fire`) and the tick's job id.

    Raises:
      NotFound: no schedule ``name`` on ``broker``.
    """
    from .errors import NotFound

    schedules = {s.name: s for s in registry_of(broker)}
    schedule = schedules.get(name)
    if schedule is None:
        known = ", ".join(sorted(schedules)) or "none"
        raise NotFound(f"no cron schedule {name!r} (known: {known})")
    scheduler = Scheduler(broker, store, schedules=[schedule])
    fire_ms = (now if now is not None else now_ms()) // 1000 * 1000
    return scheduler.fire(schedule, fire_ms, by_hand=True), schedule.job_id(fire_ms)
