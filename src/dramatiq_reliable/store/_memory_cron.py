"""Cron's op handlers for ``MemoryStore``: the Python twin of ``lua/60_cron.lua``."""

from __future__ import annotations

import json
from typing import Any

from .memory import Batch, Ctx, on

#: Milliseconds the latest tick of a schedule is remembered: 400 days.
LAST_TTL = 400 * 86_400_000


def _tick_key(name: str, fire: int) -> str:
    return f"{name}:{fire}"


def _get(b: Batch, kind: str, key: str) -> dict[str, Any] | None:
    raw = b.store.sget(kind, key)
    return json.loads(raw) if raw is not None else None


def _put(b: Batch, key: str, tick: dict[str, Any], keep: int | None = None) -> None:
    """Write a tick: kept ``keep`` ms when given, else as long as it already was."""
    if keep is None:
        keep = b.store.pttl("cron_tick", key) or 60_000
    b.store.sset("cron_tick", key, json.dumps(tick), keep)


def _last(b: Batch, name: str, fire: int, tick: dict[str, Any]) -> None:
    current = _get(b, "cron_last", name)
    if current is not None and int(current["fire"]) > fire:
        return
    rec = {"fire": fire, "job": tick["job"], "st": tick["st"], "by": tick["by"], "at": b.now}
    b.store.sset("cron_last", name, json.dumps(rec), LAST_TTL)


def _pending(b: Batch, name: str) -> dict[str, float]:
    return b.store.index(f"cron:pending:{name}")


@on("cron_claim", 10, "cron")
def claim(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    fire = int(s["fire"])
    key = _tick_key(s["name"], fire)
    tick = _get(b, "cron_tick", key)
    if tick is not None:
        ctx.res.update(outcome="taken", by=tick["by"], st=tick["st"])
        return
    tick = {
        "st": "pending",
        "job": s["job"],
        "by": s["by"],
        "lease": b.now + int(s["lease"]),
        "dl": fire + int(s["grace"]),
        "at": b.now,
    }
    _put(b, key, tick, int(s["keep"]))
    _pending(b, s["name"])[str(fire)] = tick["lease"]
    _last(b, s["name"], fire, tick)
    ctx.res["outcome"] = "claimed"


@on("cron_confirm", 10, "cron")
def confirm(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    fire = int(s["fire"])
    key = _tick_key(s["name"], fire)
    _pending(b, s["name"]).pop(str(fire), None)
    tick = _get(b, "cron_tick", key)
    if tick is None:
        ctx.res["outcome"] = "gone"
        return
    ctx.res.update(outcome="confirmed" if tick["by"] == s["by"] else "late", by=tick["by"])
    if tick["st"] == "sent":
        return
    tick.update(st=s["st"], by=s["by"], at=b.now)
    tick.pop("lease", None)
    _put(b, key, tick)
    _last(b, s["name"], fire, tick)


@on("cron_release", 10, "cron")
def release(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    fire = int(s["fire"])
    key = _tick_key(s["name"], fire)
    tick = _get(b, "cron_tick", key)
    if tick is None or tick["st"] != "pending" or tick["by"] != s["by"]:
        return
    tick["lease"] = b.now + int(s["retry"])
    _put(b, key, tick)
    _pending(b, s["name"])[str(fire)] = tick["lease"]
    ctx.res["outcome"] = "released"


@on("cron_sweep", 10, "cron")
def sweep(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    out: list[dict[str, Any]] = []
    for name in s["names"]:
        pending = _pending(b, name)
        due = sorted((score, fire) for fire, score in pending.items() if score <= b.now)[: int(s["limit"])]
        for _score, fire_text in due:
            fire = int(fire_text)
            key = _tick_key(name, fire)
            tick = _get(b, "cron_tick", key)
            if tick is None or tick["st"] != "pending":
                pending.pop(fire_text, None)
            elif b.now > int(tick["dl"]):
                pending.pop(fire_text, None)
                tick.update(st="missed", at=b.now)
                tick.pop("lease", None)
                _put(b, key, tick)
                _last(b, name, fire, tick)
                out.append({"o": "missed", "name": name, "fire": fire, "job": tick["job"], "by": tick["by"]})
            else:
                prev = tick["by"]
                tick.update(by=s["by"], lease=b.now + int(s["lease"]), at=b.now)
                if prev != s["by"]:
                    tick["n"] = int(tick.get("n", 0)) + 1
                _put(b, key, tick)
                pending[fire_text] = tick["lease"]
                out.append({"o": "retake", "name": name, "fire": fire, "job": tick["job"], "by": prev})
    ctx.res["ticks"] = out


@on("cron_read", 10, "cron")
def read(b: Batch, ctx: Ctx, s: dict[str, Any]) -> None:
    out = {}
    for name in s["names"]:
        last = _get(b, "cron_last", name)
        if last is not None:
            out[name] = last
    ctx.res["last"] = out
