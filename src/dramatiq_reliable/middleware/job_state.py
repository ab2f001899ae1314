"""JobState: one record per job, searchable by status, actor and business key."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name
from dramatiq.worker import ConsumerThread

from .._clock import from_ms, iso
from .._snapshot import DEFAULT_REDACT, Snapshotter, check_track
from ..actors.context import current_run
from ..errors import ConfigurationError
from ..store.base import Store
from ..store.ops import compact
from ._run import JobRun
from .base import Outcome, ReliableMiddleware, resolve, retries_of

#: Seconds finished records (done, failed, skipped) are kept: 7 days.
DEFAULT_RETENTION = 7 * 86_400
#: Events kept per job.
DEFAULT_HISTORY = 50
#: Expired records removed per store call at most.
CLEANUP_LIMIT = 100


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
      redact(tuple[str]): argument names (substrings, any depth) whose values are not recorded.
      max_args_bytes(int): the largest argument snapshot kept whole. Defaults to 4096.
      history(int): events kept per job. Defaults to 50.

    Actor options:
      track(tuple[str]): argument names recorded as searchable business keys.

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
        if not isinstance(retention, (int, float)) or retention <= 0:
            raise ConfigurationError(f"retention must be a positive number of seconds, not {retention!r}")
        if not isinstance(history, int) or history < 1:
            raise ConfigurationError(f"history must be a positive integer, not {history!r}")
        self.retention = retention
        self.history = history
        self.snapshots = Snapshotter(redact, max_args_bytes)
        self._configured: set[int] = set()
        self._enqueue = threading.local()

    @property
    def actor_options(self) -> set[str]:
        return {"track"}

    # -- declaration ----------------------------------------------------------------------------

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        if "track" in actor.options:
            actor.options["track"] = check_track(actor.actor_name, actor.fn, actor.options["track"])

    # -- enqueue --------------------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if self._not_a_send(message):
            return
        self._enqueue.current = (message.message_id, self._creation(broker, message))

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
        fields["due"] = eta
        fields["detail"] = f"enqueued, due at {iso(from_ms(eta))}" if eta else "enqueued"
        self._configure().submit({"k": "enqueue", "id": message.message_id, "job": compact(fields)}, wait=True)

    def _not_a_send(self, message: dramatiq.Message[Any]) -> bool:
        run = current_run()
        if run is not None and run.id == message.message_id and not run.finished:
            return True
        return isinstance(threading.current_thread(), ConsumerThread)

    # -- processing -----------------------------------------------------------------------------

    def on_start(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        self._configure()
        fields = self._creation(broker, message, run)
        fields["att"] = run.attempt
        fields["worker"] = run.worker
        run.stage(self.journal, "start", "job", compact(fields))
        run.started = True

    def on_finish(self, broker: Broker, message: MessageProxy, run: JobRun, outcome: Outcome) -> None:
        journal = self._configure()
        status, err, detail = outcome
        if status == "deferred" or (status == "skipped" and run.skip_recorded):
            return
        if status == "skipped" and run.data.get("dup"):
            detail = f"skipped: duplicate of job {run.data['dup']}"
        fields = {} if run.started else self._creation(broker, message, run)
        fields.update(
            outcome=status,
            att=run.attempt,
            err=err,
            detail=detail,
            next=run.requeued_eta if status == "retrying" else None,
            dup=run.data.get("dup"),
            hist=self.history,
        )
        if status == "retrying" and run.requeued_eta:
            fields["detail"] = f"{detail}; next attempt at {iso(from_ms(run.requeued_eta))}"
        run.stage(journal, "finish", "job", compact(fields))

    def after_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        self.journal.flush()

    # -- helpers --------------------------------------------------------------------------------

    def _creation(self, broker: Broker, message: Any, run: JobRun | None = None) -> dict[str, Any]:
        """The fields a record is created from: actor, queue, max_retries, enqueue time, args, keys."""
        actor = broker.actors.get(message.actor_name)
        if run is not None and run.args is not None:
            args, keys = run.args, run.keys
        else:
            fn = actor.fn if actor is not None else None
            bound = self.snapshots.bind(fn, message.args, message.kwargs) if fn else _raw(message)
            args = self.snapshots.snapshot(message.actor_name, bound)
            track = actor.options.get("track") if actor is not None else None
            keys = self.snapshots.keys(track, bound) if track else {}
            if run is not None:
                run.bound, run.args, run.keys = bound, args, keys
        retries = retries_of(broker)
        max_retries = resolve(message, actor, "max_retries", retries.max_retries if retries else 0)
        return {
            "actor": message.actor_name,
            "queue": q_name(message.queue_name),
            "maxr": max_retries,
            "enq": message.message_timestamp,
            "args": args,
            "keys": keys,
            "hist": self.history,
        }

    def _configure(self) -> Any:
        """This process's journal, told this middleware's retention (once)."""
        journal = self.journal
        if id(journal) not in self._configured:
            retention_ms = int(self.retention * 1000)
            keep_ms = retention_ms + 86_400_000
            cleanup = journal.header.setdefault("cleanup", {})
            ttl = journal.header.setdefault("ttl", {})
            for status in ("done", "skipped", "failed"):
                cleanup[status] = max(cleanup.get(status, 0), retention_ms)
                ttl[status] = max(ttl.get(status, 0), keep_ms)
            for status in ("queued", "running", "retrying", "stuck", "abandoned"):
                ttl[status] = max(ttl.get(status, 0), keep_ms, 30 * 86_400_000)
            journal.header["limit"] = CLEANUP_LIMIT
            self._configured.add(id(journal))
        return journal


def _raw(message: Any) -> dict[str, Any]:
    bound: dict[str, Any] = {}
    if message.args:
        bound["*args"] = list(message.args)
    bound.update(message.kwargs or {})
    return bound
