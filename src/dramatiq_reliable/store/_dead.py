"""Reading dead letters, shared by the stores: building the views, paging, filters.

A listing walks one index newest first (``deads:queue:<q>`` with a queue, ``deads:actor:<a>``
with an actor, else ``deads:time``), scored by the time of death in milliseconds, bounded by
``since``/``before``; the other filters (queue or actor when another index was chosen, the
error text) are applied to the loaded records. Cursors are those of :mod:`._paging`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from .._clock import from_ms
from ..errors import ConfigurationError
from ..records import MAX_RAW, DeadLetter, DeadStats, JobError, JobRecord, Page
from ..status import Status
from . import _paging

_STATUSES = {s.value for s in Status}

#: ``fetch(index, after, count, min_ms, max_ms)`` → entries newest first, strictly after ``after``.
Fetch = Callable[[str, "_paging.Entry | None", int, float, float], list[_paging.Entry]]
#: ``load(ids)`` → ``(dead-letter record, job record)`` per id, ``None`` where missing.
Load = Callable[[Sequence[str]], list[tuple["dict[str, Any] | None", "dict[str, Any] | None"]]]


def decode(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored dead letter (it has an ``id`` and a ``queue``)."""
    return _paging.decode_object(raw, "id", "queue")


def message_text(d: dict[str, Any]) -> str | None:
    """The stored payload as text (decoded from base64 when it was not UTF-8)."""
    msg = d.get("msg")
    if not isinstance(msg, str):
        return None
    if d.get("enc") == "b64":
        return base64.b64decode(msg).decode("utf-8", "replace")
    return msg


def build(d: dict[str, Any], job: dict[str, Any] | None) -> DeadLetter:
    """The view of a stored dead letter, merged with JobState's record of the job if any."""
    err = d.get("err")
    error = (
        JobError(str(err.get("type", "?")), str(err.get("message", "")), err.get("traceback"))
        if isinstance(err, dict)
        else None
    )
    text = message_text(d)
    message: dict[str, Any] | None = None
    malformed = d.get("bad")
    if not malformed:
        try:
            parsed = json.loads(text) if text is not None else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            message = parsed
        else:
            malformed = "the stored message is not a JSON object"
    dead_at = from_ms(d.get("dead")) or datetime.min
    if isinstance(job, dict) and job.get("status") in _STATUSES:
        view = JobRecord.from_stored(job, str(d["id"]))
        if error is not None:
            view = dataclasses.replace(view, error=error)
    else:
        view = JobRecord(
            id=d["id"],
            actor=d.get("actor") or "?",
            queue=d["queue"],
            status=Status.FAILED,
            attempts=int(d.get("att") or 0),
            max_retries=d.get("maxr"),
            enqueued_at=from_ms(message.get("message_timestamp")) if message else None,
            finished_at=dead_at,
            error=error,
        )
    return DeadLetter(
        job=view,
        dead_at=dead_at,
        message=message,
        malformed=malformed,
        recorded=d.get("src") != "broker",
        raw=text[:MAX_RAW] if malformed and text is not None else None,
        broker_ids=tuple(str(x) for x in d.get("xids") or ()),
    )


def check_query(limit: int, since: datetime | None, before: datetime | None) -> tuple[float, float]:
    """Validate a listing's bounds; return them in milliseconds."""
    if not isinstance(limit, int) or not 1 <= limit <= _paging.MAX_LIMIT:
        raise ConfigurationError(f"limit must be between 1 and {_paging.MAX_LIMIT}, not {limit!r}")
    for name, value in (("since", since), ("before", before)):
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise ConfigurationError(f"{name} must be an aware datetime, not {value!r}")
    low = since.timestamp() * 1000 if since else float("-inf")
    high = before.timestamp() * 1000 if before else float("inf")
    return low, high


def find(
    *,
    fetch: Fetch,
    load: Load,
    queue: str | None,
    actor: str | None,
    since: datetime | None,
    before: datetime | None,
    error: str | None,
    limit: int,
    cursor: str | None,
    now_ms: int,
) -> Page:
    """Run a ``dead_letters`` query over the indexes ``fetch`` reads."""
    low, high = check_query(limit, since, before)
    position = _paging.decode_cursor(cursor)
    index = f"queue:{queue}" if queue is not None else f"actor:{actor}" if actor is not None else "time"
    needle = error.casefold() if error else None

    def keep(d: dict[str, Any]) -> bool:
        if int(d.get("exp") or 0) <= now_ms:
            return False
        if queue is not None and d.get("queue") != queue:
            return False
        if actor is not None and (d.get("actor") or "?") != actor:
            return False
        if needle is not None:
            err = d.get("err") if isinstance(d.get("err"), dict) else {}
            text = f"{err.get('type', '')}: {err.get('message', '')}" if err else ""
            if d.get("bad"):
                text += f" malformed {d['bad']}"
            if needle not in text.casefold():
                return False
        return True

    items: list[DeadLetter] = []
    scanned = 0
    chunk = max(limit, 50)
    while scanned < _paging.SCAN_BUDGET:
        candidates = fetch(index, position, chunk, low, high)
        if not candidates:
            return Page(items, None)
        scanned += len(candidates)
        for (score, job_id), (d, job) in zip(candidates, load([c[1] for c in candidates]), strict=True):
            position = (score, job_id)
            if d is not None and keep(d):
                items.append(build(d, job))
                if len(items) == limit:
                    return Page(items, _paging.encode_cursor(position))
        if len(candidates) < chunk:
            return Page(items, None)
    return Page(items, _paging.encode_cursor(position) if position else None)


def stats(kinds: dict[str, int], queues: dict[str, int]) -> DeadStats:
    """``DeadStats`` from the ``deads:stats`` hash and the per-queue counts."""
    by_kind = []
    for kind, count in kinds.items():
        actor, _, etype = kind.partition("\t")
        if int(count) > 0:
            by_kind.append((actor, etype or "?", int(count)))
    by_kind.sort(key=lambda k: (-k[2], k[0], k[1]))
    return DeadStats(
        total=sum(n for _, _, n in by_kind),
        by_kind=by_kind,
        by_queue={q: n for q, n in sorted(queues.items()) if n},
    )
