"""Reconciling the store's copy of dead letters with the brokers' dead-letter queues.

The broker's dead-letter queue decides what is still dead; the store's copy carries the final
error and makes listing fast. They drift apart when a message is dead-lettered without
DeadLetters (before it was installed, or while the store was unreachable: the broker has an
entry the store lacks), or when an entry leaves the broker without dramatiq-reliable (expired
after the broker's dead-message TTL, or removed by another tool: the store has a copy the
broker lacks).

:func:`sync` keeps them together cheaply. Per queue it compares the broker's count with the
store's (one call each); the difference is remembered after each reconciliation (the
``offset``: entries held twice by the broker under one job id, or captured a moment ago and not
yet nacked), so only a change that did not go through dramatiq-reliable makes it read the
queue. It then imports the entries the store lacks (as not ``recorded``, with the error of the
attempt before the last if the message carries its traceback) and forgets the copies the
broker no longer has, except those captured less than :data:`GRACE_MS` ago. A change that
leaves both counts moved by the same amount (an entry gone and another arrived unseen) is
caught by the next change, or by ``force=True``.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .._clock import now_ms
from ..errors import DramatiqReliableError
from ..middleware.dead_letters import DEFAULT_RETENTION
from ..store.base import Store
from ..store.ops import compact
from .xq import DeadQueue, XEntry

#: Milliseconds a dead letter captured by DeadLetters is kept although the broker does not show
#: it: its nack reaches the broker just after the capture is written.
GRACE_MS = 60_000
#: Milliseconds a queue's lock lives at most (a crashed tool's lock frees itself after this).
LOCK_TTL_MS = 600_000
#: Seconds a replay or purge waits for another tool's lock on the same queue.
LOCK_WAIT = 30.0
#: Ops per store call.
OPS_PER_CALL = 500
#: Largest payload kept for an entry that cannot be decoded (bytes).
MAX_BAD_PAYLOAD = 65_536


class QueueBusy(DramatiqReliableError):
    """Another dead-letter operation holds this queue (RabbitMQ reads take messages out while
    they run). Try again in a moment."""


@dataclass
class SyncReport:
    """What :func:`sync` found."""

    #: queue -> entries in the broker's dead-letter queue.
    in_broker: dict[str, int] = field(default_factory=dict)
    #: queues read in full because the counts differed.
    reconciled: list[str] = field(default_factory=list)
    #: queues skipped because another tool held them.
    busy: list[str] = field(default_factory=list)
    imported: int = 0
    forgotten: int = 0


def apply(store: Store, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply ops directly (a tool waits for its writes), in calls of :data:`OPS_PER_CALL`."""
    results: list[dict[str, Any]] = []
    for i in range(0, len(ops), OPS_PER_CALL):
        results += store.apply({"ops": ops[i : i + OPS_PER_CALL]})
    return results


@contextmanager
def queue_lock(store: Store, queue: str, *, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the store-side lock of ``queue`` (see ``dead_lock`` in ``lua/40_dead.lua``).

    Raises:
      QueueBusy: it is still held by another tool after ``wait`` seconds.
    """
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        op = {"k": "dead_lock", "id": "-", "dead": {"queue": queue, "token": token, "ttl_ms": LOCK_TTL_MS}}
        if apply(store, [op])[0].get("ok"):
            break
        if time.monotonic() >= deadline:
            raise QueueBusy(f"another dead-letter operation is working on queue {queue!r}; try again shortly")
        time.sleep(0.2)
    try:
        yield
    finally:
        apply(store, [{"k": "dead_unlock", "id": "-", "dead": {"queue": queue, "token": token}}])


def queues_of(store: Store, dq: DeadQueue) -> list[str]:
    """Every queue to look at: known to the store, or found by the broker."""
    return sorted(set(store.dead_letter_queues()) | dq.discover())


def sync(
    store: Store,
    dq: DeadQueue,
    *,
    queues: list[str] | None = None,
    force: bool = False,
    retention: float = DEFAULT_RETENTION,
) -> SyncReport:
    """Bring the store's copy in line with the broker's dead-letter queues (module docstring).

    Parameters:
      queues: only these queues (default: every queue the store or the broker knows).
      force: read every queue in full, even where the counts agree.
      retention: seconds an imported entry is kept in the store.

    Raises:
      BrokerUnavailable, StoreUnavailable: a server could not be reached.
    """
    known = store.dead_letter_queues()
    names = sorted(set(queues)) if queues else sorted(set(known) | dq.discover())
    report = SyncReport(in_broker=dq.counts(names))
    for q in names:
        held, offset = known.get(q, (0, 0))
        if not force and report.in_broker[q] - held == offset:
            continue
        try:
            with queue_lock(store, q, wait=0):
                imported, forgotten = reconcile(store, dq, q, retention=retention)
        except QueueBusy:
            report.busy.append(q)
            continue
        report.reconciled.append(q)
        report.imported += imported
        report.forgotten += forgotten
    return report


def reconcile(store: Store, dq: DeadQueue, queue: str, *, retention: float) -> tuple[int, int]:
    """Read one queue's dead-letter queue in full and repair the store's copy (lock held)."""
    now = now_ms()
    with dq.session(queue) as s:
        entries = s.scan()
        ids, xids = store.dead_letter_index(queue)
        unknown = [e for e in entries if e.ref not in xids]
        s.load(unknown)
        present = {xids[e.ref] for e in entries if e.ref in xids} | {e.key for e in unknown}
        # A known job id under a new Redis id is another copy: import adds the id to the record.
        imports = [e for e in unknown if e.key not in ids or e.stable]
        created = len({e.key for e in imports if e.key not in ids})
        missing = [i for i in ids if i not in present]
        gone = [i for i in missing if ids[i] < now - GRACE_MS]
        ops = [import_op(e, retention, now) for e in imports]
        detail = "no longer in the dead-letter queue (expired, or removed outside dramatiq-reliable)"
        forget = {"older_than_ms": GRACE_MS}
        ops += [{"k": "dead_forget", "id": i, "dead": forget, "job": {"detail": detail}} for i in gone]
        results = apply(store, ops)
        forgotten = sum(1 for r in results[len(imports) :] if r.get("removed"))
        held = len(ids) + created - forgotten
        offset = len(entries) + (len(missing) - len(gone)) - held
        apply(store, [{"k": "dead_sync", "id": "-", "dead": {"queue": queue, "offset": offset}}])
    return created, forgotten


def import_op(entry: XEntry, retention: float, now: int) -> dict[str, Any]:
    """The ``dead_import`` op of an entry the store did not know."""
    raw = entry.raw or b""
    section: dict[str, Any] = {
        "queue": entry.queue,
        "dead_ms": entry.dead_at or now,
        "retention_ms": int(retention * 1000),
        "xid": entry.ref if entry.stable else None,
    }
    message = entry.message
    if message is None:
        section.update(actor="?", bad=entry.problem or "cannot be decoded")
        raw = raw[:MAX_BAD_PAYLOAD]
    else:
        options = message.options
        attempt = int(options.get("retries") or 0) + 1
        section.update(
            actor=message.actor_name,
            att=attempt,
            maxr=options.get("max_retries"),
            err=error_from_traceback(options.get("traceback"), attempt),
        )
    try:
        section["msg"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        section.update(msg=base64.b64encode(raw).decode("ascii"), enc="b64")
    job = {"detail": "found in the dead-letter queue; its failure was not recorded", "hist": 50}
    return {"k": "dead_import", "id": entry.key, "dead": compact(section), "job": job}


def error_from_traceback(text: Any, attempt: int) -> dict[str, str] | None:
    """The error of the attempt before the last, from the traceback Retries stored in the message."""
    if not isinstance(text, str) or not text.strip():
        return None
    last = text.strip().splitlines()[-1]
    name, sep, message = last.partition(":")
    if not sep or " " in name.strip():
        name, message = "?", last
    note = f" (the error of attempt {attempt - 1}; the last attempt's error was not recorded)"
    return {"type": name.strip().rsplit(".", 1)[-1], "message": message.strip() + note, "traceback": text[-8000:]}
