"""The scheduler's machinery: one thread that does every store call and every enqueue.

APScheduler's ``BlockingScheduler`` decides *when* ticks are due; :class:`TickExecutor` hands
their fire times to the :class:`TickThread`, which claims and enqueues them one at a time and,
between ticks, does the scheduler's upkeep (``Scheduler.maintain``). One thread means one
broker connection: on RabbitMQ, Dramatiq keeps a connection per thread, and this one is kept
alive by the upkeep instead of idling until the server drops it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scheduler import Scheduler

logger = logging.getLogger("dramatiq_reliable.scheduler")

#: Submissions a schedule may have waiting at once before APScheduler drops new ones.
MAX_QUEUED = 10_000

_Item = tuple[str, list[int], "Callable[[], None] | None"]


class TickThread(threading.Thread):
    """Fires the ticks submitted to it, in order, and runs the upkeep every ``interval`` seconds."""

    def __init__(self, scheduler: Scheduler, interval: float) -> None:
        super().__init__(name="dramatiq-reliable-ticks", daemon=True)
        self.scheduler = scheduler
        self.interval = interval
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._stopping = threading.Event()

    def submit(self, name: str, fires: list[int], done: Callable[[], None] | None = None) -> None:
        """Queue the fire times (ms) of schedule ``name``; ``done`` is called once they are handled."""
        self._queue.put((name, fires, done))

    def stop(self) -> None:
        """Finish the tick in progress, then exit; ticks still queued are left to other schedulers."""
        self._stopping.set()
        self._queue.put(None)

    def run(self) -> None:
        next_upkeep = time.monotonic()
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=max(0.0, next_upkeep - time.monotonic()))
            except queue.Empty:
                item = None
            if item is not None:
                self._handle(item)
            if time.monotonic() >= next_upkeep and not self._stopping.is_set():
                try:
                    self.scheduler.maintain()
                except Exception:
                    logger.exception("Scheduler upkeep failed; it runs again in %.1f s.", self.interval)
                next_upkeep = time.monotonic() + self.interval
        left = sum(len(item[1]) for item in _drain(self._queue))
        if left:
            logger.info("%d due tick(s) left unclaimed at shutdown, for another scheduler or the next start.", left)

    def _handle(self, item: _Item) -> None:
        name, fires, done = item
        try:
            for fire in fires:
                if self._stopping.is_set():
                    break
                try:
                    self.scheduler.fire_by_name(name, fire)
                except Exception:
                    logger.exception("Schedule %r: tick %d failed unexpectedly.", name, fire)
        finally:
            if done is not None:
                done()


def _drain(q: queue.Queue[_Item | None]) -> list[_Item]:
    items: list[_Item] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return items
        if item is not None:
            items.append(item)


def executor_for(thread: TickThread) -> Any:
    """An APScheduler executor that hands due fire times to ``thread`` instead of calling the job."""
    from apscheduler.executors.base import BaseExecutor

    class TickExecutor(BaseExecutor):  # type: ignore[misc]
        def _do_submit_job(self, job: Any, run_times: list[Any]) -> None:
            fires = [round(t.timestamp() * 1000) for t in run_times]
            thread.submit(job.id, fires, lambda: self._run_job_success(job.id, []))

    return TickExecutor()
