"""Per-message state shared by the middlewares of one process, and their staged writes.

Each middleware adds its section to the op of a message (:meth:`JobRun.stage`); the op is
committed once per phase, by the last of the bundle's middlewares in the broker's list (see
:class:`~.base.ReliableMiddleware`), so a job's start and its end are one store op each.
"""

from __future__ import annotations

import os
import socket
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import SkipMessage

from .._clock import now_ms
from .._secrets import TextMask, secret_values

if TYPE_CHECKING:
    from ..actors.once import Checkpoints
    from ..store.journal import Journal, Slot

_ATTR = "_dramatiq_reliable_run"
_HOST = socket.gethostname()

#: Longest error message and traceback kept in a record (characters).
MAX_ERROR_MESSAGE = 1_000
MAX_TRACEBACK = 8_000


_names = threading.local()


def worker_name() -> str:
    """``host:pid:thread`` of the calling thread (computed once per thread and process)."""
    pid = os.getpid()
    cached: tuple[int, str] | None = getattr(_names, "name", None)
    if cached is None or cached[0] != pid:
        cached = _names.name = (pid, f"{_HOST}:{pid}:{threading.current_thread().name}")
    return cached[1]


def error_of(exc: BaseException | None, mask: Callable[[str], str] | None = None) -> dict[str, str] | None:
    """The ``{type, message, traceback}`` of an exception, masked with ``mask``, then capped.

    Masking comes first, so that a cap never cuts a secret value in two halves it no longer matches.
    """
    if exc is None:
        return None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    message = str(exc)
    if mask is not None:
        text, message = mask(text), mask(message)
    if len(text) > MAX_TRACEBACK:
        text = "…\n" + text[-MAX_TRACEBACK:]
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE] + "…"
    return {"type": type(exc).__name__, "message": message, "traceback": text}


def one_line(err: dict[str, str] | None) -> str:
    if not err:
        return ""
    message = err.get("message", "").strip().splitlines()
    return f"{err['type']}: {message[0]}" if message else err["type"]


class Claim(NamedTuple):
    """The lease Idempotency holds on a job's key while it runs."""

    #: The key it claimed (``<actor>:<rendered>`` or ``msg:<id>``).
    key: str
    #: The owner token of the key's lease.
    token: str
    #: Milliseconds the key's completion is remembered.
    ttl_ms: int
    #: JobState's record marks the completion of this message id (no separate marker).
    rec: bool


class JobRun:
    """What the bundle knows about one message while a worker processes it."""

    __slots__ = (
        "actor",
        "alert",
        "args",
        "attempt",
        "began",
        "bound",
        "cancelled",
        "checkpoints",
        "claim",
        "claim_slot",
        "deferred",
        "delivered_options",
        "dup",
        "finished",
        "id",
        "keys",
        "lingering",
        "mask",
        "message",
        "msg",
        "once_used",
        "outcome",
        "proc",
        "queue",
        "quiet",
        "requeued_eta",
        "reserved",
        "results",
        "skip_recorded",
        "skipped",
        "started",
        "started_ms",
        "throws",
        "txns",
        "worker",
    )

    def __init__(self, message: MessageProxy) -> None:
        msg: Message[Any] = message._message
        self.message = message
        #: The Dramatiq message itself (reading it through the proxy costs a lookup each time).
        self.msg = msg
        self.id: str = msg.message_id
        self.actor: str = msg.actor_name
        self.queue: str = q_name(msg.queue_name)
        self.attempt: int = int(msg.options.get("retries") or 0) + 1
        self.worker = worker_name()
        #: True once a bundle middleware saw ``before_process_message`` (the actor was about to run).
        self.began = False
        #: True once JobState staged the start (so the record's creation fields were sent).
        self.started = False
        self.started_ms = now_ms()
        self.finished = False
        #: Bound arguments, args snapshot (JSON text) and business keys, once computed.
        self.bound: dict[str, Any] | None = None
        self.args: str | None = None
        self.keys: dict[str, str] | None = None
        self.skipped = False
        #: Set when the skip was already written by the start op (an idempotent duplicate).
        self.skip_recorded = False
        #: The eta of the retry Dramatiq's Retries enqueued for this message, if any.
        self.requeued_eta: int | None = None
        #: ``(outcome, error, detail)`` once decided at ack/nack time.
        self.outcome: tuple[str, dict[str, str] | None, str] | None = None
        #: Masks the job's secret values in text; JobState sets it, knowing the actor's parameters.
        self.mask: Callable[[str], str] | None = None
        #: Why it was put back before it ran (Idempotency: key busy, store down; a paused actor).
        self.deferred: str | None = None
        #: Put back again while its actor or queue is paused: no new event.
        self.quiet = False
        #: Why an operator's cancel stopped it.
        self.cancelled: str | None = None
        #: Whether its exception is one of the actor's ``throws`` (not retried), once known.
        self.throws: bool | None = None
        #: Idempotency's lease on the job's key, while it runs; the unwaited claim that takes it.
        self.claim: Claim | None = None
        self.claim_slot: Slot | None = None
        #: The key a ``unique`` job reserved at send, freed when it ends.
        self.reserved: str | None = None
        #: The job that completed its key (itself, for a redelivery): it is skipped.
        self.dup: str | None = None
        #: Where ``dr.once`` keeps its steps: ``(store, scope, ttl_ms)``.
        self.checkpoints: Checkpoints | None = None
        #: Whether ``dr.once`` read or stored a step in this delivery (its completion drops them).
        self.once_used = False
        #: The Watchdog's id of the process running it.
        self.proc: str | None = None
        #: The options the message was delivered with (Retries changes them in place).
        self.delivered_options: dict[str, Any] | None = None
        #: The Alerts notification to deliver once the message is acked or nacked.
        self.alert: Any = None
        #: journal -> staged op
        self.txns: dict[Journal, dict[str, Any]] = {}
        #: journal -> result of the last committed op
        self.results: dict[Journal, dict[str, Any]] = {}
        #: journal -> the start op submitted without waiting, which the end may join
        self.lingering: dict[Journal, Slot] = {}

    @classmethod
    def of(cls, message: MessageProxy, *, create: bool = True) -> JobRun | None:
        run: JobRun | None = message.__dict__.get(_ATTR)
        if run is None and create:
            run = cls(message)
            message.__dict__[_ATTR] = run
        return run

    # -- staged writes --------------------------------------------------------------------------

    def stage(self, journal: Journal, kind: str, section: str, value: dict[str, Any]) -> None:
        """Add ``section`` to this message's ``kind`` op for ``journal``."""
        op = self.txns.get(journal)
        if op is not None and op["k"] != kind:
            if kind == "finish" and op["k"] == "start" and self.deferred is not None:
                # Put back before it ran: there is no start to record, only the fields that
                # create its record if it has none yet.
                op = self.txns[journal] = _unstarted(op)
            else:
                journal.submit(op, wait=False)
                op = None
        if op is None:
            op = self.txns[journal] = {"k": kind, "id": self.id}
        op[section] = {**op[section], **value} if section in op else value

    def commit(self, journal: Journal, *, wait: bool, retry: bool = True) -> Slot | None:
        """Submit the staged op for ``journal``; with ``wait``, return once applied.

        A start submitted without waiting lingers in the journal, so that a job that ends soon
        after has its start and end applied together (the record is read and written once).
        """
        op = self.txns.pop(journal, None)
        if op is None:
            return None
        if not wait:
            linger = op["k"] == "start"
            slot = journal.submit(op, wait=False, retry=retry, linger=linger)
            if linger:
                self.lingering[journal] = slot
            return slot
        slot = journal.submit(op, wait=True, retry=retry, after=self.lingering.pop(journal, None))
        if slot.result is not None:
            self.results[journal] = slot.result
        return slot

    def discard(self, journal: Journal, kind: str) -> None:
        """Drop the staged ``kind`` op for ``journal`` (a job that will not run after all)."""
        op = self.txns.get(journal)
        if op is not None and op["k"] == kind:
            del self.txns[journal]

    def staged(self, journal: Journal) -> dict[str, Any] | None:
        return self.txns.get(journal)

    # -- the verdict ----------------------------------------------------------------------------

    def decide(self, nacked: bool) -> tuple[str, dict[str, str] | None, str]:
        """``(outcome, error, detail)`` of this attempt, decided once Retries has spoken.

        Called from ``before_ack``/``before_nack``, which run after every
        ``after_process_message`` hook, so the decision does not depend on where the
        middleware sits relative to Retries.
        """
        if self.outcome is not None:
            return self.outcome
        message = self.message
        exc = getattr(message, "_exception", None)
        # Masked here, once: every consumer (record, dead letter, alerts, logs) gets the masked text.
        mask = None if exc is None else self.mask if self.mask is not None else fallback_mask(self.msg)
        err = error_of(exc, mask)
        n = self.attempt
        if self.cancelled is not None and not nacked and (self.skipped or exc is not None):
            self.outcome = ("cancelled", None, self.cancelled)
        elif self.deferred is not None and not nacked:
            self.outcome = ("deferred", None, f"put back: {self.deferred}")
        elif nacked:
            if isinstance(exc, SkipMessage):
                detail = f"dead-lettered by a middleware: {one_line(err) or 'skipped and failed'}"
            elif err is None:
                detail = "dead-lettered"
            elif self.throws:
                detail = f"dead-lettered: {one_line(err)} (a 'throws' error, not retried)"
            else:
                detail = f"dead-lettered after {n} attempt{'s' if n > 1 else ''}: {one_line(err)}"
            self.outcome = ("failed", err, detail)
        elif self.skipped:
            self.outcome = ("skipped", None, "skipped by a middleware")
        elif exc is not None:
            if self.requeued_eta is not None:
                self.outcome = ("retrying", err, f"attempt {n} failed: {one_line(err)}")
            else:
                self.outcome = ("failed", err, f"attempt {n} failed and was not retried: {one_line(err)}")
        else:
            self.outcome = ("done", None, f"attempt {n} done in {now_ms() - self.started_ms} ms")
        return self.outcome


def fallback_mask(msg: Message[Any]) -> Callable[[str], str]:
    """Without JobState: mask the values of secret keyword arguments and URL credentials."""
    return TextMask(secret_values({"*args": list(msg.args or ()), **(msg.kwargs or {})}))


#: Fields of a start's ``job`` section that create the record.
_CREATION = ("actor", "queue", "maxr", "enq", "args", "keys", "hist")


def _unstarted(start: dict[str, Any]) -> dict[str, Any]:
    """The finish op of a message put back before it ran, with what its staged start would create."""
    op: dict[str, Any] = {"k": "finish", "id": start["id"]}
    job = start.get("job")
    if isinstance(job, dict):
        op["job"] = {f: job[f] for f in _CREATION if f in job}
    return op


def message_of(message: Message[Any] | MessageProxy) -> Message[Any]:
    return message._message if isinstance(message, MessageProxy) else message
