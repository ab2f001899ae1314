"""Reading dead letters, shared by the stores: building the views, paging, filters.

A listing walks one index newest first (``deads:queue:<q>`` with a queue, ``deads:actor:<a>``
with an actor, else ``deads:time``), scored by the time of death in milliseconds, bounded by
``since``/``before``; the other filters (queue or actor when another index was chosen, the
error text) are applied to the loaded records. Cursors are those of :mod:`._paging`. A dead
letter that cannot be decoded is skipped and named in ``Page.corrupt``; ``get_dead_letter``
raises ``CorruptRecord`` for it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

from .. import _stored
from .._clock import from_ms
from .._stored import BadField, Corrupt, moment, text, whole
from ..errors import ConfigurationError, CorruptRecord
from ..records import MAX_RAW, DeadLetter, DeadStats, JobError, JobRecord, Page
from ..status import Status
from . import _paging

_STATUSES = {s.value for s in Status}

#: ``fetch(index, after, count, min_ms, max_ms)`` → entries newest first, strictly after ``after``.
Fetch = Callable[[str, "_paging.Entry | None", int, float, float], list[_paging.Entry]]
#: A stored record as loaded: the decoded object, ``None`` where missing, ``Corrupt`` where undecodable.
Stored: TypeAlias = "dict[str, Any] | Corrupt | None"
#: ``load(ids)`` → ``(dead-letter record, job record)`` per id.
Load = Callable[[Sequence[str]], list[tuple[Stored, Stored]]]


def decode(raw: bytes | str | None) -> dict[str, Any] | Corrupt | None:
    """A stored dead letter (it has an ``id`` and a ``queue``, and fields of the right types)."""
    d = _stored.decode_object(raw, "id", "queue")
    if not isinstance(d, dict):
        return d
    try:
        for name in ("id", "queue", "actor", "bad", "src"):
            text(d.get(name), name)
        moment(d.get("dead"), "dead-lettered")
        for name, label in (("exp", "expiry"), ("att", "attempts"), ("maxr", "max_retries")):
            whole(d.get(name), label)
        if not isinstance(d.get("xids") or [], list):
            raise BadField("xids is not a list")
        message_text(d)
    except BadField as exc:
        return Corrupt(str(exc))
    return d


def view(job_id: str, d: dict[str, Any] | Corrupt | None, job: Any, now_ms: int) -> DeadLetter | None:
    """The dead letter of ``job_id`` from its loaded records, ``None`` when missing or expired.

    Raises:
      CorruptRecord: the stored dead letter cannot be decoded.
    """
    if isinstance(d, Corrupt):
        raise CorruptRecord(f"the dead letter {job_id!r} is corrupt: {d.reason}", job_id)
    return build(d, job) if d is not None and int(d.get("exp") or 0) > now_ms else None


def message_text(d: dict[str, Any]) -> str | None:
    """The stored payload as text (decoded from base64 when it was not UTF-8).

    Raises:
      BadField: the payload is marked base64 and is not.
    """
    msg = d.get("msg")
    if not isinstance(msg, str):
        return None
    if d.get("enc") == "b64":
        try:
            return base64.b64decode(msg, validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            raise BadField("the message is marked base64 and is not") from None
    return msg


def build(d: dict[str, Any], job: Any) -> DeadLetter:
    """The view of a stored dead letter (as :func:`decode` returns it), merged with JobState's
    record of the job if any. A job record that cannot be decoded is left out: the dead letter
    alone says what died and why, and can be replayed."""
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
    view = _job_view(job, str(d["id"]))
    if view is not None:
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


def _job_view(job: Any, job_id: str) -> JobRecord | None:
    if not isinstance(job, dict) or job.get("status") not in _STATUSES:
        return None
    try:
        return JobRecord.from_stored(job, job_id)
    except CorruptRecord:
        return None


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
    corrupt: list[str] = []
    scanned = 0
    chunk = max(limit, 50)
    while scanned < _paging.SCAN_BUDGET:
        candidates = fetch(index, position, chunk, low, high)
        if not candidates:
            return Page(items, None, tuple(corrupt))
        scanned += len(candidates)
        for (score, job_id), (d, job) in zip(candidates, load([c[1] for c in candidates]), strict=True):
            position = (score, job_id)
            if isinstance(d, Corrupt):
                corrupt.append(job_id)
            elif d is not None and keep(d):
                items.append(build(d, job))
                if len(items) == limit:
                    return Page(items, _paging.encode_cursor(position), tuple(corrupt))
        if len(candidates) < chunk:
            return Page(items, None, tuple(corrupt))
    return Page(items, _paging.encode_cursor(position) if position else None, tuple(corrupt))


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
