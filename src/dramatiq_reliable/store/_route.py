"""Routing a batch of ops over the shards of a store on a Redis Cluster (see :mod:`.cluster`).

A shard is a whole store under a hash-tagged prefix (``{dr:<s>}:``); the fleet's slot
(``{dr}:``) holds what the fleet shares. Where an op goes:

* the ops of a job, to the shard of its id (``crc32(id) % N``): its record, indexes, dead
  letter, the Watchdog's run hash of its process, the counters of its minute;
* an idempotency section (``claim``, ``reserve``, ``unreserve``, ``confirm``, and the ``idem``
  of a ``finish``), to the shard of its key (``crc32(key) % N``; a ``msg:<id>`` key, to the
  shard of that id), so that every job with one key finds its marker, lease and reservation;
  a ``finish`` whose key lives in another shard than its job sends that part first (phase 0),
  so a crash between the two leaves the marker ahead of the record, never the record ahead of
  the marker (it errs on the side of not running a job twice);
* the Watchdog's liveness, cron ticks, alert throttles, operator controls and dead-letter
  queue locks and offsets, to the fleet's slot; a ``renew`` is split by the shards of its keys.

Some ops need a second step once the first has answered (phase 2): the fleet's sweep (a
``beat`` that won the sweep lock) is followed by each shard's part (``shard_sweep``: abandon
the jobs of the dead processes there), a ``bye`` by the fleet's part after the shards', a
``cancel`` or ``retry_now`` applied to a record by its entry in the fleet's log.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

Op = dict[str, Any]

#: The fleet's slot (shards are 0 … N-1).
FLEET = -1

#: Kinds whose whole op lives in the fleet's slot.
FLEET_KINDS = frozenset(
    {
        "beat",
        "recovered",
        "ctl_beat",
        "pause",
        "paused",
        "workers",
        "alert",
        "alerts_due",
        "cron_claim",
        "cron_confirm",
        "cron_release",
        "cron_sweep",
        "cron_read",
        "dead_queue",
        "dead_sync",
        "dead_lock",
        "dead_unlock",
        "shard_bury",
        "shard_ctl",
        "shard_register",
    }
)
#: Kinds that are one idempotency section, in the shard of its key.
KEY_KINDS = frozenset({"claim", "reserve", "unreserve", "confirm"})
#: Fields of an op that are not sections.
OP_FIELDS = ("k", "id", "at_ms")


@dataclass
class Plan:
    """Where the parts of one op go: ``(phase, slot, op)``; ``result`` is filled as they answer."""

    op: Op
    parts: list[tuple[int, int, Op]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    #: Leases held by the jobs a shard abandoned: ``{id, lk, lt}``, to release in their keys' shards.
    leases: list[dict[str, Any]] = field(default_factory=list)


class Router:
    """Shards of ``n`` slots: which shard holds a job, a key; how an op is split."""

    def __init__(self, shards: int) -> None:
        self.n = shards

    def of_id(self, job_id: str) -> int:
        return zlib.crc32(job_id.encode("utf-8", "surrogatepass")) % self.n

    def of_key(self, key: str) -> int:
        """The shard of an idempotency key (a ``msg:<id>`` key lives with its job)."""
        if key.startswith("msg:"):
            return self.of_id(key[4:])
        return zlib.crc32(key.encode("utf-8", "surrogatepass")) % self.n

    def plan(self, op: Any) -> Plan:
        plan = Plan(op)
        if not isinstance(op, dict) or not isinstance(op.get("id"), str) or not isinstance(op.get("k"), str):
            plan.parts.append((1, FLEET, op))  # the library says what is wrong with it
            return plan
        kind, job_id = op["k"], op["id"]
        if kind in FLEET_KINDS:
            plan.parts.append((1, FLEET, op))
        elif kind in KEY_KINDS and isinstance(op.get("idem"), dict) and isinstance(op["idem"].get("key"), str):
            plan.parts.append((1, self.of_key(op["idem"]["key"]), op))
        elif kind == "renew":
            self._renew(plan)
        elif kind == "finish":
            self._finish(plan)
        elif kind == "start" and isinstance(op.get("wd"), dict) and "abandon_ms" in op["wd"]:
            # Until its first beat registers the process: registered in the fleet's slot first.
            wd = dict(op["wd"])
            register = {"proc": wd.get("proc"), "abandon_ms": wd.pop("abandon_ms")}
            plan.parts.append((0, FLEET, {"k": "shard_register", "id": "-", "wd": register}))
            plan.parts.append((1, self.of_id(job_id), {**op, "wd": wd}))
        elif kind == "bye" and isinstance(op.get("wd"), dict):
            wd = {"procs": [op["wd"].get("proc")], "bye": True}
            if "hist" in op["wd"]:
                wd["hist"] = op["wd"]["hist"]
            plan.parts.extend((1, s, {"k": "shard_sweep", "id": "-", "wd": wd}) for s in range(self.n))
        else:
            plan.parts.append((1, self.of_id(job_id), op))
        return plan

    def _renew(self, plan: Plan) -> None:
        op = plan.op
        section = op.get("idem")
        leases = section.get("leases") if isinstance(section, dict) else None
        if not isinstance(section, dict) or not isinstance(leases, dict):
            plan.parts.append((1, FLEET, op))
            return
        by_shard: dict[int, dict[str, Any]] = {}
        for key, token in leases.items():
            by_shard.setdefault(self.of_key(str(key)), {})[key] = token
        for shard, part in sorted(by_shard.items()):
            plan.parts.append((1, shard, {**op, "idem": {**section, "leases": part}}))
        plan.result["lost"] = []

    def _finish(self, plan: Plan) -> None:
        op = plan.op
        home = self.of_id(op["id"])
        main = {k: v for k, v in op.items() if k not in ("idem", "al")}
        ahead: dict[int, dict[str, Any]] = {}
        idem = op.get("idem")
        if isinstance(idem, dict):
            keyed = {k: v for k, v in idem.items() if k != "ukey"}
            where = self.of_key(idem["key"]) if isinstance(idem.get("key"), str) else home
            ahead[where] = keyed
            if isinstance(idem.get("ukey"), str):
                other = self.of_key(idem["ukey"])
                ahead.setdefault(other, {"outcome": idem.get("outcome")})["ukey"] = idem["ukey"]
            elif "ukey" in idem:
                keyed["ukey"] = idem["ukey"]  # the library refuses it, with the op
        elif idem is not None:
            main["idem"] = idem
        if home in ahead:
            main["idem"] = ahead.pop(home)
        head = {k: op[k] for k in OP_FIELDS if k in op}
        for shard, section in sorted(ahead.items()):
            plan.parts.append((0, shard, {**head, "idem": section}))
        if len(main) > len(head) or not ahead:
            plan.parts.append((1, home, main))
        if "al" in op:
            plan.parts.append((1, FLEET, {**head, "k": "alert", "al": op["al"]}))

    def followups(self, plan: Plan) -> list[tuple[int, Op]]:
        """What an op needs once its parts answered (phase 2): ``(slot, op)``."""
        op, res = plan.op, plan.result
        kind = op.get("k") if isinstance(op, dict) else None
        if "error" in res or kind is None:
            return []
        more: list[tuple[int, Op]] = []
        if kind == "beat":
            wd: dict[str, Any] = op["wd"] if isinstance(op.get("wd"), dict) else {}
            hist = {"hist": wd["hist"]} if "hist" in wd else {}
            if res.get("revived"):
                revive = {"k": "shard_revive", "id": "-", "wd": {"proc": wd.get("proc"), **hist}}
                more.extend((s, revive) for s in range(self.n))
            if isinstance(res.get("sweep"), dict):
                sweep: dict[str, Any] = {"procs": _as_list(res["sweep"].get("dead")), "house": True, **hist}
                if "keep_ms" in wd:
                    sweep["keep_ms"] = wd["keep_ms"]
                more.extend((s, {"k": "shard_sweep", "id": "-", "wd": sweep}) for s in range(self.n))
        elif kind == "bye":
            proc = op["wd"].get("proc")
            if _as_list(res.get("abandoned")):
                more.append((FLEET, {"k": "shard_bury", "id": "-", "wd": {"proc": proc}}))
            else:
                more.append((FLEET, op))
        elif kind in ("cancel", "retry_now") and res.get("seq"):
            ctl = {"kind": "c" if kind == "cancel" else "n"}
            more.append((FLEET, {"k": "shard_ctl", "id": op["id"], "ctl": ctl}))
        return more

    def releases(self, plans: list[Plan]) -> list[tuple[int, Op]]:
        """Release the leases of abandoned jobs in their keys' shards (their own shard did)."""
        out: list[tuple[int, Op]] = []
        for plan in plans:
            for lease in plan.leases:
                key, token, job_id = lease.get("lk"), lease.get("lt"), lease.get("id")
                if isinstance(key, str) and isinstance(token, str) and isinstance(job_id, str):
                    shard = self.of_key(key)
                    if shard != self.of_id(job_id):
                        idem = {"outcome": "abandoned", "key": key, "token": token}
                        out.append((shard, {"k": "finish", "id": job_id, "idem": idem}))
        return out

    @staticmethod
    def merge(plan: Plan, part: dict[str, Any], followup: bool = False) -> None:
        """Fold the result of one part into the op's result (lists of abandoned jobs and lost
        leases add up, so do jobs running again; the first error stands alone, as an op's on
        one Redis)."""
        res = plan.result
        kind = plan.op.get("k") if isinstance(plan.op, dict) else None
        plan.leases.extend(x for x in _as_list(part.pop("leases", None)) if isinstance(x, dict))
        if "error" in res:
            return
        if "error" in part:
            res.clear()
            res["error"] = part["error"]
            if "section" in part:
                res["section"] = part["section"]
            return
        if followup and kind == "beat":
            if "abandoned" in part and isinstance(res.get("sweep"), dict):
                sweep = res["sweep"]
                sweep["abandoned"] = _as_list(sweep.get("abandoned")) + _as_list(part["abandoned"])
            if "back" in part:
                res["back"] = int(res.get("back") or 0) + int(part["back"])
            return
        for name, value in part.items():
            if name in ("abandoned", "lost"):
                res[name] = _as_list(res.get(name)) + _as_list(value)
            else:
                res[name] = value


def _as_list(value: Any) -> list[Any]:
    """A list the library returned (Lua's cjson encodes an empty one as ``{}``)."""
    return list(value) if isinstance(value, list) else []
