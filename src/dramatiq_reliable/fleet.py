"""The worker processes of the fleet, as the :class:`~dramatiq_reliable.Watchdog` sees them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._clock import from_ms


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process that runs the Watchdog: alive (it heartbeats), or found dead."""

    #: ``host:pid:token``; the token tells apart two processes that got the same pid.
    id: str
    alive: bool
    host: str | None = None
    pid: int | None = None
    #: Jobs it runs now (alive), or ran when it died.
    running: int = 0
    #: Alive: when it counts as dead unless it heartbeats again.
    deadline: datetime | None = None
    #: Dead: when the sweep found it dead.
    dead_since: datetime | None = None
    #: The Dramatiq ``RedisBroker.broker_id`` of the process (Redis brokers only).
    broker_id: str | None = None
    #: The queues it consumes (``.DQ`` delay queues included).
    queues: list[str] = field(default_factory=list)
    #: Dead, and its unacked Redis messages are not yet put back in their queues.
    recovering: bool = False

    def to_json(self) -> dict[str, Any]:
        from ._clock import iso

        return {
            "id": self.id,
            "alive": self.alive,
            "host": self.host,
            "pid": self.pid,
            "running": self.running,
            "deadline": iso(self.deadline),
            "dead_since": iso(self.dead_since),
            "broker_id": self.broker_id,
            "queues": list(self.queues),
            "recovering": self.recovering,
        }


def build_processes(
    procs: Mapping[str, float],
    dead: Mapping[str, float],
    info: Mapping[str, str],
    running: Mapping[str, int],
    pending: set[str],
) -> list[WorkerProcess]:
    """Assemble :class:`WorkerProcess` items from the stores' raw Watchdog state, alive first."""
    out = []
    for proc, score, alive in [*((p, s, True) for p, s in procs.items()), *((p, s, False) for p, s in dead.items())]:
        try:
            meta = json.loads(info[proc]) if proc in info else {}
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        queues = meta.get("queues")
        out.append(
            WorkerProcess(
                id=proc,
                alive=alive,
                host=meta.get("host"),
                pid=meta.get("pid"),
                running=int(running.get(proc, 0)),
                deadline=from_ms(score) if alive else None,
                dead_since=None if alive else from_ms(score),
                broker_id=meta.get("bid"),
                queues=[str(q) for q in queues] if isinstance(queues, list) else [],
                recovering=not alive and proc in pending,
            )
        )
    out.sort(key=lambda p: (not p.alive, p.id))
    return out
