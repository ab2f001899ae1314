"""Watchdog: jobs whose worker died become ``abandoned``; jobs that hang become ``stuck``."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import TimeLimit
from dramatiq.worker import ConsumerThread

from .. import _validate
from .._backlog_rabbitmq import stamp_publish_time
from .._clock import check_skew, format_duration, now_ms
from .._identity import broker_identity, redis_url_locator
from ..backlog import READY_OPTION
from ..errors import ConfigurationError
from ..store.base import Store
from ._heartbeat import heartbeat_for
from ._recovery import RedisRecovery, put_back_prefetched
from ._run import JobRun
from ._watcher import RunningJob, Watcher, report_abandoned, warn_consumer_timeout
from .base import Outcome, ReliableMiddleware, resolve
from .job_state import JobState

#: Seconds past its ``time_limit`` a job is marked stuck when it has no ``stuck_after``:
#: TimeLimit should have interrupted it by then (it cannot interrupt C calls such as a read).
TIME_LIMIT_GRACE = 5.0
#: Milliseconds a dead process is remembered (for its messages to be put back, or if it returns).
DEAD_KEEP_MS = 3_600_000
#: Seconds: RabbitMQ's default ``consumer_timeout``.
DEFAULT_CONSUMER_TIMEOUT = 1800.0

_HOST = socket.gethostname()


class Watchdog(ReliableMiddleware):
    """Finds the jobs nobody will finish: abandoned by a dead worker, or stuck in a live one.

    * **Heartbeats**: every worker process writes one heartbeat per ``heartbeat_interval``
      for all its jobs (one store call, shared with Idempotency's lease renewal); which
      process runs which job rides in the jobs' own start and finish writes.
    * **Abandoned**: a process silent for ``abandon_after`` is dead; the fleet's sweep (one
      process at a time, every ``sweep_interval``) marks the jobs it ran ``abandoned``,
      releases their idempotency leases and, on a RedisBroker, puts its unacked messages back
      in their queues at once instead of after Dramatiq's random maintenance (minutes). When
      a job is delivered again it goes back to ``running`` with a "redelivered" event.
    * **Stuck**: a job running past its ``stuck_after`` while its worker is alive is marked
      ``stuck``, with the Python stack of its thread (``dramatiq-reliable jobs show ID``).
      It goes on to ``done`` or ``failed`` when it ends. Nothing is killed.

    Both emit an event (``stuck`` / ``abandoned``) for Alerts and count
    ``stuck_jobs_total`` / ``abandoned_jobs_total``.

    Parameters:
      store(Store): where heartbeats and records are kept.
      heartbeat_interval(float): seconds between two heartbeats of a worker process. Defaults to 5.
      abandon_after(float): seconds without a heartbeat after which a process counts as dead.
        Defaults to 30; at least twice ``heartbeat_interval``. A process frozen for longer
        (SIGSTOP, swapping) is taken for dead, and on Redis its messages are run again.
      sweep_interval(float): seconds between two sweeps of the fleet. Defaults to 5.
      stuck_after(float): seconds after which a running job is stuck, for actors without their
        own ``stuck_after``. Defaults to None: the actor's ``time_limit`` plus 5 seconds.
      consumer_timeout(float): the RabbitMQ server's ``consumer_timeout`` in seconds, for the
        warning about jobs that may outlive it. Defaults to 1800 (RabbitMQ's default).

    Actor options:
      stuck_after(float): seconds after which this actor's running jobs are stuck.

    Example::

        broker.add_middleware(dr.Watchdog(store, abandon_after=60, stuck_after=600))

        @dramatiq.actor(stuck_after=30)
        def charge(order_id): ...
    """

    def __init__(
        self,
        store: Store,
        *,
        heartbeat_interval: float = 5,
        abandon_after: float = 30,
        sweep_interval: float = 5,
        stuck_after: float | None = None,
        consumer_timeout: float = DEFAULT_CONSUMER_TIMEOUT,
    ) -> None:
        super().__init__(store)
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("abandon_after", abandon_after),
            ("sweep_interval", sweep_interval),
            ("consumer_timeout", consumer_timeout),
        ):
            _validate.seconds(name, value)
        if stuck_after is not None:
            _validate.seconds("stuck_after", stuck_after)
        if abandon_after < 2 * heartbeat_interval:
            raise ConfigurationError(
                f"abandon_after ({abandon_after}s) must be at least twice heartbeat_interval "
                f"({heartbeat_interval}s), or a live worker that misses one beat is taken for dead"
            )
        self.heartbeat_interval = heartbeat_interval
        self.abandon_after = abandon_after
        self.sweep_interval = sweep_interval
        self.stuck_after = stuck_after
        self.consumer_timeout = consumer_timeout
        #: Seconds between two beats of a process: the sweep rides in the heartbeat.
        self.interval = min(heartbeat_interval, sweep_interval)
        #: This process, as the fleet sees it: ``host:pid:token`` (set when the worker boots).
        self.proc_id: str | None = None
        self.history = 50
        self.rabbitmq = False
        self.recovery: RedisRecovery | None = None
        self._pid = 0
        self._info: dict[str, Any] = {}
        self._workers: list[dramatiq.Worker] = []
        self._watcher: Watcher | None = None
        self._time_limit: float | None = None
        self._boot_lock = threading.Lock()
        self._beat_failed = False
        #: The pid of the process whose beat registered it in the store (its starts then need not).
        self._registered = 0
        #: actor name -> its jobs' ``stuck_after`` when their message sets neither it nor a time limit.
        self._stuck: dict[str, float | None] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"stuck_after"}

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        if actor.options.get("stuck_after") is not None:
            _validate.seconds("stuck_after", actor.options["stuck_after"], where=f"actor {actor.actor_name!r}")

    # -- the process ----------------------------------------------------------------------------

    def after_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        self._boot(broker)
        self._workers.append(worker)
        self._info["threads"] = sum(getattr(w, "worker_threads", 0) for w in self._workers)
        # Tell the fleet at once which queues this process consumes (before its first job).
        self.journal.submit(self._beat(sweep=False), wait=False)
        if self.rabbitmq:
            warn_consumer_timeout(broker, self._time_limit, self.consumer_timeout)

    def after_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        if self.recovery is not None:
            put_back_prefetched(worker)
        self._workers = [w for w in self._workers if w is not worker]
        if not self._workers and self._pid == os.getpid():
            self._shutdown()

    def _boot(self, broker: Broker) -> str:
        with self._boot_lock:
            if self._pid == os.getpid() and self.proc_id is not None:
                return self.proc_id
            self._pid = os.getpid()
            self._workers = []
            self.proc_id = f"{_HOST}:{self._pid}:{secrets.token_hex(3)}"
            kind = type(broker).__name__
            self._info = {
                "host": _HOST,
                "pid": self._pid,
                "kind": {"RedisBroker": "redis", "RabbitmqBroker": "rabbitmq", "StubBroker": "stub"}.get(kind, kind),
            }
            self.rabbitmq = type(broker).__name__ == "RabbitmqBroker"
            self.recovery = None
            identity = self._identity(broker)
            if hasattr(broker, "broker_id") and hasattr(broker, "namespace") and hasattr(broker, "client"):
                self._info.update(bid=broker.broker_id, broker=identity, ns=broker.namespace)
                silence = max(2000, int(self.abandon_after * 500))
                self.recovery = RedisRecovery(broker, identity=identity, min_silence_ms=silence)
            elif self.rabbitmq:
                self._info.update(broker=identity)
            self._time_limit = next((m.time_limit for m in broker.middleware if isinstance(m, TimeLimit)), None)
            self._stuck = {}
            self.history = next((m.history for m in broker.middleware if isinstance(m, JobState)), 50)
            self._watcher = Watcher(self, tick=min(1.0, self.heartbeat_interval))
            self._watcher.start()
            heartbeat_for(self.store).add(self)
            self.logger.debug("Watchdog of worker process %s started.", self.proc_id)
            return self.proc_id

    def _identity(self, broker: Broker) -> str:
        """The broker server's identity; its address as given if the server does not answer."""
        try:
            return broker_identity(broker)
        except Exception as exc:
            fallback = redis_url_locator(broker) if hasattr(broker, "client") else type(broker).__name__
            self.logger.warning(
                "Could not read the broker's identity (%s); using %r: another fleet that names this "
                "broker by another address will not put back this process's messages.",
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                fallback,
            )
            return fallback

    def _shutdown(self) -> None:
        """The worker stopped: stop beating, and tell the fleet (abandoning jobs still running)."""
        with self._boot_lock:
            proc, watcher = self.proc_id, self._watcher
            self.proc_id, self._watcher, self._pid = None, None, 0
        if proc is None:
            return
        heartbeat_for(self.store).remove(self)
        if watcher is not None:
            watcher.stop()
        op = {"k": "bye", "id": "-", "wd": {"proc": proc, "hist": self.history}}
        slot = self.journal.submit(op, wait=True)
        result = slot.result or {}
        if slot.error is not None or "error" in result:
            self.logger.warning("Could not tell the store that %s stops: %s", proc, slot.error or result["error"])
        abandoned = result.get("abandoned")
        report_abandoned(abandoned if isinstance(abandoned, list) else [])

    # -- jobs -----------------------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        # A delayed message whose time has come is moved to its queue by a consumer thread:
        # stamp when it became ready, so that the backlog's age is not counted from its send.
        if delay is None and isinstance(threading.current_thread(), ConsumerThread):
            message.options[READY_OPTION] = now_ms()
        if hasattr(broker, "parameters"):  # RabbitMQ: the head's age, readable without taking it
            stamp_publish_time(broker)

    def process_id(self, broker: Broker) -> str:
        """This worker process's id in the fleet (``host:pid:random``), registering it if new."""
        proc = self.proc_id
        return self._boot(broker) if self._pid != os.getpid() or proc is None else proc

    def on_start(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        proc = self.process_id(broker)
        section: dict[str, Any] = {"proc": proc, "a": run.actor, "q": run.queue}
        if self._registered != os.getpid():  # until a beat registered the process, the start does
            section["abandon_ms"] = int(self.abandon_after * 1000)
        claim = run.claim  # Idempotency's lease, if it took one
        if claim is not None:
            section["lk"], section["lt"] = claim.key, claim.token
        run.stage(self.journal, "start", "wd", section)
        run.proc = proc
        watcher = self._watcher
        if watcher is not None:
            options = run.msg.options
            if "stuck_after" in options or "time_limit" in options:
                stuck_after = self.stuck_after_of(message, broker.actors.get(run.actor))
            else:  # the actor's, computed once
                stuck_after = self._stuck.get(run.actor, -1.0)
                if stuck_after == -1.0:
                    stuck_after = self._stuck[run.actor] = self.stuck_after_of(message, broker.actors.get(run.actor))
            watcher.track(RunningJob(run, threading.get_ident(), time.monotonic(), stuck_after))

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._untrack(message)
        super().after_process_message(broker, message, result=result, exception=exception)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._untrack(message)
        super().after_skip_message(broker, message)

    def on_finish(self, broker: Broker, message: MessageProxy, run: JobRun, outcome: Outcome) -> None:
        self._untrack(message)
        proc = run.proc
        if proc is not None:
            run.stage(self.journal, "finish", "wd", {"proc": proc})

    def _untrack(self, message: MessageProxy) -> None:
        run = JobRun.of(message, create=False)
        watcher = self._watcher
        if run is not None and watcher is not None:
            watcher.untrack(threading.get_ident(), run)

    def stuck_after_of(self, message: Any, actor: dramatiq.Actor[Any, Any] | None) -> float | None:
        """Seconds after which ``message``'s job is stuck: its ``stuck_after`` (message, actor),
        the Watchdog's, else its ``time_limit`` plus :data:`TIME_LIMIT_GRACE`; ``None``: never."""
        value = resolve(message, actor, "stuck_after", None)
        if value is None:
            value = self.stuck_after
        if value is not None:
            return float(value)
        limit = message.options.get("time_limit") or (actor.options.get("time_limit") if actor else None)
        limit = limit or self._time_limit
        return float(limit) / 1000 + TIME_LIMIT_GRACE if limit else None

    # -- the heartbeat --------------------------------------------------------------------------

    def beat_ops(self) -> list[dict[str, Any]]:
        if self._pid != os.getpid() or self.proc_id is None:
            return []
        return [self._beat(sweep=True)]

    def _beat(self, *, sweep: bool) -> dict[str, Any]:
        info = dict(self._info, queues=self._queues(), ab=int(self.abandon_after * 1000))
        section: dict[str, Any] = {
            "proc": self.proc_id,
            "abandon_ms": int(self.abandon_after * 1000),
            "info": info,
            "hist": self.history,
        }
        if sweep:
            section.update(sweep_ms=max(int(self.sweep_interval * 1000), 1), keep_ms=DEAD_KEEP_MS)
        return {"k": "beat", "id": "-", "wd": section}

    def _queues(self) -> list[str]:
        names: set[str] = set()
        for worker in list(self._workers):
            try:
                names.update(worker.consumers)
            except RuntimeError:  # a queue was declared meanwhile; take it next time
                pass
        return sorted(names)

    def beat_results(self, results: list[dict[str, Any]] | None, error: BaseException | None) -> None:
        if error is not None:
            if not self._beat_failed:
                self.logger.warning(
                    "Heartbeat of %s failed (%s); after %s without one, other processes take it for dead.",
                    self.proc_id,
                    error,
                    format_duration(self.abandon_after),
                )
            self._beat_failed = True
            return
        if self._beat_failed:
            self.logger.info("Heartbeat of %s works again.", self.proc_id)
            self._beat_failed = False
        self._registered = os.getpid()
        result = (results or [{}])[0]
        if isinstance(result.get("now_ms"), int):
            check_skew(result["now_ms"], where=self.store.url)
        if result.get("revived"):
            self.logger.warning(
                "Worker process %s had been taken for dead (no heartbeat for %s); %d job(s) back to running.%s",
                self.proc_id,
                format_duration(self.abandon_after),
                int(result.get("back") or 0),
                " Its unacked messages were already put back in their queues: they may run twice."
                if result.get("recovered")
                else "",
            )
        watcher = self._watcher
        if isinstance(result.get("sweep"), dict) and watcher is not None:
            watcher.post(result["sweep"])
