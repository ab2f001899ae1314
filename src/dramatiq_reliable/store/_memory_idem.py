"""Idempotency's op handlers for ``MemoryStore``: the Python twin of ``lua/20_idem.lua``."""

from __future__ import annotations

from typing import Any

from ..status import TERMINAL
from .memory import Batch, Ctx, on


@on("claim", 10, "idem")
def claim(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    # "rec": JobState keeps this job's record at least "ttl"; its done index is the marker.
    if s.get("rec") and ctx.op["id"] in b.store.index("status:done"):
        ctx.res["outcome"] = "duplicate"
        ctx.res["dup"] = ctx.op["id"]
        return
    by = b.store.sget("done", str(s["key"]))
    if by is not None:
        ctx.res["outcome"] = "duplicate"
        ctx.res["dup"] = by
        return
    owner = b.store.sget("lease", s["key"])
    if owner is not None:
        ctx.res["outcome"] = "busy"
        ctx.res["retry_in"] = max(b.store.pttl("lease", s["key"]), 100)
        ctx.res["owner"] = owner
        return
    b.store.sset("lease", s["key"], s["token"], s["lease"])
    ctx.res["outcome"] = "run"


def recorded_done(b: Batch, ctx: Ctx) -> bool:
    """Whether this op's JobState section makes the record ``done`` (not a late older attempt)."""
    j = ctx.op.get("job")
    if not isinstance(j, dict) or j.get("outcome") != "done":
        return False
    rec = b.load(ctx.op["id"]).rec
    att = j.get("att")
    return not (rec is not None and att is not None and int(rec.get("att") or 0) > int(att))


@on("finish", 10, "idem")
def finish(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    job_id = ctx.op["id"]
    store = b.store
    key, outcome = s.get("key"), s.get("outcome")
    if key and outcome == "done":
        if not (s.get("rec") and recorded_done(b, ctx)):
            store.sset("done", key, job_id, s["ttl"])
        store.checkpoints.pop(key, None)
    if key and s.get("token") and store.sget("lease", key) == s["token"]:
        store.sdel("lease", key)
    ukey = s.get("ukey")
    if ukey and outcome not in ("retrying", "deferred") and store.sget("unique", ukey) == job_id:
        store.sdel("unique", ukey)


@on("reserve", 10, "idem")
def reserve(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    job_id = ctx.op["id"]
    holder = b.store.sget("unique", s["key"])
    if holder is not None and holder != job_id:
        rec = b.store._get_record(holder)
        stale = rec is not None and rec["status"] in TERMINAL
        if not stale:
            ctx.outcome = ctx.res["outcome"] = "refused"
            ctx.res["holder"] = holder
            return
    b.store.sset("unique", s["key"], job_id, s["ttl"])
    ctx.res["outcome"] = "reserved"


@on("unreserve", 10, "idem")
def unreserve(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if b.store.sget("unique", s["key"]) == ctx.op["id"]:
        b.store.sdel("unique", s["key"])


@on("confirm", 10, "idem")
def confirm(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if b.store.sget("unique", s["key"]) == ctx.op["id"]:
        b.store.sset("unique", s["key"], ctx.op["id"], s["ttl"])


@on("renew", 10, "idem")
def renew(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    lost = []
    for key, token in s["leases"].items():
        if b.store.sget("lease", key) == token:
            b.store.sset("lease", key, token, s["lease"])
        else:
            lost.append(key)
    ctx.res["lost"] = lost
