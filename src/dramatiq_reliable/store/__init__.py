"""Stores: where dramatiq-reliable keeps its state (see :mod:`.base` for the contract)."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Store
from .memory import MemoryStore
from .redis import RedisStore


def open_store(url: str, **options: object) -> Store:
    """Open a store from a URL: ``redis://``, ``rediss://`` or ``memory://``.

    Raises:
      ConfigurationError: the URL is malformed or its scheme is not supported.
    """
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, **options)  # type: ignore[arg-type]
    if scheme == "memory":
        return MemoryStore()
    shown = url if isinstance(url, str) else repr(url)
    raise ConfigurationError(f"unsupported store URL {shown!r} (use redis://, rediss:// or memory://)")


__all__ = ["MemoryStore", "RedisStore", "Store", "open_store"]
