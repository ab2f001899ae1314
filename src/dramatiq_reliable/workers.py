"""The fleet for operators: ``dr.workers(store)``, shared by ``dramatiq-reliable workers`` and the page.

Each worker process the Watchdog knows: what it is (host, pid, broker, queues, threads), the
jobs it runs now and since when, its last heartbeat; and the processes found dead within the
last hour. One store call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._clock import from_ms, iso, now_ms
from .errors import StoreError
from .store.base import Store

#: Jobs listed per process at most.
MAX_JOBS = 100


@dataclass(frozen=True)
class RunningJob:
    """A job a worker process runs now."""

    id: str
    actor: str | None
    queue: str | None
    started_at: datetime | None
    attempt: int | None
    status: str | None
    #: Seconds it has run, at the time of the read.
    age: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "actor": self.actor,
            "queue": self.queue,
            "started_at": iso(self.started_at),
            "attempt": self.attempt,
            "status": self.status,
            "age": self.age,
        }


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process: alive (it heartbeats) or found dead recently."""

    id: str
    alive: bool
    host: str | None
    pid: int | None
    #: ``redis``, ``rabbitmq`` or ``stub``.
    broker: str | None
    queues: list[str]
    #: Worker threads of the process (``dramatiq --threads``), if it said.
    threads: int | None
    #: Jobs it runs now (alive), or ran when it died; ``jobs`` lists the first :data:`MAX_JOBS`.
    busy: int
    jobs: list[RunningJob] = field(default_factory=list)
    last_heartbeat: datetime | None = None
    #: Alive: when it counts as dead unless it heartbeats again.
    deadline: datetime | None = None
    dead_since: datetime | None = None
    #: Dead, and its unacked Redis messages are not yet put back in their queues.
    recovering: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alive": self.alive,
            "host": self.host,
            "pid": self.pid,
            "broker": self.broker,
            "queues": self.queues,
            "threads": self.threads,
            "busy": self.busy,
            "jobs": [j.to_json() for j in self.jobs],
            "last_heartbeat": iso(self.last_heartbeat),
            "deadline": iso(self.deadline),
            "dead_since": iso(self.dead_since),
            "recovering": self.recovering,
        }


def workers(store: Store) -> list[WorkerStatus]:
    """The worker processes the Watchdog knows, alive first, then those found dead (kept an hour).

    Raises:
      StoreUnavailable: the store cannot be reached.
    """
    result = store.apply({"ops": [{"k": "workers", "id": "-", "ctl": {"max": MAX_JOBS}}]})[0]
    if "error" in result:
        raise StoreError(f"store {store.url} refused to list workers: {result['error']}")
    now = int(result.get("now_ms") or now_ms())  # ages by the store's clock, as its times are
    pending = set(result.get("pending") or [])
    out = []
    for p in result.get("procs") or []:
        info = p.get("info") if isinstance(p.get("info"), dict) else {}
        score = int(p.get("score") or 0)
        alive = bool(p.get("alive"))
        ab = info.get("ab")
        jobs = [
            RunningJob(
                id=str(j.get("id")),
                actor=j.get("a"),
                queue=j.get("q"),
                started_at=from_ms(j.get("start")),
                attempt=j.get("att"),
                status=j.get("st"),
                age=round((now - int(j["start"])) / 1000, 3) if j.get("start") else None,
            )
            for j in p.get("jobs") or []
        ]
        jobs.sort(key=lambda j: -(j.age or 0))
        queues = info.get("queues")
        out.append(
            WorkerStatus(
                id=str(p.get("proc")),
                alive=alive,
                host=info.get("host"),
                pid=info.get("pid"),
                broker=info.get("kind"),
                queues=[str(q) for q in queues if not str(q).endswith(".DQ")] if isinstance(queues, list) else [],
                threads=info.get("threads"),
                busy=int(p.get("n") or 0),
                jobs=jobs,
                last_heartbeat=from_ms(score - int(ab)) if alive and ab else None,
                deadline=from_ms(score) if alive else None,
                dead_since=None if alive else from_ms(score),
                recovering=not alive and p.get("proc") in pending,
            )
        )
    out.sort(key=lambda w: (not w.alive, w.id))
    return out
