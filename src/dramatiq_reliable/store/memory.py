"""``MemoryStore``: the store in this process, for tests, the demo and ``StubBroker``.

It is :class:`RedisStore` itself, over an in-process Redis (``fakeredis`` with ``lupa``) that
runs the same Lua library: there is one implementation of the store's behaviour, and
``tests/contract`` holds both stores to it. State is per instance and per process: worker
processes do not share a ``MemoryStore``. Every command (a batch is one) runs under the
embedded server's lock, so the worker threads of a process can share one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from .base import Store
from .redis import RedisStore


class MemoryStore(RedisStore):
    """The store in this process's memory. Same contract and code as :class:`RedisStore`.

    Parameters:
      clock(callable): the current time in milliseconds; batches run at this time instead of
        the embedded server's clock (tests that drive time pass their own). Key expiry
        (``PX``) still follows the real time.

    Raises:
      ConfigurationError: ``fakeredis`` or ``lupa`` is not installed.
    """

    def __init__(self, *, clock: Callable[[], int] | None = None) -> None:
        try:
            import fakeredis
        except ImportError:  # pragma: no cover - a dependency of the package
            raise ConfigurationError("MemoryStore needs fakeredis[lua]: pip install 'fakeredis[lua]'") from None
        Store.__init__(self)
        self.server = fakeredis.FakeServer(version=(7,))
        self.client = fakeredis.FakeRedis(server=self.server)
        self._setup("memory://", "dr", clock)

    def apply_serial(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return self.apply(batch)
