"""The journal's write buffer while the store is unreachable: bounded, ranked, collapsing.

Writes wait here, in order, until the store answers again. The buffer holds at most ``size``
writes, and what it gives up when full follows what each write is worth:

* **final** writes (the end of an attempt: ``done``, ``failed``, ``skipped``, ``retrying``,
  with the key it completes and its dead letter) are the last ever dropped;
* **record** writes (a start, an enqueue, anything else) go before them;
* **noise** (put-back events, due times, heartbeat-like process writes) goes first.

Within a rank the oldest goes first. Before anything is dropped, writes that a later one
supersedes are collapsed into it (counted in ``collapsed``):

* a job's final write absorbs that job's buffered start: the start's time, worker and
  creation fields ride in the final write (``job.began``), so its "running" event is kept;
* a job put back again and again keeps one put-back event, which says how many times and
  until when; a "due" write of a job already waiting for one, or right after its put-back
  (which leaves nothing due), is dropped.

Every write dropped is counted (``store_writes_dropped_total{rank}``) and logged: the first
of an outage at once, then one line per :data:`DROP_LOG_INTERVAL` with the counts so far.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any

from .. import metrics
from .._clock import from_ms, iso

if TYPE_CHECKING:
    from .journal import Slot

logger = logging.getLogger("dramatiq_reliable.store.journal")

#: Seconds between two log lines about writes dropped during one outage.
DROP_LOG_INTERVAL = 10.0

NOISE, RECORD, FINAL = 0, 1, 2
RANKS = ("noise", "record", "final")
#: Kinds of process-level writes whose loss only delays what they say (noise).
NOISE_KINDS = frozenset({"due", "beat", "dead_queue", "recovered"})
#: Fields of a start that create the record, if the final write has to.
CREATION = ("actor", "queue", "maxr", "enq_ms", "args", "keys", "hist")


def rank(op: dict[str, Any]) -> int:
    """How much losing ``op`` costs: :data:`FINAL`, :data:`RECORD` or :data:`NOISE`."""
    kind = op.get("k")
    if kind == "finish":
        return NOISE if _deferred(op) else FINAL
    return NOISE if kind in NOISE_KINDS else RECORD


def describe(op: dict[str, Any]) -> str:
    """What a write is, in words, for the log."""
    kind = str(op.get("k"))
    job = op.get("job")
    if kind == "finish":
        outcome = job.get("outcome") if isinstance(job, dict) else None
        return "a put-back event" if outcome == "deferred" else f"the final write ({outcome or 'end'})"
    return {"due": "a due time", "start": "the start", "enqueue": "the enqueue"}.get(kind, f"a {kind!r} write")


def _deferred(op: dict[str, Any]) -> bool:
    job = op.get("job")
    return isinstance(job, dict) and job.get("outcome") == "deferred"


class _Entry:
    __slots__ = ("rank", "reason", "seq", "slot", "times")

    def __init__(self, slot: Slot, seq: int) -> None:
        self.slot = slot
        self.seq = seq
        self.rank = rank(slot.op)
        #: How many put-backs this entry stands for (see :meth:`WriteBuffer._fold_put_back`).
        self.times = 1
        self.reason: str | None = None


class WriteBuffer:
    """The writes of one journal waiting for the store, at most ``size`` of them (lock held by the caller)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seq = 0
        self._order: OrderedDict[int, _Entry] = OrderedDict()
        self._ranks: tuple[OrderedDict[int, _Entry], ...] = (OrderedDict(), OrderedDict(), OrderedDict())
        self._jobs: dict[str, list[_Entry]] = {}
        #: Writes collapsed into others, and writes dropped by rank, since the last :meth:`episode`.
        self.collapsed = 0
        self.dropped: Counter[str] = Counter()
        self._logged_drops = 0
        self._last_log = 0.0

    def __len__(self) -> int:
        return len(self._order)

    def __bool__(self) -> bool:
        return bool(self._order)

    def slots(self) -> list[Slot]:
        """The buffered writes, in the order they will be applied."""
        return [e.slot for e in self._order.values()]

    # -- adding ---------------------------------------------------------------------------------

    def add(self, slot: Slot) -> None:
        """Buffer ``slot``'s write: collapse it, or make room for it, or drop it."""
        op = slot.op
        job_id = op.get("id")
        mine = self._jobs.get(job_id, []) if isinstance(job_id, str) and job_id != "-" else []
        if mine and self._collapse(op, mine):
            self.collapsed += 1
            metrics.inc("store_writes_collapsed_total")
            return
        self._seq += 1
        entry = _Entry(slot, self._seq)
        if len(self._order) >= self.size and not self._make_room(entry.rank):
            self._drop(entry)
            return
        self._insert(entry)

    def _collapse(self, op: dict[str, Any], mine: list[_Entry]) -> bool:
        """Fold ``op`` into, or fold into ``op``, the writes of its job it supersedes; True if ``op`` is absorbed."""
        kind = op.get("k")
        if kind == "due":
            # One is enough; and after a put-back the record is not retrying, so it is a no-op.
            return _deferred(mine[-1].slot.op) or any(e.slot.op.get("k") == "due" for e in mine)
        if kind != "finish":
            return False
        if _deferred(op):
            last = next((e for e in reversed(mine) if e.slot.op.get("k") != "due"), None)
            return last is not None and self._fold_put_back(last, op)
        start = mine[-1]
        if start.slot.op.get("k") == "start" and self._fold_start(start.slot.op, op):
            self._remove(start)
            self.collapsed += 1
            metrics.inc("store_writes_collapsed_total")
        return False

    @staticmethod
    def _fold_put_back(entry: _Entry, op: dict[str, Any]) -> bool:
        """One more put-back of a job whose last buffered write is a put-back: count it there."""
        prev = entry.slot.op
        sections = {s for s in prev if s != "at_ms"}
        if not _deferred(prev) or sections != {s for s in op if s != "at_ms"}:
            return False
        if any(prev[s] != op[s] for s in sections if s != "job"):
            return False
        if entry.reason is None:
            entry.reason = str(prev["job"].get("detail") or "put back")
        entry.times += 1
        until = f", the last at {iso(from_ms(op['at_ms']))}" if "at_ms" in op else ""
        detail = f"{entry.reason} ({entry.times} times while the store was unreachable{until})"
        prev["job"] = {**prev["job"], "detail": detail}
        return True

    @staticmethod
    def _fold_start(start: dict[str, Any], final: dict[str, Any]) -> bool:
        """Carry a job's buffered start in its final write (``job.began``); False if they do not fold."""
        began, end = start.get("job"), final.get("job")
        if set(start) - {"k", "id", "at_ms", "job", "wd"} or not isinstance(began, dict) or not isinstance(end, dict):
            return False
        if began.get("att") != end.get("att"):
            return False
        section = {f: began[f] for f in CREATION if f in began and f not in end}
        section["began"] = {f: began[f] for f in ("att", "worker") if f in began}
        if "at_ms" in start:
            section["began"]["at_ms"] = start["at_ms"]
        # The start's process bookkeeping ("wd") is undone by the final write's: both go.
        final["job"] = {**section, **end}
        return True

    def _make_room(self, wanted: int) -> bool:
        """Drop the oldest write of the lowest rank, if it ranks no higher than ``wanted``."""
        for r in range(wanted + 1):
            if self._ranks[r]:
                _, victim = self._ranks[r].popitem(last=False)
                self._remove(victim, ranked=False)
                self._drop(victim)
                return True
        return False

    # -- replaying ------------------------------------------------------------------------------

    def take(self, n: int) -> list[Slot]:
        """Remove and return the ``n`` oldest writes (to apply them)."""
        taken: list[Slot] = []
        while self._order and len(taken) < n:
            _, entry = self._order.popitem(last=False)
            self._remove(entry, ordered=False)
            taken.append(entry.slot)
        return taken

    def restore(self, slots: list[Slot]) -> None:
        """Put back writes :meth:`take` returned (the store failed again), ahead of the others."""
        for slot in reversed(slots):
            self._seq += 1
            entry = _Entry(slot, -self._seq)
            self._insert(entry)
            self._order.move_to_end(entry.seq, last=False)
            self._ranks[entry.rank].move_to_end(entry.seq, last=False)
            job = self._jobs.get(str(slot.op.get("id")))
            if job is not None and job[-1] is entry:
                job.insert(0, job.pop())
        while len(self._order) > self.size and self._make_room(FINAL):
            pass

    def episode(self) -> tuple[int, Counter[str]]:
        """``(collapsed, dropped by rank)`` since the last call, and start counting anew."""
        counts = (self.collapsed, self.dropped)
        self.collapsed, self.dropped, self._logged_drops, self._last_log = 0, Counter(), 0, 0.0
        return counts

    # -- machinery ------------------------------------------------------------------------------

    def _insert(self, entry: _Entry) -> None:
        self._order[entry.seq] = entry
        self._ranks[entry.rank][entry.seq] = entry
        job_id = entry.slot.op.get("id")
        if isinstance(job_id, str) and job_id != "-":
            self._jobs.setdefault(job_id, []).append(entry)

    def _remove(self, entry: _Entry, *, ordered: bool = True, ranked: bool = True) -> None:
        if ordered:
            self._order.pop(entry.seq, None)
        if ranked:
            self._ranks[entry.rank].pop(entry.seq, None)
        job_id: Any = entry.slot.op.get("id")
        mine = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if mine is not None:
            mine.remove(entry)
            if not mine:
                del self._jobs[job_id]

    def _drop(self, entry: _Entry) -> None:
        """Give ``entry`` up: count it, and log it (at once if it is the first, else every interval)."""
        name = RANKS[entry.rank]
        self.dropped[name] += 1
        metrics.inc("store_writes_dropped_total", rank=name)
        now = time.monotonic()
        if self._logged_drops and now - self._last_log < DROP_LOG_INTERVAL:
            return
        total = sum(self.dropped.values())
        logger.error(
            "Store write buffer full (%d writes): %d dropped since the store went away "
            "(%d final, %d record, %d noise); the latest: %s of job %s.",
            self.size,
            total,
            self.dropped["final"],
            self.dropped["record"],
            self.dropped["noise"],
            describe(entry.slot.op),
            entry.slot.op.get("id"),
        )
        self._logged_drops, self._last_log = total, now
