"""Typed records returned by the stores, and their JSON shapes.

The stores keep a compact form (integer milliseconds, short field names); these dataclasses
are what readers get: aware UTC datetimes, a :class:`~dramatiq_reliable.Status`, and
``to_json()`` for the stable ``--json`` output of the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._clock import from_ms, iso
from ._stored import BadField, absolute, moment, shown, text, whole
from .errors import CorruptRecord
from .status import Status


@dataclass(frozen=True)
class JobError:
    """The last error of a job, in plain words."""

    #: The exception's class name, e.g. ``"SMTPTimeout"``.
    type: str
    #: ``str(exception)``.
    message: str
    #: The formatted traceback, or ``None`` when none was captured.
    traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True)
class Event:
    """One entry of a job's history."""

    at: datetime
    status: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class JobRecord:
    """Everything recorded about one job (one Dramatiq message id)."""

    id: str
    actor: str
    queue: str
    status: Status
    attempts: int = 0
    max_retries: int | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_retry_at: datetime | None = None
    #: When a delayed job (``delay=``/``eta``) is due to run.
    due_at: datetime | None = None
    updated_at: datetime | None = None
    #: ``host:pid:thread`` of the worker thread that ran (or runs) the last attempt.
    worker: str | None = None
    #: Business keys from the actor's ``track`` option, as strings.
    keys: dict[str, str] = field(default_factory=dict)
    #: The redacted, size-capped snapshot of the arguments.
    args: Any = None
    error: JobError | None = None
    #: For a skipped duplicate: the id of the job that did the work.
    duplicate_of: str | None = None
    #: For a stuck job: the frames of the thread running it, outermost first.
    stack: list[dict[str, Any]] | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def since(self) -> datetime | None:
        """When the job entered its current status."""
        for event in reversed(self.events):
            if event.status == self.status.value:
                return event.at
        return self.updated_at

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of ``jobs show --json``."""
        return {
            "id": self.id,
            "actor": self.actor,
            "queue": self.queue,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "enqueued_at": iso(self.enqueued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "next_retry_at": iso(self.next_retry_at),
            "due_at": iso(self.due_at),
            "updated_at": iso(self.updated_at),
            "worker": self.worker,
            "keys": dict(self.keys),
            "args": self.args,
            "error": self.error.to_json() if self.error else None,
            "duplicate_of": self.duplicate_of,
            "stack": self.stack,
            "events": [e.to_json() for e in self.events],
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any], job_id: str) -> JobRecord:
        """Build a record from the stores' compact form (see ``store/redis.py``).

        Raises:
          CorruptRecord: a field has a value of the wrong type or out of range.
        """
        try:
            return cls._decode(data, job_id)
        except BadField as exc:
            raise CorruptRecord(f"the record of job {job_id!r} is corrupt: {exc}", job_id) from None
        except RecursionError:
            raise CorruptRecord(f"the record of job {job_id!r} is corrupt: nested too deep", job_id) from None

    @classmethod
    def _decode(cls, data: Mapping[str, Any], job_id: str) -> JobRecord:
        data = absolute(data)
        try:
            status = Status(data.get("status"))
        except ValueError:
            raise BadField(f"status {shown(data.get('status'))} is not a status") from None
        args = data.get("args")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {"_unreadable": args[:200]}
        keys = data.get("keys") or {}
        stack = data.get("stack") or None
        events = [Event(moment(e[0], "event") or datetime.min, str(e[1]), str(e[2])) for e in _events(data)]
        return cls(
            id=job_id,
            actor=text(data.get("actor"), "actor") or "?",
            queue=text(data.get("queue"), "queue") or "?",
            status=status,
            attempts=whole(data.get("att"), "attempts") or 0,
            max_retries=whole(data.get("maxr"), "max_retries"),
            enqueued_at=moment(data.get("enq"), "enqueued"),
            started_at=moment(data.get("start"), "started"),
            finished_at=moment(data.get("fin"), "finished"),
            next_retry_at=moment(data.get("next"), "next retry"),
            due_at=moment(data.get("due"), "due"),
            updated_at=events[-1].at if events else None,
            worker=text(data.get("worker"), "worker") or None,
            keys={str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {},
            args=args,
            error=_error(data.get("err")),
            duplicate_of=text(data.get("dup"), "duplicate_of") or None,
            stack=[f for f in stack if isinstance(f, dict)] if isinstance(stack, list) else None,
            events=events,
        )


def _error(err: Any) -> JobError | None:
    if not isinstance(err, dict):
        return None
    traceback = err.get("traceback")
    return JobError(
        str(err.get("type", "?")),
        str(err.get("message", "")),
        traceback if isinstance(traceback, str) else None,
    )


def _events(data: Mapping[str, Any]) -> list[list[Any]]:
    ev = data.get("ev")
    # Lua's cjson encodes an empty table as an object; treat it as an empty list.
    return [e for e in ev if isinstance(e, list) and len(e) >= 3] if isinstance(ev, list) else []


@dataclass(frozen=True)
class Page:
    """One page of a listing. Iterate it for the items; pass ``cursor`` back for the next page."""

    items: list[Any]
    #: Opaque; ``None`` when this is the last page.
    cursor: str | None = None
    #: The ids of the records this page skipped because they cannot be decoded (see
    #: :class:`~dramatiq_reliable.CorruptRecord`); ``get_job`` or ``get_dead_letter`` says why.
    corrupt: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


# -- cron ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CronTick:
    """The latest tick of a cron schedule, as the store keeps it (``store.cron_last``)."""

    #: The schedule's name.
    schedule: str
    #: The tick's fire time.
    fire_at: datetime
    #: The id of the job the tick enqueues (derived from the schedule's name and the fire time).
    job_id: str
    #: ``pending`` (claimed, not yet enqueued), ``sent`` (enqueued), ``skipped`` (the actor is
    #: ``unique`` and its previous job was still pending), ``missed`` (never enqueued within
    #: the misfire grace).
    state: str
    #: The scheduler (``host:pid:token``) that holds or held the claim.
    by: str
    #: When the state was last changed.
    updated_at: datetime | None = None

    @classmethod
    def from_stored(cls, name: str, data: Mapping[str, Any]) -> CronTick:
        return cls(
            schedule=name,
            fire_at=from_ms(data["fire"]) or datetime.min,
            job_id=str(data.get("job") or ""),
            state=str(data.get("st") or "?"),
            by=str(data.get("by") or ""),
            updated_at=from_ms(data.get("at")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "fire_at": iso(self.fire_at),
            "job_id": self.job_id,
            "state": self.state,
            "by": self.by,
            "updated_at": iso(self.updated_at),
        }


# -- dead letters ------------------------------------------------------------------------------

#: Longest payload text kept in a malformed dead letter's view (characters).
MAX_RAW = 2_000


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered job: its record, when it died, and the message that can be replayed.

    ``job`` is JobState's record of the job when there is one, else a record built from what
    DeadLetters kept (status ``failed``, attempts, the final error). ``message`` is the
    Dramatiq message as it was delivered the last time (decoded JSON), ``None`` when the
    broker's copy cannot be decoded (``malformed`` then says why; such an entry can only be
    purged).
    """

    job: JobRecord
    dead_at: datetime
    message: dict[str, Any] | None
    #: Why the stored message cannot be decoded (it cannot be replayed), else ``None``.
    malformed: str | None = None
    #: True when DeadLetters captured the failure (with its final error); False when the entry
    #: was found in the broker's dead-letter queue (dead-lettered without DeadLetters, or while
    #: the store was unreachable): its error is then the one of the attempt before the last,
    #: if the message carried one.
    recorded: bool = True
    #: The stored payload, for a malformed entry (capped).
    raw: str | None = None
    #: The ids of its copies in a Redis broker's dead-letter queue (``redis_message_id``), if known.
    broker_ids: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def actor(self) -> str:
        return self.job.actor

    @property
    def queue(self) -> str:
        return self.job.queue

    @property
    def error(self) -> JobError | None:
        return self.job.error

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of ``dead list --json``: a job object plus ``dead_at`` and ``message``."""
        out = self.job.to_json()
        out.update(
            dead_at=iso(self.dead_at),
            message=self.message,
            malformed=self.malformed,
            recorded=self.recorded,
        )
        if self.malformed:
            out["raw"] = self.raw
        return out


@dataclass(frozen=True)
class DeadStats:
    """Counts of the dead letters the store holds."""

    total: int
    #: ``(actor, error type, count)``, largest count first.
    by_kind: list[tuple[str, str, int]] = field(default_factory=list)
    #: queue -> dead letters the store holds for it.
    by_queue: dict[str, int] = field(default_factory=dict)
    #: queue -> entries in the broker's dead-letter queue (when a broker was asked).
    in_broker: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_actor_error": [{"actor": a, "error_type": t, "count": n} for a, t, n in self.by_kind],
            "by_queue": dict(self.by_queue),
            "in_broker": dict(self.in_broker) if self.in_broker is not None else None,
        }


@dataclass(frozen=True)
class DeadResult:
    """What ``dr.replay`` or ``dr.purge`` did with one id."""

    id: str
    #: ``replayed``, ``purged``, ``would replay``, ``would purge`` (dry run), ``not found``
    #: (no such dead letter), ``not dead`` (the job exists but is not a dead letter, e.g. it was
    #: replayed already), ``gone`` (no longer in the broker's dead-letter queue), ``malformed``
    #: (cannot be replayed; purge it), ``refused`` (a middleware refused the enqueue),
    #: ``unreachable`` (the broker or the store could not be reached; nothing was lost) or
    #: ``failed`` (not done now, e.g. another tool holds the queue; the detail says why).
    outcome: str
    detail: str = ""
    queue: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("replayed", "purged", "would replay", "would purge")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome, "ok": self.ok, "queue": self.queue, "detail": self.detail}
