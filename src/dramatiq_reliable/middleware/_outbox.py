"""The sender of alerts: one bounded queue and one daemon thread per notifier and process.

A job thread only offers an alert to each queue (``put_nowait``): it never waits for a
notifier. A full queue drops the alert and counts it (``alerts_dropped_total``), and the log
says so: the first drop at once, then one line per :data:`DROP_LOG_INTERVAL` with how many
were dropped since, and one when the queue takes alerts again; a notifier
that raises is logged and counted (``notifier_errors_total``); one that hangs holds up only
its own queue. Threads start on first use in each process, so the outbox is safe to build
before Dramatiq forks its workers.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence

from .. import metrics
from ..alert import Alert
from ..notifiers import Notifier, notifier_name

logger = logging.getLogger("dramatiq_reliable.alerts")

#: Seconds between two "queue full" warnings of one notifier.
DROP_LOG_INTERVAL = 10.0


class _Lane(threading.Thread):
    """One notifier's queue and the thread that empties it."""

    def __init__(self, notifier: Notifier, size: int) -> None:
        self.notifier = notifier
        self.label = notifier_name(notifier)
        super().__init__(name=f"dramatiq-reliable-alerts-{self.label}", daemon=True)
        self.queue: queue.Queue[Alert] = queue.Queue(maxsize=size)
        self._last_drop_log = 0.0
        #: Alerts dropped since the queue was last full and not yet logged; and in this episode.
        self._unlogged = 0
        self._dropped = 0

    def offer(self, alert: Alert) -> bool:
        try:
            self.queue.put_nowait(alert)
        except queue.Full:
            metrics.inc("alerts_dropped_total", notifier=self.label)
            self._dropped += 1
            self._unlogged += 1
            now = time.monotonic()
            if self._dropped == 1 or now - self._last_drop_log >= DROP_LOG_INTERVAL:
                logger.warning(
                    "Alert queue of notifier %s is full (%d); %d alert(s) dropped since the last line, "
                    "the latest about job %s: %s.",
                    self.label,
                    self.queue.maxsize,
                    self._unlogged,
                    alert.job_id,
                    alert.title,
                )
                self._last_drop_log, self._unlogged = now, 0
            return False
        if self._dropped:
            logger.warning(
                "Alert queue of notifier %s takes alerts again; %d were dropped while it was full.",
                self.label,
                self._dropped,
            )
            self._dropped = self._unlogged = 0
        return True

    def run(self) -> None:
        while True:
            alert = self.queue.get()
            try:
                self.notifier(alert)
            except Exception as exc:
                metrics.inc("notifier_errors_total", notifier=self.label)
                logger.error("Notifier %s failed on an alert about job %s: %s", self.label, alert.job_id, exc)
            else:
                kind = "recovered" if alert.recovered else alert.kind
                metrics.inc("alerts_sent_total", kind=kind, notifier=self.label)
            finally:
                self.queue.task_done()


class Outbox:
    """Hands alerts to notifiers without ever blocking the caller.

    Parameters:
      notifiers(Sequence[Notifier]): where alerts go.
      size(int): alerts each notifier's queue holds at most.
    """

    def __init__(self, notifiers: Sequence[Notifier], size: int) -> None:
        self.notifiers = list(notifiers)
        self.size = size
        self._lanes: list[_Lane] = []
        self._pid = 0
        self._lock = threading.Lock()

    def labels(self) -> list[str]:
        """The notifiers' names, as metrics label them."""
        return [notifier_name(n) for n in self.notifiers]

    def lanes(self) -> list[_Lane]:
        """This process's lanes, started on first use."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    lanes = [_Lane(n, self.size) for n in self.notifiers]
                    for lane in lanes:
                        lane.start()
                    self._lanes = lanes
                    self._pid = os.getpid()
        return self._lanes

    def put(self, alert: Alert) -> None:
        """Offer ``alert`` to every notifier (never blocks)."""
        for lane in self.lanes():
            lane.offer(alert)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queued alerts to be sent; True if they were."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            with lane.queue.all_tasks_done:
                while lane.queue.unfinished_tasks:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    lane.queue.all_tasks_done.wait(left)
        return True
