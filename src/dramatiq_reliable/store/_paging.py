"""Cursor paging over sorted indexes, shared by the stores.

Every index orders job ids by a score in milliseconds, newest first; ties are broken by id,
descending. A cursor is ``"<score>:<id>"`` of the last item returned, and the next page starts
strictly after it. Filters that the chosen index does not cover are applied to the loaded
records. Job records are indexed per (status, actor): a listing by status merges the indexes
of every actor, one by actor those of every status (so both order by when the job entered its
status). When the store can tell index membership cheaply (``member``), the (status, actor)
filter of a listing by business key is checked against its index first, so only the records
that will be shown are loaded. A page that needs more than ``SCAN_BUDGET``
loaded records, or ``EXAMINE_BUDGET`` index entries, returns early with a cursor. A record
that cannot be decoded is skipped and its id named in ``Page.corrupt``: one damaged key never
breaks a listing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

from .._snapshot import key_text
from .._stored import Corrupt, decode_object, shown
from ..errors import ConfigurationError, CorruptRecord
from ..records import JobRecord, Page
from ..status import Status

#: Records loaded for one page at most.
SCAN_BUDGET = 5_000
#: Index entries examined for one page at most (membership checks are cheap, loads are not).
EXAMINE_BUDGET = 10_000
#: Intersect the indexes at once when the smallest of them holds at most this many entries.
INTERSECT_MAX = 20_000
#: Index entries read per round trip when a membership check filters them.
CHECKED_CHUNK = 1_000
#: The largest page a caller may ask for.
MAX_LIMIT = 1_000

Entry = tuple[float, str]
#: ``fetch(index, after, count)`` → up to ``count`` entries of one index strictly after ``after``.
Fetch = Callable[[str, "Entry | None", int], list[Entry]]
#: ``load(ids)`` → the stored record of each id: ``None`` where missing, ``Corrupt`` where undecodable.
Load = Callable[[Sequence[str]], list["dict[str, Any] | Corrupt | None"]]
#: ``member(index, ids)`` → for each id, whether the index holds it.
Member = Callable[[str, Sequence[str]], list[bool]]
#: ``intersect(index, others, most)`` → the entries of ``index`` (its scores, newest first) that
#: every one of ``others`` holds; None when the smallest of them holds more than ``most``.
Intersect = Callable[[str, Sequence[str], int], "list[Entry] | None"]
#: ``fetch_many(indexes, after, count)`` → ``fetch`` of each index, in one round trip where it can.
FetchMany = Callable[[Sequence[str], "Entry | None", int], list[list[Entry]]]
#: ``actors()`` → every actor that has an index.
Actors = Callable[[], Sequence[str]]


def index_name(status: str, actor: str) -> str:
    """The index of the jobs of ``actor`` in ``status`` (``jobs:<name>`` in the store)."""
    return f"s:{status}:{actor}"


def key_index(name: str, value: str) -> str:
    """The index of the jobs with business key ``name=value``."""
    return f"key:{name}={value}"


def encode_cursor(entry: Entry) -> str:
    return f"{int(entry[0])}:{entry[1]}"


def decode_cursor(cursor: str | None) -> Entry | None:
    if cursor is None or cursor == "":
        return None
    score, sep, job_id = cursor.partition(":")
    if not sep or not job_id or not score.lstrip("-").isdigit():
        raise ConfigurationError(f"malformed cursor: {cursor!r}")
    return (float(score), job_id)


def after(entry: Entry, cursor: Entry | None) -> bool:
    """True if ``entry`` comes after ``cursor`` in newest-first order."""
    if cursor is None:
        return True
    return entry[0] < cursor[0] or (entry[0] == cursor[0] and entry[1] < cursor[1])


def check_query(status: Status | str | None, limit: int) -> str | None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ConfigurationError(f"limit must be between 1 and {MAX_LIMIT}, not {limit!r}")
    if status is None:
        return None
    try:
        return Status(status).value
    except ValueError:
        names = ", ".join(s.value for s in Status)
        raise ConfigurationError(f"unknown status {status!r} (one of: {names})") from None


def check_key(key: Any) -> tuple[str, str] | None:
    """A ``find_jobs`` key filter as recorded: ``(name, value)`` with the value as a string.

    Business keys are recorded as strings (``order_id=4711`` as ``"4711"``), so a value that is
    not a string is turned into one the same way (:func:`~dramatiq_reliable._snapshot.key_text`).

    Raises:
      ConfigurationError: not a ``(name, value)`` pair, an empty name, or a value that is not JSON.
    """
    if key is None:
        return None
    if isinstance(key, (str, bytes)) or not isinstance(key, Sequence) or len(key) != 2:
        raise ConfigurationError(f"key must be a (name, value) pair such as ('order_id', '4711'), not {key!r}")
    name, value = key
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a key's name must be a non-empty string, not {name!r}")
    try:
        return (name, key_text(value))
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"key {name!r}: a {type(value).__name__} cannot be a business key's value (use a string or a JSON value)"
        ) from None


def find(
    *,
    fetch: Fetch,
    load: Load,
    status: str | None,
    actor: str | None,
    key: tuple[str, str] | None,
    limit: int,
    cursor: str | None,
    member: Member | None = None,
    intersect: Intersect | None = None,
    queue: str | None = None,
    since_ms: float | None = None,
    actors: Actors = lambda: (),
    fetch_many: FetchMany | None = None,
) -> Page:
    """Run a ``find_jobs`` query over the indexes ``fetch`` reads.

    ``queue`` is checked on the loaded records; ``since_ms`` (jobs enqueued at or after it) also
    ends the walk early: every index scores a job at or after its enqueue time.
    """
    position = decode_cursor(cursor)
    indexes, checks = _plan(status, actor, key, checked=member is not None, actors=actors)

    def keep(data: dict[str, Any]) -> bool:
        if status is not None and data.get("status") != status:
            return False
        if queue is not None and data.get("queue") != queue:
            return False
        if since_ms is not None and float(data.get("enq") or 0) < since_ms:
            return False
        if actor is not None and data.get("actor") != actor:
            return False
        if key is not None:
            keys = data.get("keys")
            if not isinstance(keys, dict) or keys.get(key[0]) != key[1]:
                return False
        return True

    if checks and intersect is not None:
        matches = intersect(indexes[0], checks, INTERSECT_MAX)
        if matches is not None and since_ms is not None:
            matches = [m for m in matches if m[0] >= since_ms]
        if matches is not None:
            return _page_of(matches, position, load, keep, limit)

    items: list[JobRecord] = []
    corrupt: list[str] = []
    loaded = examined = 0
    chunk = max(limit, CHECKED_CHUNK if checks else 50)
    while loaded < SCAN_BUDGET and examined < EXAMINE_BUDGET:
        candidates = _merge(_fetch_all(fetch, fetch_many, indexes, position, chunk), chunk)
        ended = False
        if since_ms is not None:
            kept = [c for c in candidates if c[0] >= since_ms]
            ended, candidates = len(kept) < len(candidates), kept
        if not candidates:
            return Page(items, None, tuple(corrupt))
        examined += len(candidates)
        wanted = [c[1] for c in candidates]
        for index in checks:
            if wanted and member is not None:
                wanted = [job_id for job_id, ok in zip(wanted, member(index, wanted), strict=True) if ok]
        records: dict[str, dict[str, Any] | Corrupt | None] = {}
        next_load = 0  # wanted[next_load:] are not loaded yet
        pending = set(wanted)
        for score, job_id in candidates:
            position = (score, job_id)
            if job_id not in pending:
                continue
            if job_id not in records:
                # Load what this page can still show (and a few more), not the whole chunk.
                batch = wanted[next_load : next_load + limit - len(items) + 8]
                next_load += len(batch)
                loaded += len(batch)
                records.update(zip(batch, load(batch), strict=True))
            record = _record(records.get(job_id), job_id, keep, corrupt)
            if record is not None:
                items.append(record)
                if len(items) == limit:
                    return Page(items, encode_cursor(position), tuple(corrupt))
        if len(candidates) < chunk or ended:
            return Page(items, None, tuple(corrupt))
    return Page(items, encode_cursor(position) if position else None, tuple(corrupt))


def _record(
    data: dict[str, Any] | Corrupt | None, job_id: str, keep: Callable[[dict[str, Any]], bool], corrupt: list[str]
) -> JobRecord | None:
    """The record to show, or ``None`` (missing, filtered out, or corrupt: then its id joins ``corrupt``)."""
    if data is None:
        return None
    if isinstance(data, Corrupt):
        corrupt.append(job_id)
        return None
    if not keep(data):
        return None
    try:
        return JobRecord.from_stored(data, job_id)
    except CorruptRecord:
        corrupt.append(job_id)
        return None


def _plan(
    status: str | None, actor: str | None, key: tuple[str, str] | None, *, checked: bool, actors: Actors
) -> tuple[list[str], list[str]]:
    """The indexes to walk (merged), and the one that covers the other filters (checked before loading).

    A job is in one index of its (status, actor): by status, the indexes of every actor of that
    status are merged; by actor, those of every status of that actor.
    """
    statuses = [status] if status is not None else [s.value for s in Status]
    checks: list[str] = []
    if key is not None:
        indexes = [key_index(*key)]
        if checked and status is not None and actor is not None:
            checks.append(index_name(status, actor))
        return indexes, checks
    names = [actor] if actor is not None else sorted(actors())
    return [index_name(s, a) for s in statuses for a in names], checks


def _page_of(
    matches: list[Entry], position: Entry | None, load: Load, keep: Callable[[dict[str, Any]], bool], limit: int
) -> Page:
    """One page of an index intersection already computed (newest first)."""
    rest = [entry for entry in matches if after(entry, position)]
    items: list[JobRecord] = []
    corrupt: list[str] = []
    done = 0
    while done < len(rest):
        batch = rest[done : done + limit - len(items) + 8]
        for entry, data in zip(batch, load([e[1] for e in batch]), strict=True):
            done += 1
            record = _record(data, entry[1], keep, corrupt)
            if record is not None:
                items.append(record)
                if len(items) == limit:
                    return Page(items, encode_cursor(entry) if done < len(rest) else None, tuple(corrupt))
    return Page(items, None, tuple(corrupt))


def _fetch_all(
    fetch: Fetch, fetch_many: FetchMany | None, indexes: list[str], position: Entry | None, count: int
) -> list[list[Entry]]:
    if fetch_many is not None and len(indexes) > 1:
        return fetch_many(indexes, position, count)
    return [fetch(index, position, count) for index in indexes]


def _merge(lists: list[list[Entry]], count: int) -> list[Entry]:
    if len(lists) == 1:
        return lists[0][:count]
    merged = heapq.merge(*lists, key=lambda e: (-e[0], _neg(e[1])))
    out: list[Entry] = []
    for entry in merged:
        out.append(entry)
        if len(out) == count:
            break
    return out


class _neg(str):
    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


def decode_record(raw: bytes | str | None) -> dict[str, Any] | Corrupt | None:
    """A stored job record (it has a known ``status``); ``None`` if missing, else ``Corrupt``."""
    data = decode_object(raw, "status")
    if isinstance(data, dict) and data["status"] not in _STATUSES:
        return Corrupt(f"status {shown(data['status'])} is not a status")
    return data


_STATUSES = frozenset(s.value for s in Status)
