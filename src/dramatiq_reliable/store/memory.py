"""``MemoryStore``: the store in this process, for tests, the demo and ``StubBroker``.

It implements the same contract as ``RedisStore`` with Python structures under one lock;
the op handlers (``_memory_jobs.py``, ``_memory_idem.py``) are the Python twins of the Lua
sections in ``store/lua/``, and ``tests/contract`` runs one suite over both stores. State is
per instance and per process: worker processes do not share a ``MemoryStore``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _stored
from .._clock import now_ms
from .._stored import Corrupt
from ..errors import CorruptRecord
from ..fleet import WorkerProcess, build_processes
from ..records import DeadLetter, DeadStats, JobRecord
from ..status import TERMINAL, Status
from . import _dead, _paging
from .base import Store, statuses_to_count

DAY_MS = 86_400_000

Handler = Callable[["Batch", "Ctx", dict[str, Any]], None]
#: kind -> [(priority, section, handler)], filled by the ``_memory_*`` modules.
HANDLERS: dict[str, list[tuple[int, str, Handler]]] = {}


def on(kind: str, priority: int, section: str) -> Callable[[Handler], Handler]:
    """Register a handler, as ``on(kind, priority, section, fn)`` does in the Lua prelude."""

    def register(fn: Handler) -> Handler:
        HANDLERS.setdefault(kind, []).append((priority, section, fn))
        HANDLERS[kind].sort(key=lambda h: h[0])
        return fn

    return register


@dataclass
class Ctx:
    """What the handlers of one op share."""

    op: dict[str, Any]
    res: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None


@dataclass
class Entry:
    """A job record loaded for a batch; written back once at the end (see ``Batch.save``)."""

    id: str
    rec: dict[str, Any] | None
    st0: str | None
    dirty: bool = False
    new: bool = False


class Batch:
    """One ``apply`` call: the clock, the record cache, and the store's state."""

    def __init__(self, store: MemoryStore, batch: dict[str, Any]) -> None:
        self.store = store
        self.now = int(batch["now"])
        self.spec = batch
        self.entries: dict[str, Entry] = {}

    def load(self, job_id: str) -> Entry:
        entry = self.entries.get(job_id)
        if entry is None:
            rec = self.store._get_record(job_id)
            entry = Entry(job_id, json.loads(json.dumps(rec)) if rec else None, rec["status"] if rec else None)
            self.entries[job_id] = entry
        return entry

    def save(self) -> None:
        store = self.store
        ttl_spec = self.spec.get("ttl") or {}
        for entry in self.entries.values():
            if not (entry.dirty and entry.rec):
                continue
            rec = entry.rec
            status = rec["status"]
            default_ttl = 8 * DAY_MS if status in TERMINAL else 30 * DAY_MS
            store.records[entry.id] = (rec, store.clock() + int(ttl_spec.get(status, default_ttl)))
            if entry.st0 != status:
                if entry.st0:
                    store.index(f"status:{entry.st0}").pop(entry.id, None)
                store.index(f"status:{status}")[entry.id] = self.now
            if entry.new:
                score = rec.get("enq", self.now)
                store.index(f"actor:{rec.get('actor', '?')}")[entry.id] = score
                for name, value in (rec.get("keys") or {}).items():
                    store.index(f"key:{name}={value}")[entry.id] = score
            entry.st0, entry.new, entry.dirty = status, False, False


class MemoryStore(Store):
    """The store in this process's memory. Same contract as :class:`RedisStore`.

    Parameters:
      clock(callable): returns the current time in milliseconds (for reads and expiry).
    """

    def __init__(self, *, clock: Callable[[], int] = now_ms) -> None:
        super().__init__()
        self.url = "memory://"
        self.clock = clock
        self.lock = threading.RLock()
        #: job id -> (record, expires at ms)
        self.records: dict[str, tuple[dict[str, Any], int]] = {}
        #: "status:<s>" | "actor:<a>" | "key:<n>=<v>" -> {job id: score}
        self.indexes: dict[str, dict[str, float]] = {}
        #: (kind, key) -> (value, expires at ms): idempotency strings (done, lease, unique).
        self.strings: dict[tuple[str, str], tuple[str, int]] = {}
        #: idempotency key -> ({step: JSON}, expires at ms)
        self.checkpoints: dict[str, tuple[dict[str, str], int]] = {}
        # -- dead letters ---
        #: job id -> dead-letter record (zsets are in ``indexes`` under ``deads:…``).
        self.dead_records: dict[str, dict[str, Any]] = {}
        #: "xids:<queue>" | "stats" | "offset" -> {field: value}
        self.dead_hashes: dict[str, dict[str, Any]] = {}
        # -- alerts ---
        #: throttle name -> (state, expires at ms); see ``_memory_alerts.py``.
        self.alert_throttles: dict[str, tuple[dict[str, Any], int]] = {}
        #: throttle name -> ms its summary is due / it counts as recovered.
        self.alert_due: dict[str, int] = {}
        self.alert_quiet: dict[str, int] = {}
        # -- end alerts ---

    # -- state helpers (lock held) ------------------------------------------------------------

    def index(self, name: str) -> dict[str, float]:
        return self.indexes.setdefault(name, {})

    def _get_record(self, job_id: str) -> dict[str, Any] | None:
        item = self.records.get(job_id)
        if item is None:
            return None
        if item[1] <= self.clock():
            del self.records[job_id]
            return None
        return item[0]

    # Expiry follows this store's clock, as Redis' PX follows the server's: a TTL counts from
    # when it is set, whatever time the batch says it is.

    def sget(self, kind: str, key: str) -> str | None:
        item = self.strings.get((kind, key))
        if item is None:
            return None
        if item[1] <= self.clock():
            del self.strings[(kind, key)]
            return None
        return item[0]

    def sset(self, kind: str, key: str, value: str, ttl_ms: int) -> None:
        self.strings[(kind, key)] = (value, self.clock() + int(ttl_ms))

    def pttl(self, kind: str, key: str) -> int:
        item = self.strings.get((kind, key))
        return max(item[1] - self.clock(), 0) if item else 0

    def sdel(self, kind: str, key: str) -> None:
        self.strings.pop((kind, key), None)

    def forget(self, job_id: str, rec: dict[str, Any] | None) -> None:
        if rec is not None:
            self.index(f"actor:{rec.get('actor', '?')}").pop(job_id, None)
            for name, value in (rec.get("keys") or {}).items():
                self.index(f"key:{name}={value}").pop(job_id, None)
            self.index(f"status:{rec['status']}").pop(job_id, None)
        self.records.pop(job_id, None)

    # -- writes ---------------------------------------------------------------------------------

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        from . import (  # noqa: F401  (register the handlers)
            _memory_alerts,
            _memory_control,
            _memory_cron,
            _memory_dead,
            _memory_idem,
            _memory_jobs,
            _memory_stats,
            _memory_watchdog,
        )

        spec = json.loads(json.dumps(batch))  # the same JSON round trip the Lua script sees
        results: list[dict[str, Any]] = []
        with self.lock:
            run = Batch(self, spec)
            for op in spec.get("ops", []):
                ctx = Ctx(op)
                handlers = HANDLERS.get(op.get("k", ""))
                if handlers is None:
                    ctx.res["error"] = f"unknown op kind: {op.get('k')}"
                for _priority, section, fn in handlers or []:
                    if section in op:
                        try:
                            fn(run, ctx, op[section])
                        except Exception as exc:  # as the Lua dispatcher's pcall
                            ctx.res["error"] = f"{type(exc).__name__}: {exc}"
                            break
                results.append(ctx.res)
            run.save()
            self._cleanup(spec, run.now)
        return results

    def _cleanup(self, spec: dict[str, Any], now: int) -> None:
        limit = int(spec.get("limit", 100))
        for status, retention in (spec.get("cleanup") or {}).items():
            index = self.index(f"status:{status}")
            expired = sorted((score, jid) for jid, score in index.items() if score <= now - retention)
            for _score, job_id in expired[: max(limit, 0)]:
                item = self.records.get(job_id)
                rec = item[0] if item else None
                if rec is not None and rec["status"] != status:
                    index.pop(job_id, None)
                else:
                    self.forget(job_id, rec)
                    index.pop(job_id, None)
                limit -= 1

    # -- reads ----------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        with self.lock:
            data = _copy(self._get_record(job_id), _paging.decode_record)
        if isinstance(data, Corrupt):
            raise CorruptRecord(f"the record of job {job_id!r} is corrupt: {data.reason}", job_id)
        return JobRecord.from_stored(data, job_id) if data else None

    def _intersect(self, index: str, others: Sequence[str], most: int) -> list[_paging.Entry] | None:
        with self.lock:
            indexes = [self.indexes.get(name, {}) for name in (index, *others)]
            if min(len(i) for i in indexes) > most:
                return None
            entries = [
                (float(score), job_id) for job_id, score in indexes[0].items() if all(job_id in i for i in indexes[1:])
            ]
        entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
        return entries

    def _member(self, index: str, ids: Sequence[str]) -> list[bool]:
        with self.lock:
            entries = self.indexes.get(index, {})
            return [job_id in entries for job_id in ids]

    def _fetch_index(self, index: str, position: _paging.Entry | None, count: int) -> list[_paging.Entry]:
        with self.lock:
            entries = [(float(score), job_id) for job_id, score in self.indexes.get(index, {}).items()]
        entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
        return [e for e in entries if _paging.after(e, position)][:count]

    def _load_records(self, ids: Sequence[str]) -> list[dict[str, Any] | Corrupt | None]:
        with self.lock:
            return [_copy(self._get_record(job_id), _paging.decode_record) for job_id in ids]

    # -- step checkpoints -----------------------------------------------------------------------

    def once_get(self, scope: str, name: str) -> str | None:
        with self.lock:
            item = self.checkpoints.get(scope)
            if item is None or item[1] <= self.clock():
                return None
            return item[0].get(name)

    def once_set(self, scope: str, name: str, result_json: str, ttl_ms: int) -> None:
        with self.lock:
            item = self.checkpoints.get(scope)
            steps = item[0] if item is not None and item[1] > self.clock() else {}
            steps[name] = result_json
            self.checkpoints[scope] = (steps, self.clock() + ttl_ms)

    # -- Watchdog -------------------------------------------------------------------------------

    def worker_processes(self) -> list[WorkerProcess]:
        from ._memory_watchdog import state

        with self.lock:
            wd = state(self)
            running = {proc: len(jobs) for proc, jobs in wd.run.items()}
            return build_processes(dict(wd.procs), dict(wd.dead), dict(wd.info), running, set(wd.pending))

    # -- dead letters ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return self.clock()

    def dead_hash(self, name: str) -> dict[str, Any]:
        return self.dead_hashes.setdefault(name, {})

    def _fetch_dead(
        self, index: str, position: _paging.Entry | None, count: int, low: float, high: float
    ) -> list[_paging.Entry]:
        with self.lock:
            scores = self.indexes.get(f"deads:{index}", {})
            entries = [(float(v), k) for k, v in scores.items() if low <= v < high]
        entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
        return [e for e in entries if _paging.after(e, position)][:count]

    def _load_dead(self, ids: Sequence[str]) -> list[tuple[_dead.Stored, _dead.Stored]]:
        with self.lock:
            return [
                (
                    _copy(self.dead_records.get(job_id), _dead.decode),
                    _copy(self._get_record(job_id), _stored.decode_object),
                )
                for job_id in ids
            ]

    def get_dead_letter(self, job_id: str) -> DeadLetter | None:
        d, job = self._load_dead([job_id])[0]
        return _dead.view(job_id, d, job, self.clock())

    def dead_letter_stats(self) -> DeadStats:
        with self.lock:
            kinds = dict(self.dead_hash("stats"))
        return _dead.stats(kinds, {q: n for q, (n, _) in self.dead_letter_queues().items()})

    def dead_letter_queues(self) -> dict[str, tuple[int, int]]:
        with self.lock:
            offsets = self.dead_hash("offset")
            return {
                q: (len(self.indexes.get(f"deads:queue:{q}", {})), int(offsets.get(q, 0)))
                for q in self.indexes.get("deads:queues", {})
            }

    def dead_letter_index(self, queue: str) -> tuple[dict[str, int], dict[str, str]]:
        with self.lock:
            ids = {k: int(v) for k, v in self.indexes.get(f"deads:queue:{queue}", {}).items()}
            return ids, dict(self.dead_hash(f"xids:{queue}"))

    def ping(self) -> None:
        return None

    # -- alerts / metrics ---

    def stats_minutes(self, first: int, last: int) -> dict[int, dict[str, int]]:
        from . import _memory_stats

        with self.lock:
            return _memory_stats.read(self, first, last)

    def count_jobs(self, statuses: Sequence[Status | str] | None = None) -> dict[str, int]:
        names = statuses_to_count(statuses)
        with self.lock:
            return {name: len(self.indexes.get(f"status:{name}", {})) for name in names}


def _copy(
    rec: dict[str, Any] | None, decode: Callable[[str], dict[str, Any] | Corrupt | None]
) -> dict[str, Any] | Corrupt | None:
    """A copy of a stored record, read as ``RedisStore`` reads its JSON (``None`` stays ``None``)."""
    if not rec:
        return None
    try:
        raw = json.dumps(rec)
    except RecursionError:
        return Corrupt("JSON nested too deep")
    except (TypeError, ValueError) as exc:
        return Corrupt(f"not JSON ({exc})")
    return decode(raw)
