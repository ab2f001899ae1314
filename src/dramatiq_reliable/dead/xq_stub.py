"""Dead letters of a ``StubBroker`` (``broker.dead_letters_by_queue``), for tests and the demo."""

from __future__ import annotations

import threading
from typing import Any

from dramatiq import Message
from dramatiq.common import dq_name, q_name

from ..errors import NotFound
from .xq import DeadQueue, Session, XEntry

_lock = threading.Lock()


class StubDeadQueue(DeadQueue):
    """Dead letters of a ``StubBroker``. The stub keeps no time of death."""

    kind = "stub"

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def _lists(self, queue: str) -> list[list[Any]]:
        by_queue = self.broker.dead_letters_by_queue
        return [by_queue[name] for name in (queue, dq_name(queue)) if name in by_queue]

    def discover(self) -> set[str]:
        return {q_name(name) for name, items in self.broker.dead_letters_by_queue.items() if items}

    def counts(self, queues: list[str]) -> dict[str, int]:
        with _lock:
            return {q: sum(len(items) for items in self._lists(q)) for q in queues}

    def open(self, queue: str) -> Session:
        return _StubSession(self, queue)


class _StubSession(Session):
    def __init__(self, owner: StubDeadQueue, queue: str) -> None:
        self.owner = owner
        self.queue = queue

    def scan(self, want: set[str] | None = None) -> list[XEntry]:
        with _lock:
            proxies = [p for items in self.owner._lists(self.queue) for p in items]
        return [XEntry(self.queue, str(id(p))).fill(p._message.encode()) for p in proxies]

    def _take(self, refs: set[str]) -> set[str]:
        """Remove the proxies with these refs; return the refs that were there."""
        taken: set[str] = set()
        with _lock:
            for items in self.owner._lists(self.queue):
                keep = []
                for p in items:
                    if str(id(p)) in refs:
                        taken.add(str(id(p)))
                    else:
                        keep.append(p)
                items[:] = keep
        return taken

    def move(self, items: list[tuple[XEntry, Message[Any]]], drop: list[XEntry]) -> list[bool]:
        queues = self.owner.broker.queues
        if self.queue not in queues:
            raise NotFound(f"queue {self.queue!r} is not declared on the broker; nothing was replayed")
        taken = self._take({e.ref for e, _ in items} | {e.ref for e in drop})
        moved = []
        for entry, message in items:
            if entry.ref in taken:
                queues[self.queue].put(message.encode())
            moved.append(entry.ref in taken)
        return moved

    def remove(self, entries: list[XEntry]) -> list[bool]:
        taken = self._take({e.ref for e in entries})
        return [e.ref in taken for e in entries]
