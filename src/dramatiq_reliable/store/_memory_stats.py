"""Per-minute counters for ``MemoryStore``: the Python twin of ``lua/70_stats.lua``."""

from __future__ import annotations

from typing import Any

from .memory import Batch, Ctx, MemoryStore, on

#: Milliseconds a minute's counters are kept unless the section says otherwise (25 hours).
DEFAULT_RET_MS = 25 * 3_600_000

_COUNTS = {"done": ("done",), "retrying": ("failed",), "failed": ("failed", "dead")}


def minutes(store: MemoryStore) -> dict[int, tuple[dict[str, int], int]]:
    """minute -> (fields, expires at ms) of ``store`` (created on first use)."""
    found: dict[int, tuple[dict[str, int], int]] | None = store.__dict__.get("_stats")
    if found is None:
        found = store.__dict__["_stats"] = {}
    return found


def read(store: MemoryStore, first: int, last: int) -> dict[int, dict[str, int]]:
    """The counters of minutes ``first`` to ``last`` (inclusive) that hold any."""
    now = store.clock()
    held = minutes(store)
    for minute in [m for m, (_, expires) in held.items() if expires <= now]:
        del held[minute]
    return {m: dict(held[m][0]) for m in range(first, last + 1) if m in held}


@on("finish", 70, "st")
def _finish(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    counts = _COUNTS.get(str(s.get("o")), ())
    if not counts:
        return
    minute = int(ctx.op.get("at") or b.now) // 60_000  # a replayed write counts when it happened
    held = minutes(b.store)
    item = held.get(minute)
    if item is None or item[1] <= b.store.clock():
        item = held[minute] = ({}, b.store.clock() + int(s.get("ret") or DEFAULT_RET_MS))
    fields = item[0]
    actor = str(s.get("a") or "?")
    for name in counts:
        field = f"a\t{actor}\t{name}"
        fields[field] = fields.get(field, 0) + 1
    wait = s.get("w")
    if wait is not None and s.get("q"):
        field = f"w\t{s['q']}"
        if field not in fields or int(wait) > fields[field]:
            fields[field] = int(wait)
