"""JobState's op handlers for ``MemoryStore``: the Python twin of ``lua/10_jobs.lua``.

An op replayed after a store outage carries ``op["at"]``, the time (ms) it was made: its events
and times take that time, and its events go in the history where that time puts them.
"""

from __future__ import annotations

from typing import Any

from .memory import Batch, Ctx, Entry, on

CREATION = ("actor", "queue", "maxr", "enq", "args")
RUNNING_LIKE = ("running", "stuck", "abandoned")


def event(
    b: Batch, rec: dict[str, Any], status: str | None, detail: str | None, hist: Any, at: int | None = None
) -> None:
    """Add an event (at ``at`` in time order, else now, last). ``status`` None: as the job was then."""
    ev = rec.get("ev")
    if not isinstance(ev, list):
        ev = rec["ev"] = []
    i = len(ev)
    if at is not None:
        while i > 0 and ev[i - 1][0] > at:
            i -= 1
    if status is None:  # appended: the status now; else that of the event before (a job starts queued)
        status = rec["status"] if i == len(ev) else ev[i - 1][1] if i else "queued"
    ev.insert(i, [b.now if at is None else at, status, detail or ""])
    cap = int(hist) if hist is not None else 50
    del ev[: max(len(ev) - cap, 0)]


def fill(rec: dict[str, Any], s: dict[str, Any]) -> None:
    for f in CREATION:
        if rec.get(f) is None and s.get(f) is not None:
            rec[f] = s[f]
    if not rec.get("keys") and s.get("keys"):
        rec["keys"] = s["keys"]


def ensure(b: Batch, job_id: str, s: dict[str, Any], status: str) -> Entry:
    entry = b.load(job_id)
    if entry.rec is None:
        entry.rec = {"status": status, "att": 0, "keys": {}, "ev": []}
        entry.new = True
        fill(entry.rec, s)
    return entry


def set_status(
    b: Batch, entry: Entry, status: str, detail: str | None, s: dict[str, Any], at: int | None = None
) -> None:
    assert entry.rec is not None
    entry.rec["status"] = status
    event(b, entry.rec, status, detail, s.get("hist"), at)
    entry.dirty = True


def op_time(op: dict[str, Any]) -> int | None:
    """When a replayed op was made (ms), or None for an op applied as it is made."""
    at = op.get("at")
    return int(at) if at is not None else None


def begin(b: Batch, entry: Entry, s: dict[str, Any], hist: Any, at: int | None) -> None:
    """A delivery begins (``s``: att, worker): ``running``, "redelivered" if it was running already."""
    rec = entry.rec
    assert rec is not None
    attempt = int(s.get("att", 1))
    again = not entry.new and rec["status"] in RUNNING_LIKE and rec.get("att", 0) >= attempt
    if rec["status"] == "retrying" and not entry.new:
        # The "due" write of the delay's end may arrive after this start: keep the history whole.
        event(b, rec, "queued", f"due: attempt {attempt}", hist, at)
    rec["att"] = max(rec.get("att", 0), attempt)
    rec["start"] = b.now if at is None else at
    if s.get("worker") is not None:
        rec["worker"] = s["worker"]
    for f in ("next", "fin", "stack"):
        rec.pop(f, None)
    detail = f"attempt {rec['att']} on {s.get('worker', '?')}"
    set_status(b, entry, "running", f"redelivered: {detail}" if again else detail, {"hist": hist}, at)


@on("enqueue", 20, "job")
def enqueue(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    if entry.rec is None:
        entry = ensure(b, ctx.op["id"], s, "queued")
        assert entry.rec is not None
        if s.get("due"):
            entry.rec["due"] = s["due"]
        set_status(b, entry, "queued", s.get("detail"), s, op_time(ctx.op))
    else:
        # A worker started or put it back before this write landed: keep the history whole.
        ev = entry.rec.setdefault("ev", [])
        if not ev or ev[0][1] != "queued" or not str(ev[0][2]).startswith("enqueued"):
            ev.insert(0, [s.get("enq", b.now), "queued", s.get("detail") or "enqueued"])
            cap = int(s.get("hist", 50))
            del ev[: max(len(ev) - cap, 0)]
        had_keys = bool(entry.rec.get("keys"))
        fill(entry.rec, s)
        if not had_keys and not entry.new:
            # The record was created (and indexed) by the start, without the keys this write brings.
            score = entry.rec.get("enq", b.now)
            for name, value in (entry.rec.get("keys") or {}).items():
                b.store.index(f"key:{name}={value}")[entry.id] = score
        entry.dirty = True


@on("start", 20, "job")
def start(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    begin(b, ensure(b, ctx.op["id"], s, "running"), s, s.get("hist"), op_time(ctx.op))


@on("finish", 20, "job")
def finish(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    """``began`` (att, worker, at): the start of this attempt, carried by its end when both were buffered."""
    at = op_time(ctx.op)
    entry = ensure(b, ctx.op["id"], s, "queued" if s["outcome"] == "deferred" else "running")
    rec = entry.rec
    assert rec is not None
    attempt = s.get("att")
    if attempt is not None and rec.get("att", 0) > attempt:
        # The late result of an older attempt; a newer one has started since. Keep its status.
        event(b, rec, rec["status"], f"late result of attempt {attempt}: {s['outcome']}", s.get("hist"), at)
        entry.dirty = True
        return
    if s["outcome"] == "deferred":
        # Put back without running (its key was busy, or the store was down): the status stays.
        event(b, rec, None, s.get("detail"), s.get("hist"), at)
        entry.dirty = True
        return
    if isinstance(s.get("began"), dict):
        began = s["began"]
        begin(b, entry, began, s.get("hist"), int(began["at"]) if "at" in began else at)
    outcome = s["outcome"]
    if outcome == "skipped" and s.get("dup") == ctx.op["id"]:
        event(b, rec, "skipped", s.get("detail"), s.get("hist"), at)
        entry.dirty = True
        return
    if attempt is not None:
        rec["att"] = max(rec.get("att", 0), attempt)
    if s.get("err"):
        rec["err"] = s["err"]
    rec.pop("stack", None)
    if outcome == "retrying":
        if s.get("next") is not None:
            rec["next"] = s["next"]
        rec.pop("fin", None)
    else:
        rec["fin"] = b.now if at is None else at
        rec.pop("next", None)
        if outcome == "skipped" and s.get("dup"):
            rec["dup"] = s["dup"]
    set_status(b, entry, outcome, s.get("detail"), s, at)


@on("due", 20, "job")
def due(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    entry = b.load(ctx.op["id"])
    if entry.rec is not None and entry.rec["status"] == "retrying":
        detail = s.get("detail") or f"due: attempt {entry.rec.get('att', 0) + 1}"
        set_status(b, entry, "queued", detail, s, op_time(ctx.op))
