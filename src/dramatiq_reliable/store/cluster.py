"""``ClusterStore``: the store on a Redis Cluster, in shards spread over its primaries.

``RedisStore("redis+cluster://host:port[,host:port…][?prefix=dr&shards=16]")`` makes one. A
shard is a whole store (the layout of :mod:`.redis`) under a prefix that is a hash tag,
``{dr:<s>}:`` or ``{dr:<s>.<k>}:`` for shard ``s`` of ``N`` (:func:`shard_prefixes`), so each
call of the library lives in one slot; the fleet's slot, ``{dr}:``, holds what the fleet
shares and ``{dr}:meta`` (``shards``: ``N``,
fixed at first use; a process configured with another ``N`` is refused in one line). The
shards' slots spread evenly over the slot space, so over the primaries, and so does the work
of the fleet. :mod:`._route` says which op goes where.

A batch is split by slot: one ``FCALL`` per slot, pipelined (the client sends each node its
calls at once, and reads them back), in up to three phases (a keyed ``finish``'s idempotency
part first; then the ops; then what depends on their answers, such as each shard's part of
the fleet's sweep). A batch whose calls reached some primaries only is reported unavailable
and retried whole by the journal (its ops may then apply twice, never zero times).

Listings read every shard (pipelined, one round trip per page for most) and merge by
``(score, id)``, newest first, with the cursor of one Redis; counts, dead-letter stats and
per-minute counters add up the shards. A read by job id goes to the job's shard.

What a shard cannot tell alone is asked of the fleet's slot or of another shard after the
batch's calls answered: a claim found ``busy`` looks up its holder's liveness in the fleet's
slot (and takes the lease over if the holder is gone), a reservation refused looks up its
holder's record in its own shard (and takes the key if that job has ended). Not as on one
Redis: an op split over slots is not applied all or nothing. See docs/scaling.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ResponseError

from .. import _stored
from ..errors import ConfigurationError, CorruptRecord, StoreUnavailable
from ..records import DeadStats, JobRecord
from ..status import Status
from . import _dead, _library, _paging
from ._route import FLEET, Plan, Router
from .base import statuses_to_count
from .redis import DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_TIMEOUT, RedisStore, _text

#: Shards of a new store on a Cluster.
DEFAULT_SHARDS = 16
#: Seconds between the retention cleanups a process adds to a shard its batches did not reach.
CLEANUP_TURN = 1.0


class ClusterStore(RedisStore):
    """The store on a Redis Cluster. See the module docstring; made by :class:`RedisStore` for a
    ``redis+cluster://`` URL (``?shards=N`` sets the shard count of a new store; default 16)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dr",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        shards: int | None = None,
    ) -> None:
        url, given = _take_shards(url)
        shards = given if given is not None else shards
        if shards is not None and (not isinstance(shards, int) or not 1 <= shards <= 1024):
            raise ConfigurationError(f"shards must be a whole number from 1 to 1024, not {shards!r}")
        super().__init__(
            url, prefix=prefix, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
        )
        name = self.prefix[1:-2]
        if "{" in name or "}" in name:
            raise ConfigurationError(f"store {self.url}: a prefix on a Redis Cluster cannot hold braces")
        if shards is not None and shards != DEFAULT_SHARDS:
            self.url += f"{'&' if '?' in self.url else '?'}shards={shards}"
        self._wanted = shards
        self._router = Router(shards or DEFAULT_SHARDS)
        self._shard_prefixes = shard_prefixes(name, self._router.n)
        self._meta_pid = 0
        self._turn = 0
        self._turn_at = 0.0

    # -- layout ----------------------------------------------------------------------------------

    @property
    def shards(self) -> int:
        """How many shards the store has (``N``)."""
        self._check_meta()
        return self._router.n

    def prefix_of(self, slot: int) -> str:
        """The prefix of shard ``slot`` (``FLEET``: the fleet's)."""
        return self.prefix if slot == FLEET else self._shard_prefixes[slot]

    def job_key(self, job_id: str, *parts: str) -> str:
        """A key of job ``job_id``'s shard: ``job_key(id, "job", id)`` → ``{dr:<s>}:job:<id>``."""
        return self._shard_prefixes[self._router.of_id(job_id)] + ":".join(parts)

    def _check_meta(self) -> None:
        """Once per process: the shard count, fixed at the store's first use (``{dr}:meta``)."""
        if self._meta_pid == os.getpid():
            return
        key = self.prefix + "meta"
        wanted = self._wanted or DEFAULT_SHARDS
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(key, "shards", wanted)
        pipe.hget(key, "shards")
        _, stored = self._call("a check", pipe.execute)
        have = int(stored or wanted)
        if self._wanted is not None and have != self._wanted:
            raise StoreUnavailable(
                f"store {self.url} has {have} shards (fixed when it was first used), not {self._wanted}: "
                f"drop shards= from the URL or give shards={have}"
            )
        if have != self._router.n:
            self._router = Router(have)
            self._shard_prefixes = shard_prefixes(self.prefix[1:-2], have)
        self._meta_pid = os.getpid()

    def _pipe(self) -> Any:
        self._check_meta()
        return self.client.pipeline(transaction=False)

    def _slots(self) -> range:
        self._check_meta()
        return range(self._router.n)

    def check_server(self) -> list[str]:
        warnings = super().check_server()
        self._check_meta()
        return warnings

    # -- writes ----------------------------------------------------------------------------------

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        ops = batch.get("ops") or []
        if not ops:
            return []
        self._ensure_library()
        self._check_meta()
        meta = {k: v for k, v in batch.items() if k != "ops"}
        if self._clock is not None:
            meta["now_ms"] = int(self._clock())
        plans = [self._router.plan(op) for op in ops]
        for phase in (0, 1):
            calls: dict[int, list[tuple[Plan, dict[str, Any]]]] = {}
            for plan in plans:
                for when, slot, part in plan.parts:
                    if when == phase:
                        calls.setdefault(slot, []).append((plan, part))
            if phase == 1 and "retention_ms" in meta and time.monotonic() >= self._turn_at:
                # The retention cleanup runs in the shards a call reaches; one more in turn each
                # second, so that a shard without traffic is cleaned up too.
                self._turn_at = time.monotonic() + CLEANUP_TURN
                self._turn = (self._turn + 1) % self._router.n
                calls.setdefault(self._turn, [])
            self._run(calls, meta, followup=False)
        self._second_look(plans, meta)
        later: dict[int, list[tuple[Plan, dict[str, Any]]]] = {}
        for plan in plans:
            for slot, part in self._router.followups(plan):
                later.setdefault(slot, []).append((plan, part))
        self._run(later, meta, followup=True)
        released = Plan({})
        self._run(_group(released, self._router.releases(plans)), meta, followup=False)
        results = [plan.result for plan in plans]
        for op, result in zip(ops, results, strict=True):
            if isinstance(op, dict) and op.get("k") == "workers" and isinstance(result.get("procs"), list):
                self._fill_workers(result["procs"], int((op.get("ctl") or {}).get("max") or 100))
        return results

    def apply_serial(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return self.apply(batch)

    def _second_look(self, plans: list[Plan], meta: dict[str, Any]) -> None:
        """What a shard cannot tell alone, asked of the fleet's slot or another shard: whether a
        claim's lease holder is gone (the fleet knows its liveness), whether a reservation's
        holder has ended (its record is in its own shard). Then the takeovers, in the key's shard."""
        busy = [p for p in plans if p.op.get("k") == "claim" and p.result.get("outcome") == "busy"]
        busy = [p for p in busy if _holder(p.result.get("owner")) and _holder(p.op["idem"].get("token"))]
        refused = [p for p in plans if p.op.get("k") == "reserve" and p.result.get("outcome") == "refused"]
        refused = [p for p in refused if isinstance(p.result.get("holder"), str)]
        if not busy and not refused:
            return
        pipe = self._pipe()
        for p in busy:
            holder, claimer = _holder(p.result["owner"]), _holder(p.op["idem"]["token"])
            pipe.zscore(self.k("wd", "procs"), holder)
            pipe.zscore(self.k("wd", "dead"), holder)
            pipe.hget(self.k("wd", "info"), claimer)
        for p in refused:
            pipe.get(self.job_key(p.result["holder"], "job", p.result["holder"]))
        replies = self._call("a read", pipe.execute)
        now = int(meta["now_ms"]) if "now_ms" in meta else self.store_time_ms()
        calls: dict[int, list[tuple[Plan, dict[str, Any]]]] = {}
        for i, p in enumerate(busy):
            deadline, dead, info = replies[3 * i : 3 * i + 3]
            idem = p.op["idem"]
            gone, wait = _gone(deadline, dead, info, int(idem["lease_ms"]), int(p.result.get("retry_in") or 0), now)
            if gone:
                section = {"key": idem["key"], "token": idem["token"], "owner": p.result["owner"]}
                part = {"k": "shard_takeover", "id": p.op["id"], "idem": {**section, "lease_ms": idem["lease_ms"]}}
                calls.setdefault(self._router.of_key(idem["key"]), []).append((p, part))
            elif wait is not None and wait + 50 < int(p.result.get("retry_in") or 0):
                p.result["retry_in"] = max(wait + 50, 100)
        for p, raw in zip(refused, replies[3 * len(busy) :], strict=True):
            record = _paging.decode_record(raw)
            if isinstance(record, dict) and record.get("status") in _TERMINAL:
                idem = p.op["idem"]
                section = {"key": idem["key"], "ttl_ms": idem["ttl_ms"], "holder": p.result["holder"]}
                part = {"k": "shard_reserve", "id": p.op["id"], "idem": section}
                calls.setdefault(self._router.of_key(idem["key"]), []).append((p, part))
        for entries in calls.values():
            for p, _ in entries:
                p.result.clear()
        self._run(calls, meta, followup=False)

    def _run(
        self, calls: dict[int, list[tuple[Plan, dict[str, Any]]]], meta: dict[str, Any], *, followup: bool
    ) -> None:
        """One ``FCALL`` per slot, pipelined; each answer folded into its ops' results."""
        if not calls:
            return
        slots = sorted(calls)
        payloads = [json.dumps({**meta, "ops": [part for _, part in calls[s]]}, separators=(",", ":")) for s in slots]
        raws = self._fcalls(slots, payloads)
        for slot, raw in zip(slots, raws, strict=True):
            results = self._results(raw)
            for (plan, _), result in zip(calls[slot], results, strict=False):
                Router.merge(plan, result, followup)

    def _fcalls(self, slots: list[int], payloads: list[str]) -> list[Any]:
        def send(todo: list[int]) -> list[Any]:
            if len(todo) == 1:
                i = todo[0]
                try:
                    return [self.client.execute_command(*self._fcall_args(slots[i], payloads[i]))]
                except ResponseError as exc:  # the pipeline's way: the error in place of the answer
                    if not _library.missing(exc):
                        raise
                    return [exc]
            pipe = self.client.pipeline(transaction=False)
            for i in todo:
                pipe.execute_command(*self._fcall_args(slots[i], payloads[i]))
            replies: list[Any] = pipe.execute(raise_on_error=False)
            return replies

        raws: list[Any] = self._call("a batch", send, list(range(len(slots))))
        missing = [i for i, raw in enumerate(raws) if isinstance(raw, BaseException) and _library.missing(raw)]
        if missing:
            # A primary without the library (it joined, restarted, or a slot moved to it): load
            # it on every primary, and send those calls again (they did not run).
            self._loaded_pid = 0
            self._ensure_library()
            for i, raw in zip(missing, self._call("a batch", send, missing), strict=True):
                raws[i] = raw
        for raw in raws:
            if isinstance(raw, BaseException):
                self._call("a batch", _raise, raw)
        return raws

    def _fcall_args(self, slot: int, payload: str) -> tuple[Any, ...]:
        prefix = self.prefix_of(slot)
        return ("FCALL", _library.APPLY, 1, prefix + "meta", prefix, payload)

    def _fill_workers(self, procs: list[Any], most: int) -> None:
        """The jobs each process runs, from its run hash in every shard (``workers``)."""
        names = [str(p.get("proc")) for p in procs if isinstance(p, dict)]
        if not names:
            return
        pipe = self._pipe()
        for proc in names:
            for s in self._slots():
                pipe.hgetall(f"{self._shard_prefixes[s]}wd:run:{proc}")
        replies = self._call("a read", pipe.execute)
        per: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        counts: dict[str, int] = {}
        i = 0
        for proc in names:
            for _ in self._slots():
                items = replies[i]
                i += 1
                counts[proc] = counts.get(proc, 0) + len(items)
                for job_id, meta in items.items():
                    decoded = _stored.decode_object(meta)
                    per.setdefault(proc, []).append((_text(job_id), decoded if isinstance(decoded, dict) else {}))
        wanted = [(proc, job_id, meta) for proc in names for job_id, meta in per.get(proc, [])[:most]]
        records = self._load_records([job_id for _, job_id, _ in wanted])
        jobs: dict[str, list[dict[str, Any]]] = {}
        for (proc, job_id, meta), rec in zip(wanted, records, strict=True):
            data = _stored.absolute(rec) if isinstance(rec, dict) else {}
            entry = {"id": job_id, "a": meta.get("a") or data.get("actor"), "q": meta.get("q") or data.get("queue")}
            entry.update(start=data.get("start"), att=data.get("att"), st=data.get("status"))
            jobs.setdefault(proc, []).append({k: v for k, v in entry.items() if v is not None})
        for p in procs:
            if isinstance(p, dict):
                p["n"] = counts.get(str(p.get("proc")), 0)
                p["jobs"] = jobs.get(str(p.get("proc")), [])

    # -- reads -----------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        self._check_meta()
        raw = self._call("a read", self.client.get, self.job_key(job_id, "job", job_id))
        data = _paging.decode_record(raw)
        if isinstance(data, _stored.Corrupt):
            raise CorruptRecord(f"the record of job {job_id!r} is corrupt: {data.reason}", job_id)
        return JobRecord.from_stored(data, job_id) if data else None

    def _load_records(self, ids: Sequence[str]) -> list[dict[str, Any] | _stored.Corrupt | None]:
        if not ids:
            return []
        self._check_meta()
        raws = self._call("a read", self.client.mget_nonatomic, [self.job_key(i, "job", i) for i in ids])
        return [_paging.decode_record(raw) for raw in raws]

    def _zpages(
        self, name: str, top: float | str, bottom: float | str, position: _paging.Entry | None, count: int
    ) -> list[_paging.Entry]:
        """``_zpage`` over zset ``name`` of every shard, merged newest first."""
        found: list[_paging.Entry] = []
        offsets = dict.fromkeys(self._slots(), 0)
        kept = dict.fromkeys(offsets, 0)
        active = list(offsets)
        while active:
            pipe = self._pipe()
            for s in active:
                key = self._shard_prefixes[s] + name
                pipe.zrevrangebyscore(key, top, bottom, start=offsets[s], num=count + 16, withscores=True)
            replies = self._call("a listing", pipe.execute)
            more = []
            for s, rows in zip(active, replies, strict=True):
                for member, score in rows:
                    entry = (float(score), _text(member))
                    if _paging.after(entry, position):
                        found.append(entry)
                        kept[s] += 1
                if len(rows) == count + 16 and kept[s] < count:
                    offsets[s] += len(rows)
                    more.append(s)
            active = more
        found.sort(reverse=True)
        return found[:count]

    def _actors(self) -> list[str]:
        pipe = self._pipe()
        for s in self._slots():
            pipe.smembers(self._shard_prefixes[s] + "jobs:actors")
        return sorted({_text(a) for members in self._call("a listing", pipe.execute) for a in members})

    def _fetch_indexes(
        self, indexes: Sequence[str], position: _paging.Entry | None, count: int
    ) -> list[list[_paging.Entry]]:
        """The first page of every index of every shard in one pipelined round trip; an index
        that one shard's first page cannot answer is read on shard by shard (:meth:`_zpages`)."""
        top: float | str = "+inf" if position is None else position[0]
        slots = list(self._slots())
        pipe = self._pipe()
        for index in indexes:
            for s in slots:
                key = self._shard_prefixes[s] + "jobs:" + index
                pipe.zrevrangebyscore(key, top, "-inf", start=0, num=count + 16, withscores=True)
        replies = iter(self._call("a listing", pipe.execute))
        out: list[list[_paging.Entry]] = []
        for index in indexes:
            found: list[_paging.Entry] = []
            whole = True
            for _ in slots:
                rows = next(replies)
                kept = [(float(score), _text(m)) for m, score in rows]
                kept = [e for e in kept if _paging.after(e, position)]
                found.extend(kept)
                if len(rows) == count + 16 and len(kept) < count:
                    whole = False
            if whole:
                found.sort(reverse=True)
                out.append(found[:count])
            else:
                out.append(self._fetch_index(index, position, count))
        return out

    def _member(self, index: str, ids: Sequence[str]) -> list[bool]:
        groups: dict[int, list[int]] = {}
        for i, job_id in enumerate(ids):
            groups.setdefault(self._router.of_id(job_id), []).append(i)
        pipe = self._pipe()
        order = sorted(groups)
        for s in order:
            pipe.zmscore(self._shard_prefixes[s] + "jobs:" + index, [ids[i] for i in groups[s]])
        out = [False] * len(ids)
        for s, scores in zip(order, self._call("a listing", pipe.execute), strict=True):
            for i, score in zip(groups[s], scores, strict=True):
                out[i] = score is not None
        return out

    def _intersect(self, index: str, others: Sequence[str], most: int) -> list[_paging.Entry] | None:
        names = ["jobs:" + name for name in (index, *others)]
        slots = list(self._slots())
        pipe = self._pipe()
        for s in slots:
            for name in names:
                pipe.zcard(self._shard_prefixes[s] + name)
        sizes = self._call("a listing", pipe.execute)
        per = [sizes[i * len(names) : (i + 1) * len(names)] for i in range(len(slots))]
        totals = [sum(p[j] for p in per) for j in range(len(names))]
        if min(totals) > most:
            return None
        wanted = [s for s, p in zip(slots, per, strict=True) if min(p) > 0]
        if not wanted:
            return []
        pipe = self._pipe()
        for s in wanted:
            keys = [self._shard_prefixes[s] + name for name in names]
            pipe.zinter({key: (1 if i == 0 else 0) for i, key in enumerate(keys)}, withscores=True)
        entries: list[_paging.Entry] = []
        for rows in self._call("a listing", pipe.execute):
            entries.extend((float(score), _text(m)) for m, score in rows)
        entries.sort(reverse=True)
        return entries

    def count_jobs(self, statuses: Sequence[Status | str] | None = None) -> dict[str, int]:
        names = statuses_to_count(statuses)
        actors = self._actors()
        slots = list(self._slots())
        pipe = self._pipe()
        for name in names:
            for s in slots:
                for actor in actors:
                    pipe.zcard(self._shard_prefixes[s] + "jobs:" + _paging.index_name(name, actor))
        counts = iter(self._call("a count", pipe.execute) if actors else [])
        return {name: sum(int(next(counts)) for _ in range(len(slots) * len(actors))) for name in names}

    def stats_minutes(self, first: int, last: int) -> dict[int, dict[str, int]]:
        minutes = list(range(first, last + 1))
        pipe = self._pipe()
        for s in self._slots():
            for minute in minutes:
                pipe.hgetall(f"{self._shard_prefixes[s]}stats:m:{minute}")
        found = self._call("a read", pipe.execute)
        out: dict[int, dict[str, int]] = {}
        for i, fields in enumerate(found):
            if not fields:
                continue
            into = out.setdefault(minutes[i % len(minutes)], {})
            for f, v in fields.items():
                name = _text(f)
                # Counts add up; the longest wait ("w\t<queue>") is the longest of the shards'.
                into[name] = max(into.get(name, 0), int(v)) if name.startswith("w\t") else into.get(name, 0) + int(v)
        return out

    # -- step checkpoints (in the shard of their key) ---------------------------------------------

    def _once_key(self, scope: str) -> str:
        self._check_meta()
        return f"{self._shard_prefixes[self._router.of_key(scope)]}idem:once:{scope}"

    # -- Watchdog --------------------------------------------------------------------------------

    def _running_counts(self, procs: Sequence[str]) -> dict[str, int]:
        """A process's run hash is one per shard: their sizes add up."""
        if not procs:
            return {}
        slots = list(self._slots())
        pipe = self._pipe()
        for proc in procs:
            for s in slots:
                pipe.hlen(f"{self._shard_prefixes[s]}wd:run:{proc}")
        found = iter(self._call("a read", pipe.execute))
        return {proc: sum(int(next(found)) for _ in slots) for proc in procs}

    # -- dead letters ----------------------------------------------------------------------------

    def _load_dead(self, ids: Sequence[str]) -> list[tuple[_dead.Stored, _dead.Stored]]:
        if not ids:
            return []
        self._check_meta()
        keys = [self.job_key(i, "dead", i) for i in ids] + [self.job_key(i, "job", i) for i in ids]
        raws = self._call("a read", self.client.mget_nonatomic, keys)
        n = len(ids)
        return [(_dead.decode(raws[i]), _stored.decode_object(raws[n + i])) for i in range(n)]

    def dead_letter_stats(self) -> DeadStats:
        pipe = self._pipe()
        for s in self._slots():
            pipe.hgetall(self._shard_prefixes[s] + "deads:stats")
        kinds: dict[str, int] = {}
        for found in self._call("a read", pipe.execute):
            for k, v in found.items():
                kinds[_text(k)] = kinds.get(_text(k), 0) + int(v)
        queues = {q: n for q, (n, _) in self.dead_letter_queues().items()}
        return _dead.stats(kinds, queues)

    def dead_letter_queues(self) -> dict[str, tuple[int, int]]:
        pipe = self._pipe()
        prefixes = [self.prefix, *self._shard_prefixes]
        for p in prefixes:
            pipe.zrange(p + "deads:queues", 0, -1)
        names = sorted({_text(q) for found in self._call("a read", pipe.execute) for q in found})
        if not names:
            return {}
        pipe = self._pipe()
        for q in names:
            for p in self._shard_prefixes:
                pipe.zcard(f"{p}deads:queue:{q}")
        pipe.hmget(self.k("deads", "offset"), names)
        replies = self._call("a read", pipe.execute)
        offsets = replies[-1]
        n = len(self._shard_prefixes)
        return {
            q: (sum(int(c) for c in replies[i * n : (i + 1) * n]), int(offsets[i] or 0)) for i, q in enumerate(names)
        }

    def dead_letter_index(self, queue: str) -> tuple[dict[str, int], dict[str, str]]:
        pipe = self._pipe()
        for p in self._shard_prefixes:
            pipe.zrange(f"{p}deads:queue:{queue}", 0, -1, withscores=True)
            pipe.hgetall(f"{p}deads:xids:{queue}")
        replies = self._call("a read", pipe.execute)
        ids: dict[str, int] = {}
        xids: dict[str, str] = {}
        for i in range(0, len(replies), 2):
            ids.update({_text(m): int(score) for m, score in replies[i]})
            xids.update({_text(x): _text(j) for x, j in replies[i + 1].items()})
        return ids, xids


def _group(plan: Plan, parts: list[tuple[int, dict[str, Any]]]) -> dict[int, list[tuple[Plan, dict[str, Any]]]]:
    calls: dict[int, list[tuple[Plan, dict[str, Any]]]] = {}
    for slot, part in parts:
        calls.setdefault(slot, []).append((plan, part))
    return calls


def shard_prefixes(name: str, shards: int) -> list[str]:
    """The prefix of each shard: ``{<name>:<s>}:``, or ``{<name>:<s>.<k>}:`` with the smallest
    ``k`` that puts its slot in the middle half of the ``s``-th of ``shards`` equal ranges of
    the 16384 slots, so that the shards spread evenly over primaries that hold ranges of slots."""
    out = []
    for s in range(shards):
        width = 16384 / shards
        low, high = int(s * width + width / 4), max(int(s * width + 3 * width / 4), int(s * width + width / 4) + 1)
        tag = f"{name}:{s}"
        k = 0
        while not low <= key_slot(tag.encode()) < high and k < 100_000:
            tag = f"{name}:{s}.{k}"
            k += 1
        out.append(f"{{{tag}}}:")
    return out


_TERMINAL = frozenset({"done", "failed", "skipped", "cancelled"})


def _holder(token: Any) -> str | None:
    """The process of a lease token ``<job id>|<process>|<n>``."""
    if not isinstance(token, str):
        return None
    parts = token.split("|")
    return parts[1] if len(parts) >= 3 and parts[1] else None


def _gone(deadline: Any, dead: Any, info: Any, lease_ms: int, pttl: int, now: int) -> tuple[bool, int | None]:
    """Whether a lease's holder is gone, else in how many ms it would count as gone (as the
    library's ``holder_gone`` on one Redis; here ``pttl`` is the lease's remaining time)."""
    if deadline is not None:
        return (float(deadline) < now, int(float(deadline)) - now)
    if dead is not None:
        return True, None
    me = _stored.decode_object(info)
    ab = me.get("ab") if isinstance(me, dict) else None
    if not isinstance(ab, (int, float)):
        return False, None
    limit = max(int(ab), lease_ms // 2)
    age = lease_ms - pttl
    return (age > limit, limit - age)


def _raise(exc: BaseException) -> None:
    raise exc


def _take_shards(url: str) -> tuple[str, int | None]:
    """``shards=N`` taken out of a Cluster URL's query."""
    from urllib.parse import parse_qsl, urlencode

    base, sep, query = url.partition("?")
    if not sep:
        return url, None
    pairs = parse_qsl(query, keep_blank_values=True)
    given = [v for k, v in pairs if k == "shards"]
    if not given:
        return url, None
    if not given[-1].isdigit():
        raise ConfigurationError(f"shards must be a whole number from 1 to 1024, not {given[-1]!r}")
    rest = [(k, v) for k, v in pairs if k != "shards"]
    return base + (f"?{urlencode(rest)}" if rest else ""), int(given[-1])


__all__ = ["DEFAULT_SHARDS", "ClusterStore"]
