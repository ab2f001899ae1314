"""Stores: where dramatiq-reliable keeps its state (see :mod:`.base` for the contract)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._urls import hide_password, safe_reason
from ..errors import ConfigurationError
from .base import Store
from .memory import MemoryStore
from .redis import RedisStore


def open_store(url: str, **options: object) -> Store:
    """Open a store from a URL: ``redis://``, ``rediss://``, ``unix://``,
    ``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]``,
    ``redis+cluster://[:password@]host:port[,host:port…]`` (a Redis Cluster) or ``memory://``.

    A Redis URL may give the key prefix: ``redis://host:6379/1?prefix=myapp`` (default ``dr``),
    and how many replicas each write waits for: ``?wait=1&wait_timeout_ms=200`` (Sentinel URLs
    wait for 1 by default; see docs/scaling.md).

    Raises:
      ConfigurationError: the URL is malformed or its scheme is not supported.
    """
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        query = parse_qsl(parts.query, keep_blank_values=True) if parts else []
    except ValueError as exc:
        raise ConfigurationError(f"malformed store URL {hide_password(url)!r}: {safe_reason(exc, url)}") from None
    scheme = parts.scheme if parts else ""
    if parts is not None and scheme in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        prefixes = [v for k, v in query if k == "prefix"]
        if prefixes:
            if not prefixes[-1]:
                raise ConfigurationError("malformed store URL: empty prefix")
            options.setdefault("prefix", prefixes[-1])
            url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
        return RedisStore(url, **options)  # type: ignore[arg-type]
    if scheme == "memory":
        return MemoryStore()
    raise ConfigurationError(
        f"unsupported store URL {hide_password(url)!r} (use redis://, rediss://, redis+sentinel://, redis+cluster:// or memory://)"
    )


__all__ = ["MemoryStore", "RedisStore", "Store", "open_store"]
