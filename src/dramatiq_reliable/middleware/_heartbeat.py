"""The per-process heartbeat: one thread, one store call per beat, for every middleware.

Middlewares that must say "this process is alive and still runs these jobs" (Idempotency's
lease renewal, the Watchdog's liveness) register a :class:`Beat`; every ``interval`` seconds
the thread collects their ops and applies them in one batch through the journal, then hands
each its results. The thread never dies on an error and is created lazily in the process that
needs it (so it is safe with ``fork``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..store.base import Store

logger = logging.getLogger("dramatiq_reliable.heartbeat")


class Beat(Protocol):
    """What a middleware gives the heartbeat."""

    #: Seconds between two beats of this contributor.
    interval: float

    def beat_ops(self) -> list[dict[str, Any]]:
        """The ops to apply now (may be empty)."""

    def beat_results(self, results: list[dict[str, Any]] | None, error: BaseException | None) -> None:
        """The results of those ops, in order (``None`` and the error if the call failed)."""


class Heartbeat(threading.Thread):
    """One per store and process. Get it with :func:`heartbeat_for`."""

    def __init__(self, store: Store) -> None:
        super().__init__(name="dramatiq-reliable-heartbeat", daemon=True)
        self.store = store
        self.beats: list[Beat] = []
        self._due: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def add(self, beat: Beat) -> None:
        with self._lock:
            if all(b is not beat for b in self.beats):
                # In step with a contributor of the same interval: one store call for both.
                due = next((self._due[id(b)] for b in self.beats if b.interval == beat.interval), None)
                self.beats.append(beat)
                self._due[id(beat)] = due if due is not None else time.monotonic() + beat.interval

    def remove(self, beat: Beat) -> None:
        """Stop beating for ``beat`` (its middleware stopped with its worker)."""
        with self._lock:
            self.beats = [b for b in self.beats if b is not beat]
            self._due.pop(id(beat), None)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._stop_event.wait(self._sleep())
                if not self._stop_event.is_set():
                    self.tick()
            except Exception:
                logger.exception("Unexpected error in the heartbeat; it goes on.")
                time.sleep(1.0)

    def _sleep(self) -> float:
        with self._lock:
            if not self._due:
                return 1.0
            return max(0.0, min(self._due.values()) - time.monotonic())

    def tick(self) -> None:
        """Beat every contributor that is due: one store call for all of them."""
        now = time.monotonic()
        with self._lock:
            due = [b for b in self.beats if self._due[id(b)] <= now]
            for b in due:
                self._due[id(b)] = now + b.interval
        parts: list[tuple[Beat, list[dict[str, Any]]]] = []
        for b in due:
            try:
                parts.append((b, b.beat_ops()))
            except Exception:
                logger.exception("Heartbeat contributor %r failed.", b)
        ops = [op for _, b_ops in parts for op in b_ops]
        results: list[dict[str, Any]] = []
        error: BaseException | None = None
        if ops:
            slots = [self.store.journal.submit(op, wait=False, retry=False) for op in ops[:-1]]
            slots.append(self.store.journal.submit(ops[-1], wait=True, retry=False))
            for slot in slots:
                if not slot.done:  # applied by another leader: wait for it
                    self.store.journal.flush(timeout=5.0)
                if slot.error is not None:
                    error = slot.error
                results.append(slot.result or {})
        i = 0
        for b, b_ops in parts:
            mine = results[i : i + len(b_ops)]
            i += len(b_ops)
            try:
                b.beat_results(None if error else mine, error)
            except Exception:
                logger.exception("Heartbeat contributor %r failed on its results.", b)


_heartbeats: weakref.WeakKeyDictionary[Store, tuple[int, Heartbeat]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def stop_heartbeat(store: Store) -> None:
    """Stop the heartbeat of ``store`` in this process, if it runs (``Store.close`` calls it)."""
    with _lock:
        item = _heartbeats.pop(store, None)
    if item is not None and item[0] == os.getpid():
        item[1].stop()


def heartbeat_for(store: Store) -> Heartbeat:
    """The running heartbeat of ``store`` in this process (started on first use)."""
    with _lock:
        item = _heartbeats.get(store)
        if item is None or item[0] != os.getpid() or not item[1].is_alive():
            hb = Heartbeat(store)
            hb.start()
            _heartbeats[store] = (os.getpid(), hb)
            return hb
        return item[1]
