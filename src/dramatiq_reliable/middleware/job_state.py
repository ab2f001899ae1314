"""JobState: one record per job, searchable by status, actor and business key."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name
from dramatiq.worker import ConsumerThread

from .. import _validate
from .._clock import from_ms, iso
from .._secrets import TextMask
from .._snapshot import DEFAULT_REDACT, Snapshotter, check_track
from ..actors.context import current_run
from ..backlog import READY_OPTION
from ..errors import ConfigurationError
from ..store.base import Store
from . import _log_mask
from ._run import JobRun
from .base import Outcome, ReliableMiddleware, retries_of

#: Seconds finished records (done, failed, skipped) are kept: 7 days.
DEFAULT_RETENTION = 7 * 86_400
#: Events kept per job.
DEFAULT_HISTORY = 50
#: Expired records removed per store call at most.
CLEANUP_LIMIT = 100
#: Option a message carries when its record (arguments, keys) was written when it was sent.
RECORDED_OPTION = "dr_recorded"


class JobState(ReliableMiddleware):
    """Records every job: status, attempts, timings, worker, last error, arguments, history.

    A job is a Dramatiq message; its id is the ``message_id``, the same across retries,
    redeliveries and replays. Its status moves ``queued`` → ``running`` → ``done``, or
    ``running`` → ``retrying`` → ``queued`` → … → ``failed`` when it is dead-lettered
    (see :class:`~dramatiq_reliable.Status`). The start of a job is written without delaying
    it; its end is written before its message is acked, in one store call shared with the
    other worker threads of the process.

    If the store is unreachable, jobs still run and are acked; their writes are buffered and
    applied when it answers again (see :mod:`dramatiq_reliable.store.journal`).

    Parameters:
      store(Store): where records are kept.
      retention(float): seconds finished records are kept. Defaults to 7 days.
      redact(tuple[str]): secret names (whole words of an argument's or key's name, any depth,
        any case: ``token`` hides ``auth_token`` and ``csrfToken``, ``pin`` not ``shipping``)
        whose values are not recorded. Defaults to :data:`DEFAULT_REDACT`. Their values, and
        URL credentials, are also masked in the job's error, traceback and history, in alerts,
        and in Dramatiq's own log lines about the job.
      max_args_bytes(int): the largest argument snapshot kept whole. Defaults to 4096.
      history(int): events kept per job. Defaults to 50.

    Actor options:
      track(tuple[str]): argument names recorded as searchable business keys.
      cancellable(str): how a cancel stops this actor's running jobs: ``"step"`` (the default:
        at the next ``dr.once`` step) or ``"interrupt"`` (an exception raised in its thread at
        once, as Dramatiq's ``TimeLimit`` does; the job must be safe to stop anywhere).

    Example::

        @dramatiq.actor(track=("order_id", "customer_id"))
        def send_invoice(order_id, customer_id): ...

        store.find_jobs(key=("order_id", "4711"))
    """

    def __init__(
        self,
        store: Store,
        *,
        retention: float = DEFAULT_RETENTION,
        redact: tuple[str, ...] = DEFAULT_REDACT,
        max_args_bytes: int = 4096,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        super().__init__(store)
        retention = _validate.seconds("retention", retention)
        history = _validate.count("history", history)
        self.retention = retention
        self.history = history
        self.snapshots = Snapshotter(redact, max_args_bytes)
        self._configured: Any = None
        self._enqueue = threading.local()
        self._actors: dict[str, tuple[Any, Any, tuple[str, ...] | None]] = {}
        self._broker: Broker | None = None

    @property
    def actor_options(self) -> set[str]:
        return {"track", "cancellable"}

    # -- declaration ----------------------------------------------------------------------------

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        super().before_declare_actor(broker, actor)
        if actor.options.get("cancellable", "step") not in ("step", "interrupt"):
            raise ConfigurationError(
                f"actor {actor.actor_name!r}: cancellable must be 'step' or 'interrupt', "
                f"not {actor.options['cancellable']!r}"
            )
        if "track" in actor.options:
            track = check_track(actor.actor_name, actor.fn, actor.options["track"])
            for name in track:
                if self.snapshots.secret(name):
                    raise ConfigurationError(
                        f"actor {actor.actor_name!r}: track names {name!r}, whose values are redacted; "
                        "business keys are recorded in clear, so track another argument"
                    )
            actor.options["track"] = track

    # -- enqueue --------------------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if self._not_a_send(message):
            return
        self._enqueue.current = (message.message_id, self._creation(broker, message))
        # Tell the workers the record's arguments and keys are written at send: they need not
        # snapshot them again (a write lost to a store outage leaves the record without them).
        message.options[RECORDED_OPTION] = 1

    def after_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        run = current_run()
        if run is not None and run.id == message.message_id and not run.finished:
            run.requeued_eta = message.options.get("eta")  # Retries re-enqueued it
            return
        if isinstance(threading.current_thread(), ConsumerThread):
            # A delayed message whose time has come was moved to its queue.
            op = {"k": "due", "id": message.message_id, "job": {"hist": self.history}}
            self._configure().submit(op, wait=False)
            return
        pending = getattr(self._enqueue, "current", None)
        fields = pending[1] if pending and pending[0] == message.message_id else self._creation(broker, message)
        self._enqueue.current = None
        eta = message.options.get("eta")
        if eta:
            fields["due_ms"] = eta
        fields["detail"] = f"enqueued, due at {iso(from_ms(eta))}" if eta else "enqueued"
        # Not waited for: nothing in send() needs the answer. The store's job reads in this
        # process apply it first (read-your-writes); a worker's start that lands before it is
        # merged with it (lua/10_jobs.lua).
        self._configure().submit({"k": "enqueue", "id": message.message_id, "job": fields}, wait=False)

    def _not_a_send(self, message: dramatiq.Message[Any]) -> bool:
        run = current_run()
        if run is not None and run.id == message.message_id and not run.finished:
            return True
        return isinstance(threading.current_thread(), ConsumerThread)

    # -- processing -----------------------------------------------------------------------------

    def on_start(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        journal = self._configure()
        msg = run.msg
        if RECORDED_OPTION in msg.options:
            fields = {"actor": run.actor, "queue": run.queue, "enq_ms": msg.message_timestamp}
            info = self._info(broker, run.actor)
            if info[2]:  # track=, for dr.current_job().keys
                run.keys = self.snapshots.keys(info[2], self.snapshots.bind(info[1], msg.args, msg.kwargs))
        else:
            fields = self._creation(broker, msg, run)
        fields["att"] = run.attempt
        fields["worker"] = run.worker
        run.stage(journal, "start", "job", fields)
        run.started = True

    def on_finish(self, broker: Broker, message: MessageProxy, run: JobRun, outcome: Outcome) -> None:
        journal = self._configure()
        status, err, detail = outcome
        if status == "skipped" and run.skip_recorded:
            return
        if status == "deferred" and run.quiet:
            return  # held again while its actor or queue is paused: its record already says so
        if status == "skipped" and run.dup:
            dup = run.dup
            detail = (
                "skipped: a redelivery of this completed job"
                if dup == run.id
                else f"skipped: duplicate of job {dup}, which completed its key"
            )
        fields = {} if run.started else self._creation(broker, run.msg, run)
        fields["outcome"] = status
        fields["att"] = run.attempt
        fields["detail"] = detail
        if err is not None:
            fields["err"] = err
        if run.dup is not None:
            fields["dup"] = run.dup
        if status == "retrying" and run.requeued_eta:
            fields["next_ms"] = run.requeued_eta
            fields["detail"] = f"{detail}; next attempt at {iso(from_ms(run.requeued_eta))}"
        if self.history != DEFAULT_HISTORY:
            fields["hist"] = self.history
        run.stage(journal, "finish", "job", fields)
        if status != "deferred":  # a put-back counts nothing in the charts
            run.stage(journal, "finish", "st", _stats_section(run, status))

    def after_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        self.journal.flush()

    # -- secrets in errors and logs -------------------------------------------------------------

    def before_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        super().before_worker_boot(broker, worker)
        self._broker = broker
        _log_mask.install(self)

    def after_process_message(
        self, broker: Broker, message: MessageProxy, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        super().after_process_message(broker, message, result=result, exception=exception)
        if exception is not None:  # the error is captured at ack/nack time, masked with these values
            self._broker = broker
            self.mask_for(message._message, JobRun.of(message))

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        super().after_skip_message(broker, message)
        if getattr(message, "failed", False):
            self._broker = broker
            self.mask_for(message._message, JobRun.of(message))

    def mask_for(self, message: Any, run: JobRun | None = None) -> TextMask:
        """What masks ``message``'s secret values in text; kept on ``run`` (computed on errors only)."""
        if run is not None and isinstance(run.mask, TextMask):
            return run.mask
        if run is not None and run.bound is not None:
            bound = run.bound
        else:
            fn = self.actor_fn(message.actor_name)
            bound = self.snapshots.bind(fn, message.args, message.kwargs) if fn else _raw(message)
        mask = self.snapshots.mask(bound)
        if run is not None:
            run.mask = mask
        return mask

    def actor_fn(self, actor_name: str) -> Any:
        """The function of an actor of the worker's broker, or ``None`` if unknown."""
        return self._info(self._broker, actor_name)[1] if self._broker is not None else None

    # -- helpers --------------------------------------------------------------------------------

    def _creation(self, broker: Broker, message: Any, run: JobRun | None = None) -> dict[str, Any]:
        """The fields a record is created from: actor, queue, max_retries, enqueue time, args, keys."""
        info = self._info(broker, message.actor_name)
        if run is not None and run.args is not None:
            args, keys = run.args, run.keys
        else:
            fn, track = info[1], info[2]
            bound = self.snapshots.bind(fn, message.args, message.kwargs) if fn else _raw(message)
            args = self.snapshots.snapshot(message.actor_name, bound)
            keys = self.snapshots.keys(track, bound) if track else {}
            if run is not None:
                run.bound, run.args, run.keys = bound, args, keys
        options = message.options
        max_retries = options["max_retries"] if "max_retries" in options else info[0]
        fields = {
            "actor": message.actor_name,
            "queue": q_name(message.queue_name),
            "enq_ms": message.message_timestamp,
            "args": args,
            "keys": keys,
        }
        if max_retries is not None:
            fields["maxr"] = max_retries
        if self.history != DEFAULT_HISTORY:
            fields["hist"] = self.history
        return fields

    def _info(self, broker: Broker, actor_name: str) -> tuple[Any, Any, tuple[str, ...] | None]:
        """``(default max_retries, fn, track)`` of an actor, computed once."""
        info = self._actors.get(actor_name)
        if info is not None:
            return info
        actor = broker.actors.get(actor_name)
        retries = retries_of(broker)
        default = retries.max_retries if retries else 0
        if actor is None:
            return (default, None, None)
        info = (actor.options.get("max_retries", default), actor.fn, actor.options.get("track"))
        self._actors[actor_name] = info
        return info

    def _configure(self) -> Any:
        """This process's journal, told this middleware's retention (once)."""
        journal = self.store.journal
        if journal is not self._configured:
            retention_ms = int(self.retention * 1000)
            keep_ms = retention_ms + 86_400_000
            cleanup = journal.header.setdefault("retention_ms", {})
            ttl = journal.header.setdefault("ttl_ms", {})
            for status in ("done", "skipped", "failed", "cancelled"):
                cleanup[status] = max(cleanup.get(status, 0), retention_ms)
                ttl[status] = max(ttl.get(status, 0), keep_ms)
            for status in ("queued", "running", "retrying", "stuck", "abandoned"):
                ttl[status] = max(ttl.get(status, 0), keep_ms, 30 * 86_400_000)
            journal.header["limit"] = CLEANUP_LIMIT
            self._configured = journal
        return journal


def _raw(message: Any) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    if message.args:
        bound["*args"] = list(message.args)
    bound.update(message.kwargs or {})
    return bound


def _stats_section(run: JobRun, outcome: str) -> dict[str, Any]:
    """The per-minute counters' part of the final write (``lua/70_stats.lua``)."""
    options = run.msg.options
    ready = options.get(READY_OPTION) or options.get("eta") or run.msg.message_timestamp
    return {"a": run.actor, "q": run.queue, "o": outcome, "wait_ms": max(0, run.started_ms - int(ready))}
