"""Waiting for replicas: a store call's writes acknowledged by ``N`` replicas before it returns.

Redis replicates asynchronously: a primary that dies may take with it writes it acknowledged
but had not yet sent to its replicas, and the replica promoted in its place never saw them (a
job recorded ``done`` comes back ``running``; an idempotency marker vanishes and a duplicate
runs). ``WAIT N timeout`` after a store call blocks until ``N`` replicas have its writes, so a
write the store acknowledged is on a replica too, and Sentinel promotes the most up-to-date
replica. It narrows the window, it does not close it: a write whose ``WAIT`` timed out is
acknowledged all the same (it is logged and counted), and Redis makes no promise once the
replica that acknowledged it is not the one promoted.

``WAIT`` is sent in the same round trip as the call it covers. When it times out (no replica,
or one lagging), the next :data:`BACKOFF_S` seconds of calls do not wait: a store whose replica
is down costs one timeout per back-off, not one per call.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import metrics

logger = logging.getLogger("dramatiq_reliable.store")

#: Seconds store calls stop waiting for replicas after a ``WAIT`` timed out.
BACKOFF_S = 10.0


class ReplicaWait:
    """When and how a store waits for its replicas.

    Parameters:
      replicas(int): replicas that must have a call's writes (0: never wait).
      timeout_ms(int): longest wait, in milliseconds.
      shown(str): the store's URL (passwords hidden), for the log.
    """

    def __init__(self, replicas: int, timeout_ms: int, shown: str) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.shown = shown
        self._skip_until = 0.0
        self._lock = threading.Lock()

    def command(self) -> tuple[str, int, int] | None:
        """The ``WAIT`` to send after a write, or ``None`` (off, or backing off)."""
        if self.replicas <= 0 or time.monotonic() < self._skip_until:
            return None
        return ("WAIT", self.replicas, self.timeout_ms)

    def acked(self, count: int) -> None:
        """``WAIT`` answered that ``count`` replicas have the writes."""
        if count >= self.replicas:
            return
        metrics.inc("store_replica_wait_timeouts_total")
        with self._lock:
            if time.monotonic() < self._skip_until:
                return
            self._skip_until = time.monotonic() + BACKOFF_S
        logger.warning(
            "Store %s: %d of %d replica(s) acknowledged a write within %d ms; writes go on without "
            "waiting for %.0f s (a failover now may lose the latest of them).",
            self.shown,
            count,
            self.replicas,
            self.timeout_ms,
            BACKOFF_S,
        )
