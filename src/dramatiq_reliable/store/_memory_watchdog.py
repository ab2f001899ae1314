"""The Watchdog's op handlers for ``MemoryStore``: the Python twin of ``lua/30_watchdog.lua``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._memory_jobs import set_status
from .memory import Batch, Ctx, MemoryStore, on

#: Dead processes handled per sweep, and pending recoveries returned, at most.
WD_MAX = 100


@dataclass
class WatchdogState:
    """The Watchdog's keys of one ``MemoryStore`` (see the key layout in ``store/redis.py``)."""

    #: proc -> deadline (ms)
    procs: dict[str, int] = field(default_factory=dict)
    #: proc -> JSON of what it is
    info: dict[str, str] = field(default_factory=dict)
    #: proc -> {job id: JSON {a, q, lk, lt}}
    run: dict[str, dict[str, str]] = field(default_factory=dict)
    #: proc -> when it was found dead (ms)
    dead: dict[str, int] = field(default_factory=dict)
    #: dead procs whose broker messages are still to be put back
    pending: set[str] = field(default_factory=set)
    #: (owner, expires at ms) of the sweep lock
    lock: tuple[str, int] | None = None


def state(store: MemoryStore) -> WatchdogState:
    """The Watchdog's state in ``store`` (created on first use)."""
    wd: WatchdogState | None = store.__dict__.get("_watchdog")
    if wd is None:
        wd = store.__dict__["_watchdog"] = WatchdogState()
    return wd


def _decode(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _by_score(items: dict[str, int], upto: float, limit: int) -> list[str]:
    """Members scored at most ``upto``, by (score, member), like ZRANGEBYSCORE … LIMIT."""
    return [m for s, m in sorted((s, m) for m, s in items.items() if s <= upto)][:limit]


def _abandon(b: Batch, wd: WatchdogState, proc: str, why: str, s: dict[str, Any], out: list[Any]) -> None:
    for job_id, raw in sorted(wd.run.get(proc, {}).items()):
        meta = _decode(raw)
        entry = b.load(job_id)
        rec = entry.rec
        if rec is not None:
            if rec.get("wp") == proc and rec["status"] in ("running", "stuck"):
                set_status(b, entry, "abandoned", why, s)
                hit = {k: rec.get(f) for k, f in (("actor", "actor"), ("queue", "queue"), ("att", "att"))}
                hit.update(id=job_id, maxr=rec.get("maxr"), keys=rec.get("keys"), worker=rec.get("worker"), proc=proc)
                out.append({k: v for k, v in hit.items() if v is not None})
        else:
            item = {"id": job_id, "actor": meta.get("a"), "queue": meta.get("q"), "proc": proc}
            out.append({k: v for k, v in item.items() if v})
        if meta.get("lk") and meta.get("lt") and b.store.sget("lease", meta["lk"]) == meta["lt"]:
            b.store.sdel("lease", meta["lk"])


def _forget(wd: WatchdogState, proc: str) -> None:
    wd.run.pop(proc, None)
    wd.info.pop(proc, None)
    wd.dead.pop(proc, None)
    wd.procs.pop(proc, None)
    wd.pending.discard(proc)


def _bury(b: Batch, wd: WatchdogState, proc: str, why: str, s: dict[str, Any], out: list[Any]) -> None:
    wd.procs.pop(proc, None)
    wd.dead[proc] = b.now
    if _decode(wd.info.get(proc)).get("bid"):
        wd.pending.add(proc)
    _abandon(b, wd, proc, why, s, out)


def _sweep(b: Batch, wd: WatchdogState, s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"abandoned": [], "dead": [], "pending": [], "bids": []}
    for proc in _by_score(wd.procs, b.now, WD_MAX):
        why = f"abandoned: its worker {proc} stopped heartbeating; the broker will deliver it again"
        _bury(b, wd, proc, why, s, out["abandoned"])
        out["dead"].append(proc)
    for proc in _by_score(wd.dead, b.now - int(s["keep"]), WD_MAX):
        _forget(wd, proc)
    if wd.pending:
        for proc in sorted(wd.pending)[:WD_MAX]:
            info = _decode(wd.info.get(proc))
            if info.get("bid"):
                item = {"proc": proc, **{k: info.get(k) for k in ("bid", "broker", "ns", "queues")}}
                out["pending"].append({k: v for k, v in item.items() if v is not None})
            else:
                wd.pending.discard(proc)
        for proc in _by_score(wd.dead, float("inf"), 10 * WD_MAX + 1):
            bid = _decode(wd.info.get(proc)).get("bid")
            if bid:
                out["bids"].append(bid)
    return out


@on("beat", 30, "wd")
def beat(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    wd = state(b.store)
    proc = s["proc"]
    if proc in wd.dead:
        del wd.dead[proc]
        ctx.res["revived"] = True
        if proc in wd.pending:
            wd.pending.discard(proc)
        elif _decode(wd.info.get(proc)).get("bid"):
            ctx.res["recovered"] = True
        back = 0
        for job_id in list(wd.run.get(proc, {})):
            entry = b.load(job_id)
            if entry.rec is not None and entry.rec.get("wp") == proc and entry.rec["status"] == "abandoned":
                set_status(b, entry, "running", f"running again: its worker {proc} answers again", s)
                back += 1
        ctx.res["back"] = back
    wd.procs[proc] = b.now + int(s["ab"])
    if s.get("info") is not None:
        wd.info[proc] = json.dumps(s["info"])
    if s.get("sweep") and (wd.lock is None or wd.lock[1] <= b.now):
        wd.lock = (proc, b.now + int(s["sweep"]))
        ctx.res["sweep"] = _sweep(b, wd, s)


@on("start", 30, "wd")
def start(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    wd = state(b.store)
    job_id = ctx.op["id"]
    meta = {"a": s.get("a"), "q": s.get("q"), "lk": s.get("lk"), "lt": s.get("lt")}
    wd.run.setdefault(s["proc"], {})[job_id] = json.dumps({k: v for k, v in meta.items() if v is not None})
    wd.procs.setdefault(s["proc"], b.now + int(s["ab"]))
    entry = b.load(job_id)
    if entry.rec is not None and entry.rec["status"] == "running":
        entry.rec["wp"] = s["proc"]
        entry.dirty = True


@on("finish", 30, "wd")
def finish(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    state(b.store).run.get(s["proc"], {}).pop(ctx.op["id"], None)


@on("stuck", 30, "wd")
def stuck(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    rec = entry.rec
    if rec is None:
        ctx.res["norec"] = True
        return
    if rec["status"] == "running" and rec.get("wp") == s["proc"] and int(rec.get("att") or 0) == int(s.get("att") or 0):
        rec["stack"] = s.get("stack")
        set_status(b, entry, "stuck", s.get("detail"), s)
        ctx.res["marked"] = True


@on("bye", 30, "wd")
def bye(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    wd = state(b.store)
    proc = s["proc"]
    if wd.run.get(proc):
        out: list[Any] = []
        why = f"abandoned: its worker {proc} shut down before it finished; the broker will deliver it again"
        _bury(b, wd, proc, why, s, out)
        ctx.res["abandoned"] = out
    else:
        _forget(wd, proc)


@on("recovered", 30, "wd")
def recovered(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    wd = state(b.store)
    for proc in s.get("procs") or []:
        wd.pending.discard(proc)
