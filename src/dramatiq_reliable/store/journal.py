"""Group commit: the writes of all worker threads of a process, flushed together.

A thread that must know its write landed (a job's final transition, before its message is
acked) calls ``submit(op, wait=True)``. If no flush is in progress it becomes the leader: it
takes every pending op and applies them in one :meth:`Store.apply` call; threads that arrive
meanwhile queue up, and the next leader takes them all. Writes that need no answer
(``wait=False``: "running", "due") ride along with the next flush, or a background thread
flushes them after ``linger`` seconds.

When the store cannot be reached, the journal degrades: waiting threads are released at once
with :class:`StoreUnavailable`, writes marked ``retry`` are buffered and replayed in order when
the store answers again; the rest fail fast. A buffered write carries the time it was made
(``at``, ms), so the events it records keep the time they happened, not the time of the replay.
The buffer holds ``max_backlog`` writes; a job's final write is the last thing it drops, and
what it collapses or drops is counted and logged (see :mod:`._buffer`). Nothing here ever
blocks a job for longer than one store timeout.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .. import metrics
from .._clock import now_ms
from ..errors import StoreUnavailable
from ._buffer import RANKS, WriteBuffer
from ._buffer import rank as rank_of

if TYPE_CHECKING:
    from .base import Store

logger = logging.getLogger("dramatiq_reliable.store.journal")

#: Seconds a write that nobody waits for may sit before the background thread flushes it.
DEFAULT_LINGER = 0.02
#: Writes kept while the store is unreachable; beyond this the least needed are dropped (and counted).
DEFAULT_MAX_BACKLOG = 10_000
#: Seconds between reconnection attempts while degraded.
DEFAULT_RETRY_INTERVAL = 1.0
#: Ops applied in one call at most.
BATCH_MAX = 500
#: Seconds between two batches of a process that carry the retention cleanup (``header``).
CLEANUP_INTERVAL = 0.25


class Slot:
    """One submitted op and, once ``done``, its ``result`` or ``error``."""

    __slots__ = ("at", "done", "error", "lead", "op", "result", "retry", "wake")

    def __init__(self, op: dict[str, Any], retry: bool) -> None:
        self.op = op
        self.retry = retry
        #: When the write was made (ms): the time of its events if it has to be buffered.
        self.at = now_ms()
        self.done = False
        #: Set when the previous leader hands this waiting slot's thread the next flush.
        self.lead = False
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        #: Held while the submitting thread waits; released to wake it (done, or to lead).
        self.wake: threading.Lock | None = None

    @property
    def ok(self) -> bool:
        return self.done and self.error is None and not (self.result and "error" in self.result)


class Journal:
    """The group-commit queue of one store in one process. Get it with ``store.journal``.

    Parameters:
      store(Store): where ops are applied.
      linger(float): seconds an unwaited write may wait for company before it is flushed.
      max_backlog(int): writes buffered while the store is unreachable.
      retry_interval(float): seconds between reconnection attempts while degraded.
    """

    def __init__(
        self,
        store: Store,
        *,
        linger: float = DEFAULT_LINGER,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
    ) -> None:
        self.store = store
        self.linger = linger
        self._max_backlog = max_backlog
        self.retry_interval = retry_interval
        #: Merged into every batch (JobState puts its retention here).
        self.header: dict[str, Any] = {}
        self._reset()
        _journals.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        # Hot paths take the plain lock; the background thread and flush() wait on the condition,
        # which shares it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: list[Slot] = []
        #: Writes that wait up to ``linger`` for their job's next write (``submit(linger=True)``).
        self._lingering: dict[Slot, float] = {}
        self._cleaned = 0.0
        self._backlog = WriteBuffer(self._max_backlog)
        self._flushing = False
        self._armed = False
        self._degraded: StoreUnavailable | None = None
        self._closed = False
        self._thread: _Flusher | None = None
        #: The latest write submitted without waiting nor lingering (:meth:`sync` waits for it).
        self._last_unwaited: Slot | None = None

    @property
    def degraded(self) -> bool:
        """True while the store is unreachable and writes are being buffered."""
        return self._degraded is not None

    @property
    def unsent(self) -> bool:
        """True while a write this process submitted without waiting (and without linger) is not applied yet."""
        last = self._last_unwaited
        return last is not None and not last.done and self._pid == os.getpid()

    @property
    def backlog(self) -> int:
        """How many writes are buffered, waiting for the store to come back."""
        return len(self._backlog)

    @property
    def max_backlog(self) -> int:
        """Writes buffered at most while the store is unreachable."""
        return self._max_backlog

    @max_backlog.setter
    def max_backlog(self, size: int) -> None:
        self._max_backlog = self._backlog.size = size

    def submit(
        self,
        op: dict[str, Any],
        *,
        wait: bool,
        retry: bool = True,
        linger: bool = False,
        after: Slot | None = None,
    ) -> Slot:
        """Queue ``op``; with ``wait``, return once it was applied (or failed).

        Parameters:
          op(dict): the op (see :mod:`.ops`).
          wait(bool): block until the op's batch was applied.
          retry(bool): if the store is unreachable, buffer the op and apply it later; without,
            the op fails at once (use for questions, such as an idempotency check).
          linger(bool): (without ``wait``) hold the op up to ``linger`` seconds rather than
            sending it with the next flush: a job's start, which its end often joins.
          after(Slot): an earlier op of the same job; if it still lingers, it goes in the same
            batch, right before this one (the store then reads and writes the record once).

        Returns:
          Slot: with ``result`` (the op's result) or ``error`` once ``done``.
        """
        if self._pid != os.getpid():
            self._reset()
        slot = Slot(op, retry)
        with self._lock:
            if self._thread is None:
                self._thread = _Flusher(self)
                self._thread.start()
            if self._degraded is not None:
                self._give_up(slot, self._degraded)
                return slot
            if after is not None and self._lingering.pop(after, None) is not None:
                self._pending.append(after)
            if not wait and linger:
                self._lingering[slot] = time.monotonic()
            else:
                self._pending.append(slot)
                if not wait:
                    self._last_unwaited = slot
            if not wait:
                if not self._armed:
                    self._armed = True
                    self._cond.notify_all()
                return slot
            batch = self._lead_or_park(slot)
        while True:
            if batch is None:
                # Sleep until a leader applied our op, or handed us the next flush.
                assert slot.wake is not None
                slot.wake.acquire()
                if slot.done:
                    return slot
                with self._lock:
                    slot.wake = None
                    batch = self._take()
            self._lead(batch)
            with self._lock:
                if slot.done:
                    return slot
                batch = self._lead_or_park(slot)  # more than BATCH_MAX ops were ahead of ours

    def _lead_or_park(self, slot: Slot) -> list[Slot] | None:
        """(lock held) The next batch to apply if no flush is running; else park ``slot``."""
        if self._flushing:
            self._park(slot)
            return None
        return self._take()

    @staticmethod
    def _park(slot: Slot) -> None:
        """(lock held) Give ``slot`` a held lock to sleep on until a leader releases it."""
        slot.lead = False
        slot.wake = threading.Lock()
        slot.wake.acquire()

    def flush(self, timeout: float = 5.0) -> bool:
        """Apply every pending write now. Returns False if some could not be applied in time."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._lingering:
                    self._pending.extend(self._lingering)
                    self._lingering.clear()
                if self._degraded is not None:
                    break
                if not self._pending and not self._flushing:
                    return not self._backlog
                if self._flushing:
                    self._cond.wait(timeout=0.05)
                    continue
                batch = self._take()
            self._lead(batch)
        return False

    def sync(self, timeout: float = 5.0) -> bool:
        """Return once the writes submitted without waiting before this call were applied (or failed).

        Writes that linger (a running job's start) are left to their job. Applies the pending
        writes at once if no flush is running. Returns False if some were not applied in time.
        """
        target = self._last_unwaited
        if target is None or target.done or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        while not target.done and time.monotonic() < deadline:
            with self._lock:
                if target.done or self._degraded is not None:
                    break
                if self._flushing:
                    self._cond.wait(timeout=0.05)
                    continue
                batch = self._take()
            self._lead(batch)
        return target.done

    def close(self) -> None:
        """Flush what can be flushed and stop the background thread."""
        self.flush(timeout=2.0)
        with self._lock:
            self._closed = True
            self._cond.notify_all()
            left = len(self._backlog)
            collapsed, dropped = self._backlog.episode()
        if left:
            logger.warning(
                "Closing with %d buffered store writes that could not be applied (%d more collapsed, %d dropped).",
                left,
                collapsed,
                sum(dropped.values()),
            )

    # -- machinery (lock held where noted) ------------------------------------------------------

    def _take(self) -> list[Slot]:
        """(lock held) Become the leader and take the next batch (with the writes that lingered long enough)."""
        self._flushing = True
        if self._lingering:
            due = time.monotonic() - self.linger
            ready = [slot for slot, since in self._lingering.items() if since <= due]
            for slot in ready:
                del self._lingering[slot]
            self._pending.extend(ready)
        batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
        return batch

    def _batch(self, slots: list[Slot]) -> dict[str, Any]:
        # ``sent_ms`` is this process's clock, only ever compared with its own times (an alert's
        # ``at_ms``); the store judges leases, liveness and retention by its own clock.
        batch = {"sent_ms": now_ms(), "ops": [s.op for s in slots]}
        header = self.header
        if header:
            clock = time.monotonic()
            if clock - self._cleaned >= CLEANUP_INTERVAL:
                self._cleaned = clock
                batch.update(header)
            elif "ttl_ms" in header:
                batch["ttl_ms"] = header["ttl_ms"]
        return batch

    def _lead(self, batch: list[Slot]) -> None:
        """Apply ``batch`` (lock not held), then hand the leadership back."""
        try:
            results = self.store.apply_serial(self._batch(batch)) if batch else []
        except StoreUnavailable as exc:
            with self._lock:
                self._enter_degraded(exc, batch)
                self._release([])
            return
        except Exception as exc:
            logger.exception("The store rejected a batch of %d writes; they are dropped.", len(batch))
            metrics.inc("store_errors_total", op="apply")
            for slot in batch:
                metrics.inc("store_writes_dropped_total", rank=RANKS[rank_of(slot.op)])
            with self._lock:
                for slot in batch:
                    slot.error = exc
                self._release(batch)
            return
        for slot, result in zip(batch, results, strict=False):
            slot.result = result
            if "error" in result:
                logger.error("The store rejected a write for job %r: %s", slot.op.get("id"), result["error"])
                metrics.inc("store_errors_total", op=str(slot.op.get("k")))
        with self._lock:
            self._release(batch)

    def _release(self, batch: list[Slot]) -> None:
        """(lock held) Mark ``batch`` done, wake its waiters, and hand the next flush on."""
        for slot in batch:
            slot.done = True
            if slot.wake is not None:
                slot.wake.release()
        # The next leader: the first pending op whose thread waits (others ride along).
        for slot in self._pending:
            if slot.wake is not None and not slot.lead:
                slot.lead = True
                slot.wake.release()
                return
        self._flushing = False
        self._cond.notify_all()  # the background thread, if it waits for a flush to end

    def _enter_degraded(self, exc: StoreUnavailable, batch: list[Slot]) -> None:
        """(lock held) The store is unreachable: buffer or fail everything in flight."""
        if self._degraded is None:
            logger.error(
                "Store unreachable (%s). Jobs without idempotency_key or unique keep running; their "
                "records are buffered (up to %d writes) and written when it answers again. Jobs with "
                "one, and deliveries that may have run before, are put back until then.",
                exc,
                self.max_backlog,
            )
        self._degraded = exc
        metrics.inc("store_errors_total", op="apply")
        for slot in [*batch, *self._pending, *self._lingering]:
            self._give_up(slot, exc)
        self._pending = []
        self._lingering.clear()

    def _give_up(self, slot: Slot, exc: StoreUnavailable) -> None:
        """(lock held) Fail ``slot`` now; buffer it for later if it is a retryable write."""
        slot.error = exc
        slot.done = True
        if slot.wake is not None:
            slot.wake.release()
        if slot.retry:
            slot.op.setdefault("at_ms", slot.at)
            metrics.inc("store_writes_buffered_total")
            self._backlog.add(slot)

    def _recover(self) -> None:
        """(background thread) Try the store; when it answers, replay the backlog in order."""
        try:
            self.store.ping()
        except StoreUnavailable:
            return
        replayed = 0
        while True:
            with self._lock:
                if self._flushing:
                    return
                chunk = self._backlog.take(BATCH_MAX)
                if not chunk:
                    self._degraded = None
                    self._cond.notify_all()
                    collapsed, dropped = self._backlog.episode()
                    logger.warning(
                        "Store reachable again; %d buffered writes applied, %d collapsed into them, "
                        "%d dropped (%d final, %d record, %d noise).",
                        replayed,
                        collapsed,
                        sum(dropped.values()),
                        dropped["final"],
                        dropped["record"],
                        dropped["noise"],
                    )
                    return
                self._flushing = True
            try:
                self.store.apply_serial(self._batch(chunk))
                replayed += len(chunk)
            except StoreUnavailable:
                with self._lock:
                    self._backlog.restore(chunk)
                    self._flushing = False
                return
            except Exception:
                logger.exception("The store rejected %d buffered writes; they are dropped.", len(chunk))
                for slot in chunk:
                    metrics.inc("store_writes_dropped_total", rank=RANKS[rank_of(slot.op)])
            with self._lock:
                self._flushing = False

    def _tick(self) -> None:
        """(background thread) One round: flush lingering writes, or try to recover."""
        with self._lock:
            while not self._closed and not self._armed and self._degraded is None:
                self._cond.wait()
            if self._closed:
                return
            degraded = self._degraded is not None
        if degraded:
            time.sleep(self.retry_interval)
            self._recover()
            return
        time.sleep(self.linger)
        with self._lock:
            # Keep ticking while writes linger or wait (a batch in flight, more than one batch).
            self._armed = bool(self._lingering or self._pending)
            if self._flushing or self._degraded is not None:
                return
            batch = self._take()
        self._lead(batch)


class _Flusher(threading.Thread):
    """Flushes writes nobody waits for, and reconnects while degraded. Never dies on an error."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(name="dramatiq-reliable-journal", daemon=True)
        self.journal = weakref.proxy(journal)

    def run(self) -> None:
        while True:
            try:
                if self.journal._closed:
                    return
                self.journal._tick()
            except ReferenceError:
                return
            except Exception:
                logger.exception("Unexpected error in the journal thread.")
                time.sleep(1.0)


_journals: weakref.WeakSet[Journal] = weakref.WeakSet()


def flush_unsent(timeout: float = 5.0) -> None:
    """Apply the writes this process made without waiting, in every journal: a read that follows sees them.

    A ``send()`` does not wait for its job's record to be written; the store's job reads and
    the operator controls (cancel, pause) call this first, so that the process that sent a job
    finds its record (read-your-writes). Nothing is waited for when those writes were applied
    already; a running job's start, which lingers for its end, is not forced out.
    """
    for journal in list(_journals):
        if journal.unsent:
            journal.sync(timeout)


@atexit.register
def _flush_at_exit() -> None:
    for journal in list(_journals):
        if journal._pid == os.getpid():
            try:
                journal.flush(timeout=2.0)
            except Exception:  # pragma: no cover - best effort at interpreter exit
                logger.debug("Journal flush at exit failed.", exc_info=True)
