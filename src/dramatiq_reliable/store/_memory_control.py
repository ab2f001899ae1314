"""Operator controls' op handlers for ``MemoryStore``: the Python twin of ``lua/80_control.lua``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..status import TERMINAL
from ._memory_jobs import event, set_status
from .memory import Batch, Ctx, MemoryStore, on

#: Log entries kept (the latest).
CTL_KEEP = 100_000


@dataclass
class ControlState:
    """The control keys of one ``MemoryStore`` (see ``lua/80_control.lua``)."""

    #: target ("actor:<name>" | "queue:<name>") -> JSON {since, by}
    paused: dict[str, str] = field(default_factory=dict)
    #: "c:<id>" | "n:<id>" -> sequence number
    log: dict[str, int] = field(default_factory=dict)
    seq: int = 0


def state(store: MemoryStore) -> ControlState:
    ctl: ControlState | None = store.__dict__.get("_control")
    if ctl is None:
        ctl = store.__dict__["_control"] = ControlState()
    return ctl


def _log(b: Batch, kind: str, job_id: str) -> int:
    ctl = state(b.store)
    ctl.seq += 1
    member = f"{kind}:{job_id}"
    ctl.log.pop(member, None)
    ctl.log[member] = ctl.seq
    while len(ctl.log) > CTL_KEEP:
        oldest = min(ctl.log, key=lambda m: ctl.log[m])
        del ctl.log[oldest]
    return ctl.seq


def _paused(b: Batch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target, raw in state(b.store).paused.items():
        try:
            out[target] = json.loads(raw)
        except ValueError:
            out[target] = {"since": 0}
    return out


@on("ctl_beat", 80, "ctl")
def beat(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    ctx.res["paused"] = _paused(b)
    after = int(s.get("after") or 0)
    most = int(s.get("max") or 10_000)
    entries = sorted((seq, member) for member, seq in state(b.store).log.items() if seq > after)[:most]
    ctx.res["log"] = [member for _, member in entries]
    ctx.res["seq"] = max([after, *(seq for seq, _ in entries)])
    ctx.res["more"] = len(entries) >= most


@on("pause", 80, "ctl")
def pause(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    paused = state(b.store).paused
    raw = paused.get(s["target"])
    cur = json.loads(raw) if raw else None
    if s.get("on"):
        if cur:
            ctx.res.update(changed=False, since=cur.get("since"))
            if cur.get("by") is not None:
                ctx.res["by"] = cur["by"]
        else:
            paused[s["target"]] = json.dumps({"since": b.now, "by": s.get("by")})
            ctx.res.update(changed=True, since=b.now)
    elif cur:
        del paused[s["target"]]
        ctx.res.update(changed=True, since=cur.get("since"))
    else:
        ctx.res["changed"] = False


@on("paused", 80, "ctl")
def paused(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    ctx.res["paused"] = _paused(b)


@on("cancel", 80, "ctl")
def cancel(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    rec = entry.rec
    if rec is None:
        ctx.res["state"] = "unknown"
        return
    prev = rec["status"]
    ctx.res["state"] = prev
    if prev in TERMINAL:
        return
    detail = f"cancelled by {s.get('by') or '?'}"
    if prev in ("running", "stuck"):
        detail += "; its worker is asked to stop it"
    else:
        detail += f" (was {prev}); it will not run"
    rec["fin"] = b.now
    rec.pop("next", None)
    set_status(b, entry, "cancelled", detail, s)
    ctx.res.update(state="cancelled", was=prev, seq=_log(b, "c", ctx.op["id"]))


@on("retry_now", 80, "ctl")
def retry_now(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    rec = entry.rec
    if rec is None:
        ctx.res["state"] = "unknown"
        return
    ctx.res["state"] = rec["status"]
    if rec["status"] != "retrying":
        return
    rec["next"] = b.now
    event(b, rec, "retrying", f"retry now, asked by {s.get('by') or '?'}", s.get("hist"))
    entry.dirty = True
    ctx.res.update(state="now", seq=_log(b, "n", ctx.op["id"]))


@on("start", 10, "job")
def start_seen(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    rec = b.load(ctx.op["id"]).rec
    if rec is not None and rec["status"] == "cancelled":
        ctx.op["_ctl_fin"] = rec.get("fin") or b.now


@on("start", 25, "job")
def start_cancelled(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if "_ctl_fin" not in ctx.op:
        return
    entry = b.load(ctx.op["id"])
    assert entry.rec is not None
    entry.rec["fin"] = ctx.op["_ctl_fin"]
    set_status(b, entry, "cancelled", "it started before its worker heard of the cancel; asked to stop", s)
    ctx.res["cancelled"] = True


@on("finish", 10, "job")
def finish_seen(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    rec = b.load(ctx.op["id"]).rec
    if rec is not None and rec["status"] == "cancelled":
        ctx.op["_ctl_fin"] = rec.get("fin") or b.now


@on("finish", 25, "job")
def finish_cancelled(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if "_ctl_fin" not in ctx.op:
        return
    entry = b.load(ctx.op["id"])
    assert entry.rec is not None
    if s.get("outcome") == "cancelled":
        entry.rec["fin"] = ctx.op["_ctl_fin"]
        entry.dirty = True
    elif entry.rec["status"] == "retrying":
        entry.rec.pop("next", None)
        entry.rec["fin"] = ctx.op["_ctl_fin"]
        set_status(b, entry, "cancelled", "not retried: the job was cancelled", s)


@on("workers", 80, "ctl")
def workers(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    from ._memory_watchdog import state as wd_state

    wd = wd_state(b.store)
    most = int(s.get("max") or 100)
    out = []
    for procs, alive in ((wd.procs, True), (wd.dead, False)):
        for proc, score in sorted(procs.items()):
            running = wd.run.get(proc, {})
            jobs = []
            for job_id, raw in list(running.items())[:most]:
                meta = json.loads(raw) if raw else {}
                rec = b.store._get_record(job_id) or {}
                jobs.append(
                    {
                        k: v
                        for k, v in {
                            "id": job_id,
                            "a": meta.get("a") or rec.get("actor"),
                            "q": meta.get("q") or rec.get("queue"),
                            "start": rec.get("start"),
                            "att": rec.get("att"),
                            "st": rec.get("status"),
                        }.items()
                        if v is not None
                    }
                )
            try:
                info = json.loads(wd.info.get(proc) or "{}")
            except ValueError:
                info = {}
            out.append({"proc": proc, "score": score, "alive": alive, "info": info, "n": len(running), "jobs": jobs})
    ctx.res["procs"] = out
    ctx.res["pending"] = sorted(wd.pending)
