"""Operator controls: pause and resume an actor or a queue, cancel jobs, retry a job now.

Each is one store call; the workers read the decision in their heartbeat, so it reaches the
whole fleet within one ``heartbeat_interval`` (5 s by default) and costs nothing per job::

    dr.pause(store, actor="send_invoice", by="alice")   # its messages wait, attempts not spent
    dr.resume(store, actor="send_invoice")
    dr.cancel(store, [job_id])                          # queued, delayed, retrying or running
    dr.cancel_where(store, actor="send_invoice", status="queued")
    dr.retry_now(store, job_id)                         # a retrying job runs now, once

See ``store/lua/80_control.lua`` for what the store keeps, and
:mod:`dramatiq_reliable.middleware._control` for what workers do with it.
"""

from __future__ import annotations

import getpass
import logging
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._clock import from_ms, iso
from .errors import ConfigurationError, StoreError
from .status import TERMINAL, Status
from .store.base import Store
from .store.journal import flush_unsent

logger = logging.getLogger("dramatiq_reliable.control")

#: Statuses a job can be cancelled in.
CANCELLABLE = frozenset({Status.QUEUED, Status.RUNNING, Status.RETRYING, Status.STUCK, Status.ABANDONED})
#: Jobs cancelled per store call in a bulk cancel.
BATCH = 500


@dataclass(frozen=True)
class Paused:
    """A paused actor or queue."""

    #: ``"actor"``, ``"queue"`` or ``"cron"`` (a schedule).
    kind: str
    name: str
    since: datetime | None
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "since": iso(self.since), "by": self.by}


@dataclass(frozen=True)
class PauseResult:
    """What ``pause``/``resume`` did: ``changed`` is False when it was already so (nothing changed)."""

    kind: str
    name: str
    paused: bool
    changed: bool
    since: datetime | None


@dataclass(frozen=True)
class ControlResult:
    """What a cancel or a retry-now did to one job.

    ``state``: ``"cancelled"`` / ``"now"`` when done; otherwise why not and nothing changed:
    ``"unknown"`` (no such job) or its status (``done``, ``cancelled``, ``queued``, …).
    """

    id: str
    state: str
    was: str | None = None

    @property
    def changed(self) -> bool:
        return self.state in ("cancelled", "now") and self.was is not None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "was": self.was, "changed": self.changed}


def operator() -> str:
    """Who acts, for the records: ``user@host``."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _target(actor: str | None, queue: str | None) -> tuple[str, str]:
    if (actor is None) == (queue is None):
        raise ConfigurationError("give an actor or a queue (one of them)")
    kind, name = ("actor", actor) if actor is not None else ("queue", queue)
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{kind} name must be a non-empty string, not {name!r}")
    return kind, name.strip()


def _apply(store: Store, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flush_unsent()  # a job this process just sent has its record (send() does not wait for it)
    results = store.apply({"ops": ops})
    for result in results:
        if "error" in result:
            raise StoreError(f"store {store.url} refused a control: {result['error']}")
    return results


def _switch(store: Store, on: bool, actor: str | None, queue: str | None, by: str | None) -> PauseResult:
    kind, name = _target(actor, queue)
    return _switch_target(store, on, kind, name, by)


def _switch_target(store: Store, on: bool, kind: str, name: str, by: str | None) -> PauseResult:
    section = {"target": f"{kind}:{name}", "on": on, "by": by or operator()}
    result = _apply(store, [{"k": "pause", "id": "-", "ctl": section}])[0]
    return PauseResult(kind, name, on, bool(result.get("changed")), from_ms(result.get("since")))


def pause(store: Store, *, actor: str | None = None, queue: str | None = None, by: str | None = None) -> PauseResult:
    """Pause an actor, or every actor of a queue, fleet-wide.

    Workers stop starting its jobs within one heartbeat interval: each delivery is put back with
    a delay (the same message, its attempts not spent) until it is resumed. Jobs already running
    go on. Pausing a paused one changes nothing (``changed`` is False).

    Raises:
      ConfigurationError: neither or both of ``actor`` and ``queue``, or an empty name.
      StoreUnavailable: the store cannot be reached.
    """
    return _switch(store, True, actor, queue, by)


def resume(store: Store, *, actor: str | None = None, queue: str | None = None, by: str | None = None) -> PauseResult:
    """Resume a paused actor or queue: its held messages run as their hold ends (≤ 30 s)."""
    return _switch(store, False, actor, queue, by)


def pause_cron(store: Store, name: str, *, by: str | None = None) -> PauseResult:
    """Pause a cron schedule: schedulers claim its ticks and record them ``paused``, unsent.

    ``dramatiq-reliable cron run`` still fires it by hand. Pausing a paused one changes nothing.
    """
    return _switch_target(store, True, "cron", _name(name), by)


def resume_cron(store: Store, name: str, *, by: str | None = None) -> PauseResult:
    """Resume a paused cron schedule: its next tick is enqueued as usual."""
    return _switch_target(store, False, "cron", _name(name), by)


def cron_paused(store: Store, name: str) -> bool:
    """Whether the schedule ``name`` is paused; ``False`` when the store cannot say (it fires)."""
    try:
        return any(p.kind == "cron" and p.name == name for p in paused(store))
    except StoreError as exc:
        logger.warning("Cannot tell whether schedule %r is paused (%s); it fires.", name, exc)
        return False


def _name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a schedule name must be a non-empty string, not {name!r}")
    return name.strip()


def paused(store: Store) -> list[Paused]:
    """The paused actors, queues and cron schedules (kind ``cron``), oldest pause first."""
    result = _apply(store, [{"k": "paused", "id": "-", "ctl": {}}])[0]
    items = result.get("paused") or {}
    out = []
    for target, raw in items.items() if isinstance(items, dict) else []:
        kind, _, name = str(target).partition(":")
        value = raw if isinstance(raw, dict) else {}
        out.append(Paused(kind, name, from_ms(value.get("since")), value.get("by")))
    return sorted(out, key=lambda p: (p.since.timestamp() if p.since else 0.0, p.kind, p.name))


def cancel(store: Store, ids: list[str], *, by: str | None = None) -> list[ControlResult]:
    """Cancel jobs by id: those not finished become ``cancelled`` and never run (again).

    A running job is asked to stop: at its next ``dr.once`` step, or at once for actors with
    ``cancellable="interrupt"``. Unknown or finished jobs are left as they are (see each
    result's ``state``).

    Raises:
      StoreUnavailable: the store cannot be reached.
    """
    who = by or operator()
    out: list[ControlResult] = []
    for i in range(0, len(ids), BATCH):
        chunk = ids[i : i + BATCH]
        results = _apply(store, [{"k": "cancel", "id": job_id, "ctl": {"by": who}} for job_id in chunk])
        out.extend(
            ControlResult(job_id, str(r.get("state")), r.get("was")) for job_id, r in zip(chunk, results, strict=True)
        )
    return out


def select(
    store: Store,
    *,
    actor: str | None = None,
    key: tuple[str, str] | None = None,
    status: Status | str | None = None,
    limit: int | None = None,
) -> list[str]:
    """Ids of the jobs that are not finished and match every filter given (for a bulk cancel).

    Raises:
      ConfigurationError: no filter, or a status a job cannot be cancelled in.
    """
    if actor is None and key is None and status is None:
        raise ConfigurationError("give at least one of actor, key and status")
    statuses = sorted(CANCELLABLE, key=str)
    if status is not None:
        try:
            wanted = Status(status)
        except ValueError:
            raise ConfigurationError(f"unknown status {status!r}") from None
        if wanted in TERMINAL:
            raise ConfigurationError(
                f"a {wanted} job is finished; only {', '.join(map(str, statuses))} can be cancelled"
            )
        statuses = [wanted]
    ids: list[str] = []
    for st in statuses:
        cursor: str | None = None
        while True:
            page = store.find_jobs(status=st, actor=actor, key=key, limit=1000, cursor=cursor)
            ids.extend(record.id for record in page)
            if limit is not None and len(ids) >= limit:
                return ids[:limit]
            cursor = page.cursor
            if cursor is None:
                break
    return ids


def cancel_where(
    store: Store,
    *,
    actor: str | None = None,
    key: tuple[str, str] | None = None,
    status: Status | str | None = None,
    by: str | None = None,
) -> list[ControlResult]:
    """Cancel every job not finished that matches the filters (see :func:`select`, :func:`cancel`)."""
    return cancel(store, select(store, actor=actor, key=key, status=status), by=by)


def retry_now(store: Store, job_id: str, *, by: str | None = None) -> ControlResult:
    """Run a ``retrying`` job now rather than at its next retry time; it runs once.

    The worker holding its delayed message moves it to its queue (within one heartbeat).
    A job in any other status is left as it is (``state`` says which).
    """
    result = _apply(store, [{"k": "retry_now", "id": job_id, "ctl": {"by": by or operator()}}])[0]
    state = str(result.get("state"))
    return ControlResult(job_id, state, "retrying" if state == "now" else None)
