"""Operator controls inside a worker process: paused actors and queues, cancelled jobs, retry now.

What operators decide is written to the store (``store/lua/80_control.lua``); each worker
process reads it in its heartbeat (one op in the heartbeat's batch: the paused set, and the
log of cancelled and retry-now job ids past the last one it saw) and keeps it in memory. So the
check of a delivery is a few set lookups, never a store call: a decision reaches every worker
within one heartbeat interval.

* A delivery of a **paused** actor or queue is put back with a delay (the same message: its
  attempts are not spent) and acked; its record gets one "held" event, not one per round.
* A delivery of a **cancelled** job is acked without running (an event says so).
* A **running** job that is cancelled is asked to stop: at its next ``dr.once`` step it raises
  :class:`~dramatiq_reliable.JobCancelled`; with the actor option ``cancellable="interrupt"``
  the exception is raised in its thread at once, as Dramatiq's ``TimeLimit`` does.
* **Retry now**: the process holding the job's delayed message moves it to its queue at once.

A delivery that starts in the window before its worker heard of a cancel is caught by its own
start write: the store keeps it ``cancelled`` and answers so, and the job is stopped as above.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import threading
import weakref
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import SkipMessage
from dramatiq.threading import raise_thread_exception

from .. import metrics
from .._clock import now_ms
from ..errors import JobCancelled
from ._heartbeat import heartbeat_for
from ._run import JobRun

if TYPE_CHECKING:
    from ..store.base import Store

logger = logging.getLogger("dramatiq_reliable.control")

#: Seconds between two reads of the controls when no Watchdog sets ``heartbeat_interval``.
DEFAULT_INTERVAL = 5.0
#: Option a held message carries: ``[since ms, times held]``.
HELD_OPTION = "dr_held"
#: Longest delay a held message is put back for (seconds).
MAX_HOLD = 30.0
#: Log entries read per heartbeat at most.
READ_MAX = 10_000
#: Cancelled ids remembered per process at most (the oldest are forgotten first).
MAX_CANCELLED = 200_000
#: The actor option that lets a cancel interrupt a running job.
CANCELLABLE_OPTION = "cancellable"


class Controls:
    """The controls of one store, as this process knows them. Get it with :func:`controls_for`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.interval = DEFAULT_INTERVAL
        self.seq = 0
        self.paused: dict[str, int] = {}
        self.paused_actors: frozenset[str] = frozenset()
        self.paused_queues: frozenset[str] = frozenset()
        #: job id -> log sequence of its cancel (insertion order: oldest first)
        self.cancelled: dict[str, int] = {}
        #: ids to retry now, not yet released
        self.now_ids: set[str] = set()
        #: job id -> (thread ident, run) of the jobs running in this process
        self.running: dict[str, tuple[int, JobRun]] = {}
        self.workers: list[dramatiq.Worker] = []
        self.broker: Broker | None = None
        self.loaded = False
        self._lock = threading.Lock()
        self._failed = False

    # -- boot -----------------------------------------------------------------------------------

    def boot(self, broker: Broker, worker: dramatiq.Worker | None, interval: float | None) -> None:
        """Read the controls before the first job (one store call) and beat from then on."""
        self.broker = broker
        if interval:
            self.interval = min(self.interval, interval) if self.loaded else interval
        if worker is not None and all(w is not worker for w in self.workers):
            self.workers.append(worker)
        if self.loaded:
            return
        self.loaded = True
        try:
            self.refresh()
        except Exception as exc:
            logger.warning("Could not read paused actors and cancelled jobs (%s); will try at each heartbeat.", exc)
        heartbeat_for(self.store).add(self)

    def refresh(self) -> None:
        """Read the controls now, without waiting for the heartbeat."""
        while self._read():
            pass

    def _read(self) -> bool:
        result = self.store.apply({"ops": [self._op()]})[0]
        if "error" in result:
            raise RuntimeError(result["error"])
        self._take(result)
        return bool(result.get("more"))

    def _op(self) -> dict[str, Any]:
        return {"k": "ctl_beat", "id": "-", "ctl": {"after": self.seq, "max": READ_MAX}}

    # -- the heartbeat --------------------------------------------------------------------------

    def beat_ops(self) -> list[dict[str, Any]]:
        return [self._op()]

    def beat_results(self, results: list[dict[str, Any]] | None, error: BaseException | None) -> None:
        result = (results or [{}])[0]
        if error is not None or "error" in result:
            if not self._failed:
                logger.warning("Could not read the controls: %s", error or result.get("error"))
            self._failed = True
            return
        self._failed = False
        self._take(result)

    def _take(self, result: dict[str, Any]) -> None:
        paused = result.get("paused") or {}
        since = (
            {str(t): int((v or {}).get("since") or 0) for t, v in paused.items()} if isinstance(paused, dict) else {}
        )
        if since != self.paused:
            self.paused_actors = frozenset(t[6:] for t in since if t.startswith("actor:"))
            self.paused_queues = frozenset(t[6:] for t in since if t.startswith("queue:"))
            self.paused = since
        log = result.get("log")
        fresh_cancel: list[str] = []
        fresh_now: list[str] = []
        for member in log if isinstance(log, list) else []:
            kind, _, job_id = str(member).partition(":")
            if kind == "c":
                self.cancelled[job_id] = self.seq
                fresh_cancel.append(job_id)
            elif kind == "n":
                fresh_now.append(job_id)
        self.seq = max(self.seq, int(result.get("seq") or 0))
        while len(self.cancelled) > MAX_CANCELLED:
            del self.cancelled[next(iter(self.cancelled))]
        for job_id in fresh_cancel:
            self.stop(job_id, "it was cancelled")
        if fresh_now:
            self.now_ids.update(fresh_now)
            self._release(set(fresh_now))

    # -- deliveries -----------------------------------------------------------------------------

    def check(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        """Before a delivery runs: skip it if cancelled, hold it if paused, else track it."""
        if run.id in self.cancelled:
            run.cancelled = "delivery skipped: the job was cancelled"
            logger.info("Message %r was cancelled; acked without running.", run.id)
            raise JobCancelled(f"job {run.id} was cancelled")
        if self.paused and (run.actor in self.paused_actors or run.queue in self.paused_queues):
            self._hold(broker, message, run)
        self.running[run.id] = (threading.get_ident(), run)

    def done(self, run: JobRun) -> None:
        with self._lock:
            self.running.pop(run.id, None)

    def _hold(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        target = f"actor {run.actor}" if run.actor in self.paused_actors else f"queue {run.queue}"
        held = message.options.get(HELD_OPTION)
        count, first = (int(held[1]), int(held[0])) if isinstance(held, list) and len(held) == 2 else (0, now_ms())
        delay = min(self.interval * 2 ** min(count, 4), MAX_HOLD) * random.uniform(1.0, 1.2)
        reason = f"{target} is paused"
        run.deferred = reason
        if count:
            run.quiet = True  # one "held" event per job, not one per round
        again = message._message.copy(options={HELD_OPTION: [first, count + 1]})
        try:
            broker.enqueue(again, delay=int(delay * 1000))
        except Exception as exc:
            logger.error("Message %r could not be held (%s); it runs although %s is paused.", run.id, exc, target)
            run.deferred = None
            run.quiet = False
            return
        metrics.inc("jobs_held_total", actor=run.actor)
        raise SkipMessage(reason)

    def delay_message(self, message: MessageProxy) -> None:
        """A consumer parks a delayed message: release it now if the job is to be retried now."""
        if self.now_ids and message.message_id in self.now_ids:
            message.options["eta"] = now_ms()
            self.now_ids.discard(message.message_id)

    # -- running jobs ---------------------------------------------------------------------------

    def stop(self, job_id: str, why: str) -> None:
        """Ask the job ``job_id``, if it runs in this process, to stop."""
        with self._lock:
            item = self.running.get(job_id)
            if item is None:
                return
            ident, run = item
            run.cancelled = f"stopped: {why}"
            interrupt = self._interruptible(run)
            if interrupt:
                logger.info("Interrupting message %r: %s.", job_id, why)
                raise_thread_exception(ident, JobCancelled)  # type: ignore[no-untyped-call]
            else:
                logger.info("Message %r will stop at its next dr.once step: %s.", job_id, why)

    def _interruptible(self, run: JobRun) -> bool:
        broker = self.broker
        actor = broker.actors.get(run.actor) if broker is not None else None
        return actor is not None and actor.options.get(CANCELLABLE_OPTION) == "interrupt"

    def _release(self, ids: set[str]) -> None:
        """Move the delayed messages of ``ids`` held by this process's consumers to run now."""
        from dramatiq.worker import _WorkQueueItem

        for worker in list(self.workers):
            for consumer in list(getattr(worker, "consumers", {}).values()):
                queue = getattr(consumer, "delay_queue", None)
                if queue is None:
                    continue
                with queue.mutex:
                    items = queue.queue
                    moved = False
                    for i, item in enumerate(items):
                        if item.message.message_id in ids:
                            item.message.options["eta"] = now_ms()
                            items[i] = _WorkQueueItem(0, item.message)
                            self.now_ids.discard(item.message.message_id)
                            moved = True
                    if moved:
                        heapq.heapify(items)


def stop_point() -> None:
    """Raise :class:`JobCancelled` if the current job was cancelled (``dr.once`` calls it)."""
    from ..actors.context import current_run

    run = current_run()
    if run is None:
        return
    why = run.cancelled
    if why is None:
        for slot in run.lingering.values():  # the start write's answer: cancelled before it began
            if slot.done and slot.result and slot.result.get("cancelled"):
                why = run.cancelled = "stopped: it was cancelled before it started"
    if why is not None:
        raise JobCancelled(f"job {run.id} {why}")


_controls: weakref.WeakKeyDictionary[Store, tuple[int, Controls]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def controls_for(store: Store) -> Controls:
    """This process's :class:`Controls` of ``store``."""
    with _lock:
        item = _controls.get(store)
        if item is None or item[0] != os.getpid():
            item = _controls[store] = (os.getpid(), Controls(store))
        return item[1]
