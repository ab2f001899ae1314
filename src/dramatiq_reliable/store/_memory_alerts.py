"""Alerts' op handlers for ``MemoryStore``: the Python twin of ``lua/50_alerts.lua``."""

from __future__ import annotations

import json
from typing import Any

from .memory import Batch, Ctx, MemoryStore, on

#: An occurrence applied this many ms after it happened was replayed after a store outage.
ALERT_LATE = 10_000


def _hash(store: MemoryStore, name: str, now: int) -> dict[str, Any] | None:
    item = store.alert_throttles.get(name)
    if item is None:
        return None
    if item[1] <= now:
        del store.alert_throttles[name]
        return None
    return item[0]


def occur(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    store, now = b.store, b.now
    name = f"{s['kind']}:{s['actor']}:{s.get('etype', '')}"
    win = int(s["win"])
    h = _hash(store, name, now) or {}
    last = h.get("last")
    sup = int(h.get("sup", 0))
    since = h.get("since")
    late = "at" in s and now - int(s["at"]) > ALERT_LATE
    job_id = "" if ctx.op["id"] == "-" else str(ctx.op["id"])
    h.update(
        kind=s["kind"],
        actor=s["actor"],
        etype=s.get("etype", ""),
        q=s.get("queue", ""),
        seen=now,
        jid=job_id,
        msg=s.get("msg", ""),
        keys=json.dumps(s["keys"], separators=(",", ":")) if s.get("keys") else "{}",
        win=win,
    )
    if not late and (last is None or now - last >= win):
        ctx.res["alert"] = {"notify": 1, "sup": sup, **({"since": since} if since is not None else {})}
        h.update(last=now, sup=0)
        h.pop("since", None)
        store.alert_due.pop(name, None)
    else:
        sup += 1
        ctx.res["alert"] = {"notify": 0, "sup": sup}
        h.update(sup=sup, since=since if since is not None else now)
        store.alert_due[name] = last + win if last is not None else now
    if s.get("quiet"):
        store.alert_quiet[name] = now + win
    store.alert_throttles[name] = (h, now + 2 * win + 60_000)


on("finish", 50, "al")(occur)
on("alert", 50, "al")(occur)


def _entry(name: str, h: dict[str, Any]) -> dict[str, Any]:
    fields = ("kind", "actor", "etype", "q", "seen", "jid", "msg", "keys", "win")
    entry: dict[str, Any] = {k: h[k] for k in fields if k in h}
    entry.update(name=name, sup=int(h.get("sup", 0)))
    if h.get("since") is not None:
        entry["since"] = h["since"]
    return entry


def _due(index: dict[str, int], now: int, limit: int) -> list[str]:
    return [name for name, at in sorted(index.items(), key=lambda i: (i[1], i[0])) if at <= now][:limit]


@on("alerts_due", 50, "al")
def due(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    store, now = b.store, b.now
    limit = int(s.get("limit", 100))
    out: list[dict[str, Any]] = []
    for name in _due(store.alert_due, now, limit):
        del store.alert_due[name]
        h = _hash(store, name, now)
        if h is not None and int(h.get("sup", 0)) > 0:
            out.append({**_entry(name, h), "summary": 1})
            h.update(last=now, sup=0)
            h.pop("since", None)
    for name in _due(store.alert_quiet, now, limit):
        del store.alert_quiet[name]
        h = _hash(store, name, now)
        if h is not None:
            out.append({**_entry(name, h), "recovered": 1})
            store.alert_due.pop(name, None)
            del store.alert_throttles[name]
    ctx.res["due"] = out
