"""A burst of jobs, the faults it went through, and the figures of what became of it."""

from __future__ import annotations

import time
from typing import Any

import dramatiq_reliable as dr
from dramatiq_reliable.status import TERMINAL
from tests.helpers import wait_until

#: Statuses in which a job is finished, one way or the other.
FINISHED = sorted(s.value for s in TERMINAL)


class Burst:
    """``jobs`` orders sent at once to the ``order`` actor of ``tests/apps/faults.py``.

    Each order charges, works ``work`` seconds, then emails, each step a ``dr.once`` counted in
    Redis outside the worker. Afterwards, per order: *lost* if its email never happened (it
    never completed), *duplicated* for every charge or email beyond the first; a job is
    *non-terminal* if its record is not ``done``, ``failed`` or ``skipped`` (or is missing).
    """

    def __init__(self, app: Any, jobs: int, work: float) -> None:
        self.app = app
        self.jobs = jobs
        self.work = work
        self.sent: list[Any] = []
        self.extra: list[Any] = []
        #: (start, end) of each fault, in ``time.time()`` seconds.
        self.faults: list[tuple[float, float]] = []
        self.settled_at: float | None = None

    def send(self) -> Burst:
        self.sent = [self.app.order.send(order_id=i, work=self.work) for i in range(self.jobs)]
        return self

    def done(self) -> int:
        """Orders whose email was sent."""
        return int(self.app.effects.hlen(self.app.fx("email")))

    def wait_done(self, fraction: float, timeout: float = 120) -> int:
        """Wait until at least ``fraction`` of the orders are done; return how many are."""
        want = max(1, int(self.jobs * fraction))
        return int(wait_until(lambda: self.done() >= want and self.done(), timeout=timeout, what=f"{want} done"))

    def terminal(self) -> int:
        try:
            return sum(self.app.store.count_jobs(FINISHED).values())
        except dr.StoreUnavailable:
            return 0

    def fault(self, start: float, end: float) -> None:
        self.faults.append((start, end))

    def settle(self, timeout: float) -> bool:
        """Wait until every job sent has finished (or ``timeout`` s); True if they all did."""
        expected = len(self.sent) + len(self.extra)
        try:
            wait_until(lambda: self.terminal() >= expected, timeout=timeout, interval=0.2, what="every job finished")
        except AssertionError:
            return False
        self.settled_at = time.time()
        return True

    def figures(self, scenario: str, broker: str, **extra: Any) -> dict[str, Any]:
        """Jobs lost, side effects duplicated, jobs left non-terminal, and the times to recover."""
        effects, fx = self.app.effects, self.app.fx
        charges = {int(k): int(v) for k, v in effects.hgetall(fx("charge")).items()}
        emails = {int(k): int(v) for k, v in effects.hgetall(fx("email")).items()}
        records = [self.app.store.get_job(m.message_id) for m in [*self.sent, *self.extra]]
        lost = sum(1 for i in range(self.jobs) if emails.get(i, 0) == 0)
        duplicated = sum(max(0, c - 1) for c in charges.values()) + sum(max(0, c - 1) for c in emails.values())
        non_terminal = sum(1 for r in records if r is None or not r.status.terminal)
        figures: dict[str, Any] = {
            "scenario": scenario,
            "broker": broker,
            "jobs": len(records),
            "lost": lost,
            "duplicated": duplicated,
            "non_terminal": non_terminal,
            "faults": len(self.faults),
            "fault_s": round(sum(end - start for start, end in self.faults), 1),
            "recover_s": self.recover_s(records),
            "resume_s": self.resume_s(records),
            "settle_s": round(self.settled_at - self.faults[-1][1], 1) if self.settled_at and self.faults else None,
            "statuses": _count(r.status.value if r else "missing" for r in records),
        }
        figures.update(extra)
        return figures

    def recover_s(self, records: list[dr.JobRecord | None]) -> float | None:
        """Seconds from the start of a fault to the end of the last job it caught running (the worst fault)."""
        worst: float | None = None
        for start, _end in self.faults:
            caught = [r for r in records if r is not None and _running_at(r, start)]
            if not caught:
                continue
            if any(r.finished_at is None for r in caught):
                return None
            took = max(r.finished_at.timestamp() for r in caught if r.finished_at is not None) - start
            worst = took if worst is None else max(worst, took)
        return None if worst is None else round(worst, 1)

    def resume_s(self, records: list[dr.JobRecord | None]) -> float | None:
        """Seconds from the end of the last fault to the first job finishing after it (work resumed)."""
        if not self.faults:
            return None
        end = self.faults[-1][1]
        after = [r.finished_at.timestamp() for r in records if r is not None and r.finished_at is not None]
        after = [t for t in after if t >= end]
        return round(min(after) - end, 1) if after else None


def _running_at(record: dr.JobRecord, at: float) -> bool:
    """Whether the job had started by ``at`` and not yet finished."""
    started = [e.at.timestamp() for e in record.events if e.status == "running"]
    if not started or min(started) > at:
        return False
    return record.finished_at is None or record.finished_at.timestamp() > at


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out
