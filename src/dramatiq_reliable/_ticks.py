"""The scheduler's machinery: APScheduler's loop, and one thread for every store call and enqueue.

APScheduler's ``BlockingScheduler`` decides *when* ticks are due (:func:`run_loop`); a
``TickExecutor`` hands their fire times to the :class:`TickThread`, which claims and enqueues
them one at a time and, between ticks, does the scheduler's upkeep (``Scheduler.maintain``).
One thread means one broker connection: on RabbitMQ, Dramatiq keeps a connection per thread,
and this one is kept alive by the upkeep (:func:`keepalive`) instead of idling until the server
drops it.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import timezone
from typing import TYPE_CHECKING, Any

import dramatiq

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .scheduler import Scheduler

logger = logging.getLogger("dramatiq_reliable.scheduler")

#: Submissions a schedule may have waiting at once before APScheduler drops new ones.
MAX_QUEUED = 10_000

_Item = tuple[str, list[int], "Callable[[], None] | None"]


class TickThread(threading.Thread):
    """Fires the ticks submitted to it, in order, and runs the upkeep every ``interval`` seconds.

    With the scheduler's ``coalesce``, a tick is skipped when a later tick of the same schedule
    is already waiting (the thread fell behind: a slow broker, a stalled process).
    """

    def __init__(self, scheduler: Scheduler, interval: float) -> None:
        super().__init__(name="dramatiq-reliable-ticks", daemon=True)
        self.scheduler = scheduler
        self.interval = interval
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._stopping = threading.Event()
        self._latest: dict[str, int] = {}
        self._lock = threading.Lock()

    def submit(self, name: str, fires: list[int], done: Callable[[], None] | None = None) -> None:
        """Queue the fire times (ms) of schedule ``name``; ``done`` is called once they are handled."""
        with self._lock:
            self._latest[name] = max(self._latest.get(name, 0), *fires)
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
                with self._lock:
                    latest = self._latest.get(name, fire)
                if self.scheduler.coalesce and fire < latest:
                    logger.info(
                        "Schedule %r: tick %d coalesced into a later one (this scheduler fell behind).", name, fire
                    )
                    continue
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


def run_loop(
    scheduler: Scheduler, cutoff: int, due: list[tuple[Any, int]], stop: threading.Event, *, handle_signals: bool
) -> None:
    """Run APScheduler for ``scheduler``'s schedules from just after ``cutoff`` (ms) until ``stop`` is set.

    ``due`` (the caught-up ticks) are fired first. On return the tick in progress is finished.
    """
    try:
        from apscheduler.schedulers.base import STATE_RUNNING
        from apscheduler.schedulers.blocking import BlockingScheduler
    except ImportError as exc:
        raise ConfigurationError("the scheduler needs APScheduler 3.x: install dramatiq-reliable[cron]") from exc
    ticks = TickThread(scheduler, scheduler.upkeep_interval)
    aps = BlockingScheduler(timezone=timezone.utc, executors={"default": executor_for(ticks)})
    for schedule in scheduler.schedules:
        first = schedule.next_fire_after(cutoff)
        if first is None:
            logger.warning("Schedule %r never fires again.", schedule.name)
            continue
        aps.add_job(
            _due,
            trigger=schedule.trigger,
            id=schedule.name,
            name=schedule.name,
            coalesce=scheduler.coalesce,
            misfire_grace_time=max(int(scheduler.misfire_grace), 1),
            max_instances=MAX_QUEUED,
            next_run_time=schedule.local_time(first),
        )
    ticks.start()
    for schedule, fire_ms in due:
        ticks.submit(schedule.name, [fire_ms])
    finished = threading.Event()

    def shut_down() -> None:  # outside the signal handler: APScheduler's shutdown takes locks
        stop.wait()
        while aps.state != STATE_RUNNING and not finished.is_set():
            time.sleep(0.05)
        if aps.state == STATE_RUNNING:
            aps.shutdown(wait=False)

    threading.Thread(target=shut_down, name="dramatiq-reliable-stop", daemon=True).start()
    restore = _on_signals(stop.set) if handle_signals else None
    try:
        if not stop.is_set():
            aps.start()
    finally:
        finished.set()
        ticks.stop()
        ticks.join(timeout=max(30.0, 2 * scheduler.claim_lease))
        if restore is not None:
            restore()


def _due() -> None:
    """APScheduler's job function; never called (the TickExecutor fires ticks itself)."""


def _on_signals(stop: Callable[[], None]) -> Callable[[], None] | None:
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        logger.info("Got %s; stopping after the tick in progress.", signal.Signals(signum).name)
        stop()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def keepalive(broker: dramatiq.Broker) -> None:
    """Let RabbitMQ see this thread's idle connection (heartbeats), or drop it if it is gone."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    if not isinstance(broker, RabbitmqBroker):
        return
    connection = getattr(broker.state, "connection", None)
    if connection is None:
        return
    try:
        connection.process_data_events(time_limit=0)
    except Exception as exc:
        logger.info("The scheduler's broker connection dropped (%s); the next enqueue reconnects.", exc)
        try:
            del broker.connection
        except Exception:
            pass
