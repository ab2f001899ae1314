"""The committer: who writes a message's staged transition, and when.

Each middleware of the bundle stages its section of a message's start and end on the shared
:class:`~._run.JobRun`. A broker's :class:`Committer` knows, per store, the bundle's
middlewares in the broker's order, and writes the staged op once all of them staged theirs:

* the start, without waiting (a middleware that needs an answer, Idempotency's check of a key
  or a possible redelivery, asks on its own and waits);
* the end, waiting, from ``before_ack``/``before_nack``, so a message is acked only once its
  final state is written (or buffered, with the store down).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from dramatiq.broker import Broker

if TYPE_CHECKING:
    from ._run import JobRun
    from .base import ReliableMiddleware

_committers: weakref.WeakKeyDictionary[Broker, Committer] = weakref.WeakKeyDictionary()


class Committer:
    """Commits the staged ops of one broker's bundle middlewares (one per broker)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: (id of the broker's middleware list, its size) -> the last middleware per store.
        self._key: tuple[int, int] = (0, -1)
        self._closers: set[int] = set()

    def _closing(self) -> set[int]:
        """The ids of the middlewares whose hook completes a phase for their store."""
        middleware = self.broker.middleware
        key = (id(middleware), len(middleware))
        if key != self._key:
            from .base import ReliableMiddleware

            last: dict[int, Any] = {}
            for m in middleware:
                if isinstance(m, ReliableMiddleware):
                    last[id(m.store)] = m
            self._closers = {id(m) for m in last.values()}
            self._key = key
        return self._closers

    def closes(self, middleware: ReliableMiddleware) -> bool:
        """True if every bundle middleware on ``middleware``'s store has run once it has."""
        return id(middleware) in self._closing()

    def started(self, middleware: ReliableMiddleware, run: JobRun) -> None:
        """``middleware``, which :meth:`closes` the start, staged its part of it: write the start."""
        run.commit(middleware.journal, wait=False)

    def finished(self, middleware: ReliableMiddleware, run: JobRun) -> None:
        """``middleware``, which :meth:`closes` the end, staged its part of it: write it, waiting."""
        run.commit(middleware.journal, wait=True)


def committer_for(broker: Broker) -> Committer:
    """The committer of ``broker``'s bundle middlewares."""
    committer = _committers.get(broker)
    if committer is None:
        committer = _committers.setdefault(broker, Committer(broker))
    return committer
