"""The Watchdog's machinery in one worker process: a thread that never dies on an error.

It owns the table of the jobs this process runs (thread, start, ``stuck_after``), and on
every tick:

* marks the jobs past their ``stuck_after`` ``stuck``, with the stack of their thread;
* warns once about a job that may outlive RabbitMQ's ``consumer_timeout``;
* handles what the fleet's sweep found when this process swept: logs, metrics and events for
  abandoned jobs, and the recovery of dead processes' unacked Redis messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import events, metrics
from .._clock import format_duration
from ..store.ops import compact
from ._recovery import Pending
from ._stack import thread_stack, where

if TYPE_CHECKING:
    from ._run import JobRun
    from .watchdog import Watchdog

logger = logging.getLogger("dramatiq_reliable.middleware.Watchdog")

#: Seconds before trying again to mark a job stuck when the store could not be reached.
STUCK_RETRY = 5.0
#: Part of RabbitMQ's ``consumer_timeout`` a job may run before it is warned about.
CONSUMER_TIMEOUT_WARN = 0.9


class RunningJob:
    """A job running in this process, as the stuck check sees it."""

    __slots__ = ("ident", "marked", "next_try", "run", "since", "stuck_after", "warned")

    def __init__(self, run: JobRun, ident: int, since: float, stuck_after: float | None) -> None:
        self.run = run
        #: The ident of the worker thread running it.
        self.ident = ident
        #: ``time.monotonic()`` when it started.
        self.since = since
        self.stuck_after = stuck_after
        self.marked = False
        self.warned = False
        self.next_try = 0.0


def _as_list(value: Any) -> list[Any]:
    """A JSON array from the store (Lua's cjson turns an empty one into ``{}``)."""
    return value if isinstance(value, list) else []


class Watcher(threading.Thread):
    """Runs the Watchdog's checks every ``tick`` seconds, until :meth:`stop`."""

    def __init__(self, watchdog: Watchdog, *, tick: float) -> None:
        super().__init__(name="dramatiq-reliable-watchdog", daemon=True)
        self.watchdog = watchdog
        self.tick = tick
        self._jobs: dict[int, RunningJob] = {}
        self._lock = threading.Lock()
        self._inbox: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()

    # -- what the hooks call --------------------------------------------------------------------

    def track(self, job: RunningJob) -> None:
        with self._lock:
            self._jobs[job.ident] = job

    def untrack(self, ident: int, run: JobRun) -> None:
        job = self._jobs.get(ident)
        if job is None or job.run is not run:  # untracked already (each job ends through two hooks)
            return
        with self._lock:
            job = self._jobs.get(ident)
            if job is not None and job.run is run:
                del self._jobs[ident]

    def running(self) -> list[RunningJob]:
        with self._lock:
            return list(self._jobs.values())

    def post(self, sweep: dict[str, Any]) -> None:
        """Hand over the result of a sweep this process ran (from the heartbeat thread)."""
        self._inbox.append(sweep)
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.tick)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.step(time.monotonic())
            except Exception:
                logger.exception("Unexpected error in the watchdog; it goes on.")
                time.sleep(1.0)

    def step(self, now: float) -> None:
        """One round: stuck checks, then the sweep results waiting."""
        for job in self.running():
            try:
                self.check(job, now)
            except Exception:
                logger.exception("Could not check message %r for being stuck.", job.run.id)
        while self._inbox:
            sweep = self._inbox.popleft()
            try:
                self.handle_sweep(sweep)
            except Exception:
                logger.exception("Could not handle the results of a sweep.")

    # -- stuck ----------------------------------------------------------------------------------

    def check(self, job: RunningJob, now: float) -> None:
        wd = self.watchdog
        age = now - job.since
        if wd.rabbitmq and not job.warned and age >= wd.consumer_timeout * CONSUMER_TIMEOUT_WARN:
            job.warned = True
            logger.warning(
                "Message %r has run for %s; RabbitMQ's consumer_timeout (%s) will close its channel and "
                "deliver it again, so it would run twice. Give the actor a time_limit below it, or raise "
                "consumer_timeout on the server.",
                job.run.id,
                format_duration(age),
                format_duration(wd.consumer_timeout),
            )
        if job.marked or job.stuck_after is None or age < job.stuck_after or now < job.next_try:
            return
        stack = thread_stack(job.ident)
        with self._lock:
            if self._jobs.get(job.ident) is not job:
                return  # it finished meanwhile; the stack is another job's
        detail = (
            f"stuck: running for {format_duration(age)}, past its stuck_after of "
            f"{format_duration(job.stuck_after)}; now at {where(stack)}"
        )
        section = {"proc": wd.proc_id, "att": job.run.attempt, "stack": stack, "detail": detail, "hist": wd.history}
        slot = wd.journal.submit({"k": "stuck", "id": job.run.id, "wd": compact(section)}, wait=True, retry=False)
        result = slot.result or {}
        if slot.error is not None or "error" in result:
            job.next_try = now + STUCK_RETRY
            logger.warning(
                "Could not mark message %r stuck (%s); trying again.", job.run.id, slot.error or result["error"]
            )
            return
        job.marked = True
        if not (result.get("marked") or result.get("norec")):
            return  # the record says it is no longer running here
        message = job.run.message
        logger.warning("Message %r (%s) is %s", job.run.id, message.actor_name, detail)
        metrics.inc("stuck_jobs_total", actor=message.actor_name)
        events.emit(
            events.Event(
                kind="stuck",
                actor=message.actor_name,
                queue=message.queue_name,
                job_id=job.run.id,
                error_type="Stuck",
                error_message=f"running for {format_duration(age)} (stuck_after {format_duration(job.stuck_after)})",
                attempts=job.run.attempt,
                keys=dict(job.run.keys or {}),
                detail=detail,
                extra={"stack": stack, "worker": job.run.worker, "running_for": age},
            )
        )

    # -- the sweep ------------------------------------------------------------------------------

    def handle_sweep(self, sweep: dict[str, Any]) -> None:
        dead = _as_list(sweep.get("dead"))
        if dead:
            logger.warning("Worker process(es) %s stopped heartbeating; taken for dead.", ", ".join(map(str, dead)))
        report_abandoned(_as_list(sweep.get("abandoned")))
        pending = [Pending.from_result(p) for p in _as_list(sweep.get("pending")) if isinstance(p, dict)]
        recovery = self.watchdog.recovery
        if pending and recovery is not None:
            done = recovery.recover(pending, {str(b) for b in _as_list(sweep.get("bids"))})
            if done:
                self.watchdog.journal.submit({"k": "recovered", "id": "-", "wd": {"procs": done}}, wait=False)


def report_abandoned(items: list[Any]) -> None:
    """Log, count and emit an event for each job the store marked abandoned."""
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            continue
        actor = str(item.get("actor") or "?")
        proc = str(item.get("proc") or "?")
        keys = item.get("keys")
        logger.warning(
            "Message %r (%s) abandoned: its worker %s is gone; the broker will deliver it again.",
            item["id"],
            actor,
            proc,
        )
        metrics.inc("abandoned_jobs_total", actor=actor)
        events.emit(
            events.Event(
                kind="abandoned",
                actor=actor,
                queue=str(item.get("queue") or ""),
                job_id=str(item["id"]),
                error_type="WorkerLost",
                error_message=f"its worker {proc} stopped while running it",
                attempts=int(item.get("att") or 0),
                max_retries=item.get("maxr"),
                keys={str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {},
                detail=f"abandoned: its worker {proc} is gone; the broker will deliver it again",
                extra={"worker": item.get("worker") or proc},
            )
        )


def warn_consumer_timeout(broker: Any, time_limit: float | None, consumer_timeout: float) -> None:
    """Warn about each actor whose jobs may run longer than RabbitMQ's ``consumer_timeout``.

    Parameters:
      broker(Broker): the worker's RabbitmqBroker.
      time_limit(float): TimeLimit's default, in milliseconds (``None`` without TimeLimit).
      consumer_timeout(float): the server's ``consumer_timeout``, in seconds.
    """
    for actor in list(broker.actors.values()):
        limit = actor.options.get("time_limit") or time_limit
        if limit is None:
            why = "it has no time_limit (no TimeLimit middleware)"
        elif limit / 1000 > consumer_timeout:
            why = f"its time_limit is {format_duration(limit / 1000)}"
        else:
            continue
        logger.warning(
            "Actor %r may run longer than RabbitMQ's consumer_timeout (%s): %s. The server would then "
            "close the channel and deliver the message again, so it would run twice. Lower its "
            "time_limit, or raise consumer_timeout on the server (and pass it as Watchdog(consumer_timeout=)).",
            actor.actor_name,
            format_duration(consumer_timeout),
            why,
        )
