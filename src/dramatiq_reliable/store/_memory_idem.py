"""Idempotency's op handlers for ``MemoryStore``: the Python twin of ``lua/20_idem.lua``."""

from __future__ import annotations

from typing import Any

from ..status import TERMINAL
from .memory import Batch, Ctx, on


def completed_by(b: Batch, ctx: Ctx, s: dict[str, Any]) -> str | None:
    job_id = str(ctx.op["id"])
    if s.get("by_record"):
        entry = b.load(job_id)
        if entry.rec is not None and entry.rec["status"] == "done":
            return job_id
        return None
    return b.store.sget("done", str(s["key"]), b.now)


@on("start", 10, "idem")
def start(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    by = completed_by(b, ctx, s)
    if by is not None:
        ctx.outcome = ctx.res["outcome"] = "duplicate"
        ctx.res["dup"] = by
        return
    owner = b.store.sget("lease", s["key"], b.now)
    if owner is not None:
        ctx.outcome = ctx.res["outcome"] = "busy"
        expires = b.store.strings[("lease", s["key"])][1]
        ctx.res["retry_in"] = max(expires - b.now, 100)
        ctx.res["owner"] = owner
        return
    b.store.sset("lease", s["key"], s["token"], s["lease"], b.now)
    ctx.res["outcome"] = "run"


@on("finish", 10, "idem")
def finish(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    job_id = ctx.op["id"]
    store = b.store
    if s.get("outcome") == "done":
        if not s.get("by_record"):
            store.sset("done", s["key"], job_id, s["ttl"], b.now)
        store.checkpoints.pop(job_id, None)
    if s.get("token") and store.sget("lease", s["key"], b.now) == s["token"]:
        store.sdel("lease", s["key"])
    if s.get("unique") and s.get("outcome") != "retrying" and store.sget("unique", s["key"], b.now) == job_id:
        store.sdel("unique", s["key"])


@on("reserve", 10, "idem")
def reserve(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    job_id = ctx.op["id"]
    holder = b.store.sget("unique", s["key"], b.now)
    if holder is not None and holder != job_id:
        rec = b.store._get_record(holder, b.now)
        stale = rec is not None and rec["status"] in TERMINAL
        if not stale:
            ctx.outcome = ctx.res["outcome"] = "refused"
            ctx.res["holder"] = holder
            return
    b.store.sset("unique", s["key"], job_id, s["ttl"], b.now)
    ctx.res["outcome"] = "reserved"


@on("unreserve", 10, "idem")
def unreserve(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if b.store.sget("unique", s["key"], b.now) == ctx.op["id"]:
        b.store.sdel("unique", s["key"])


@on("confirm", 10, "idem")
def confirm(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    if b.store.sget("unique", s["key"], b.now) == ctx.op["id"]:
        b.store.sset("unique", s["key"], ctx.op["id"], s["ttl"], b.now)


@on("renew", 10, "idem")
def renew(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    lost = []
    for key, token in s["leases"].items():
        if b.store.sget("lease", key, b.now) == token:
            b.store.sset("lease", key, token, s["lease"], b.now)
        else:
            lost.append(key)
    ctx.res["lost"] = lost
