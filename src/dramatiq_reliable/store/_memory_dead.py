"""DeadLetters' op handlers for ``MemoryStore``: the Python twin of ``lua/40_dead.lua``."""

from __future__ import annotations

from typing import Any

from ..status import TERMINAL
from ._memory_jobs import event, set_status
from .memory import Batch, Ctx, MemoryStore, on


def kind_of(d: dict[str, Any]) -> str:
    err = d.get("err")
    etype = "malformed" if d.get("bad") else (err.get("type") if isinstance(err, dict) else None) or "?"
    return f"{d.get('actor') or '?'}\t{etype}"


def remove(store: MemoryStore, job_id: str) -> dict[str, Any] | None:
    store.index("deads:time").pop(job_id, None)
    store.index("deads:exp").pop(job_id, None)
    d = store.dead_records.pop(job_id, None)
    if d is None:
        return None
    store.index(f"deads:queue:{d['queue']}").pop(job_id, None)
    store.index(f"deads:actor:{d.get('actor') or '?'}").pop(job_id, None)
    xmap = store.dead_hash(f"xids:{d['queue']}")
    for x in d.get("xids") or []:
        if xmap.get(x) == job_id:
            del xmap[x]
    stats = store.dead_hash("stats")
    kind = kind_of(d)
    stats[kind] = stats.get(kind, 0) - 1
    if stats[kind] <= 0:
        del stats[kind]
    return d


def save(b: Batch, d: dict[str, Any]) -> None:
    store = b.store
    job_id = d["id"]
    store.dead_records[job_id] = d
    store.index("deads:time")[job_id] = d["dead"]
    store.index("deads:exp")[job_id] = d["exp"]
    store.index(f"deads:queue:{d['queue']}")[job_id] = d["dead"]
    store.index(f"deads:actor:{d.get('actor') or '?'}")[job_id] = d["dead"]
    store.index("deads:queues")[d["queue"]] = b.now
    xmap = store.dead_hash(f"xids:{d['queue']}")
    for x in d.get("xids") or []:
        xmap[x] = job_id
    stats = store.dead_hash("stats")
    kind = kind_of(d)
    stats[kind] = stats.get(kind, 0) + 1


def cleanup(b: Batch) -> None:
    if getattr(b, "dead_cleaned", False):
        return
    b.dead_cleaned = True  # type: ignore[attr-defined]
    expired = sorted((score, i) for i, score in b.store.index("deads:exp").items() if score <= b.now)
    for _score, job_id in expired[:100]:
        remove(b.store, job_id)


def merge_xids(old: list[str] | None, new: list[str]) -> list[str]:
    out: list[str] = []
    for x in [*(old or []), *new]:
        if x not in out:
            out.append(x)
    return out


def record(s: dict[str, Any], job_id: str, dead: int, src: str) -> dict[str, Any]:
    d = {
        "id": job_id,
        "actor": s.get("actor"),
        "queue": s["queue"],
        "dead": dead,
        "exp": dead + int(s["ret"]),
        "att": s.get("att"),
        "maxr": s.get("maxr"),
        "err": s.get("err"),
        "msg": s.get("msg"),
        "enc": s.get("enc"),
        "src": src,
        "bad": s.get("bad"),
    }
    return {k: v for k, v in d.items() if v is not None}


@on("finish", 40, "dl")
def capture(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    job_id = ctx.op["id"]
    old = remove(b.store, job_id)
    xids = [s["xid"]] if s.get("xid") else []
    if old is not None and old["queue"] == s["queue"]:
        xids = merge_xids(old.get("xids"), xids)
    d = record(s, job_id, b.now, "mw")
    if xids:
        d["xids"] = xids
    save(b, d)
    cleanup(b)


@on("dead_queue", 40, "dl")
def register_queues(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    for q in s["queues"]:
        b.store.index("deads:queues")[q] = b.now


@on("dead_import", 20, "job")
def import_job(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    if entry.rec is not None and entry.rec["status"] not in TERMINAL:
        entry.rec["fin"] = b.now
        entry.rec.pop("next", None)
        set_status(b, entry, "failed", s.get("detail"), s)


@on("dead_import", 40, "dl")
def import_dead(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    job_id = ctx.op["id"]
    d = b.store.dead_records.get(job_id)
    if d is not None:
        if d["queue"] == s["queue"] and s.get("xid"):
            before = len(d.get("xids") or [])
            d["xids"] = merge_xids(d.get("xids"), [s["xid"]])
            if len(d["xids"]) > before:
                b.store.dead_hash(f"xids:{d['queue']}")[s["xid"]] = job_id
        ctx.res["known"] = True
        return
    d = record(s, job_id, int(s["dead"]), "broker")
    d["exp"] = b.now + int(s["ret"])  # kept ``ret`` from now: the broker still holds it
    if s.get("xid"):
        d["xids"] = [s["xid"]]
    save(b, d)
    cleanup(b)


@on("replay", 20, "job")
def replay(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    rec = entry.rec
    if rec is None:
        return
    if rec["status"] != "failed":
        event(b, rec, rec["status"], f"{s['detail']} (it was {rec['status']}, so its status is kept)", s.get("hist"))
        entry.dirty = True
        return
    rec["att"] = 0
    for f in ("fin", "next", "stack", "start"):
        rec.pop(f, None)
    set_status(b, entry, "queued", s.get("detail"), s)
    ctx.res["requeued"] = True


@on("replayed", 40, "dl")
def replayed(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    remove(b.store, ctx.op["id"])
    cleanup(b)


@on("replay_failed", 20, "job")
def replay_failed(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    if entry.rec is not None and entry.rec["status"] == "queued":
        entry.rec["fin"] = b.now
        set_status(b, entry, "failed", s.get("detail"), s)


@on("dead_purge", 20, "job")
def purge_job(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    if entry.rec is not None and entry.rec["status"] == "failed":
        event(b, entry.rec, "failed", s.get("detail"), s.get("hist"))
        entry.dirty = True


@on("dead_purge", 40, "dl")
def purge_dead(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    ctx.res["removed"] = remove(b.store, ctx.op["id"]) is not None
    cleanup(b)


@on("dead_forget", 15, "dl")
def forget_dead(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    d = b.store.dead_records.get(ctx.op["id"])
    if d is not None and int(d.get("dead") or 0) < int(s["before"]):
        remove(b.store, ctx.op["id"])
        ctx.outcome = "forgotten"
        ctx.res["removed"] = True


@on("dead_forget", 20, "job")
def forget_job(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if ctx.outcome != "forgotten":
        return
    entry = b.load(ctx.op["id"])
    if entry.rec is not None and entry.rec["status"] == "failed":
        event(b, entry.rec, "failed", s.get("detail"), s.get("hist"))
        entry.dirty = True


@on("dead_sync", 40, "dl")
def synced(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    b.store.dead_hash("offset")[s["queue"]] = int(s["offset"])
    b.store.index("deads:queues")[s["queue"]] = b.now


@on("dead_lock", 40, "dl")
def lock(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    holder = b.store.sget("deadlock", s["queue"])
    if holder is None:
        b.store.sset("deadlock", s["queue"], s["token"], s["ttl"])
        ctx.res["ok"] = True
    else:
        ctx.res["ok"] = False
        ctx.res["holder"] = holder


@on("dead_unlock", 40, "dl")
def unlock(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if b.store.sget("deadlock", s["queue"]) == s["token"]:
        b.store.sdel("deadlock", s["queue"])
