"""Connecting the store to Redis: one server, a primary found through Sentinel, or a Redis Cluster.

URL forms (``prefix`` is read by :class:`~dramatiq_reliable.store.redis.RedisStore` before)::

    redis://[:password@]host[:port][/db]            one server (or a primary)
    rediss://…                                       the same over TLS
    unix://[:password@]/path/to/socket[?db=N]        a local socket
    redis+sentinel://[:password@]host:port[,host:port…]/service[/db]
                                                     the primary of ``service``, asked of the
                                                     Sentinels (redis-py's ``Sentinel`` client)
    redis+cluster://[:password@]host:port[,host:port…]
                                                     a Redis Cluster, from any of its nodes
                                                     (redis-py's ``RedisCluster`` client); no
                                                     database (a Cluster has only 0)

``password`` is the Redis servers' password; ``?sentinel_password=`` gives the Sentinels' own.
Durability of a write on a server with replicas, per URL: ``?wait=N`` makes each store call
wait until ``N`` replicas have its writes (``WAIT``), at most ``wait_timeout_ms`` (default
200). Sentinel URLs default to ``wait=1``; ``wait=0`` turns it off (see docs/scaling.md).
Cluster URLs take no such option yet (refused in one line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis

from .._urls import hide_password, safe_reason
from ..errors import ConfigurationError

#: Schemes of one server.
SERVER_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
#: Default Sentinel port, when a host of a Sentinel URL has none.
SENTINEL_PORT = 26379
#: The store's own query options of a URL (besides ``prefix``), removed before the Redis client reads it.
OWN_OPTIONS = ("wait", "wait_timeout_ms", "sentinel_password")
#: Milliseconds a store call waits for its replicas by default (``WAIT``).
DEFAULT_WAIT_TIMEOUT_MS = 200


@dataclass
class Connection:
    """A store's client and how it was reached."""

    #: A ``redis.Redis`` (one server, Sentinel), or ``None`` for a Cluster (see ``cluster``).
    client: redis.Redis | None
    #: The URL with its passwords hidden, for messages.
    shown: str
    #: "server", "sentinel" or "cluster".
    topology: str
    #: Replicas each store call waits for (0: none), and for how long at most (ms).
    wait_replicas: int = 0
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    #: A Cluster: makes its ``RedisCluster`` client (which asks a node for the slots as it is made).
    cluster: Callable[[], Any] | None = None


def connect(url: str, *, socket_timeout: float, socket_connect_timeout: float) -> Connection:
    """A client for ``url`` (module docstring). Nothing connects yet.

    Raises:
      ConfigurationError: the URL is malformed, or of another scheme.
    """
    shown = hide_password(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    url, options = _take_options(url, shown)
    if scheme == SENTINEL_SCHEME:
        return _sentinel(url, shown, options, socket_timeout, socket_connect_timeout)
    if scheme == CLUSTER_SCHEME:
        return _cluster(url, shown, options, socket_timeout, socket_connect_timeout)
    if scheme not in SERVER_SCHEMES:
        raise ConfigurationError(
            f"not a Redis URL: {shown!r} (expected redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://)"
        )
    parts = urlsplit(url)
    try:
        _ = parts.port
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigurationError(f"malformed Redis URL {shown!r}: {safe_reason(exc, url)}") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigurationError(f"malformed Redis URL {shown!r}: no host")
    return Connection(client, shown, "server", options.get("wait", 0), options["wait_timeout_ms"])


def _take_options(url: str, shown: str) -> tuple[str, dict[str, Any]]:
    """Remove the store's own query options from ``url``."""
    scheme, sep, rest = url.partition("://")
    path, _, query = rest.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    options: dict[str, Any] = {"wait_timeout_ms": DEFAULT_WAIT_TIMEOUT_MS}
    kept = []
    options["given"] = [key for key, _ in pairs if key in OWN_OPTIONS]
    for key, value in pairs:
        if key in OWN_OPTIONS[:2]:
            if not value.isdigit() or (key == "wait_timeout_ms" and int(value) == 0):
                raise ConfigurationError(f"malformed store URL {shown!r}: {key} must be a whole number, not {value!r}")
            options[key] = int(value)
        elif key == "sentinel_password":
            options[key] = value
        else:
            kept.append((key, value))
    rest = path + (f"?{urlencode(kept)}" if kept else "")
    return f"{scheme}{sep}{rest}", options


def _sentinel(url: str, shown: str, options: dict[str, Any], timeout: float, connect_timeout: float) -> Connection:
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    password: str | None = None
    username: str | None = None
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        user, _, secret = creds.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) or None)
    sentinels = [_host_port(item, shown) for item in netloc.split(",")]
    names = [p for p in path.split("/") if p]
    if not names or len(names) > 2:
        raise ConfigurationError(f"malformed Sentinel URL {shown!r}: expected …/service_name[/db]")
    service = unquote(names[0])
    db = 0
    if len(names) == 2:
        if not names[1].isdigit():
            raise ConfigurationError(f"malformed Sentinel URL {shown!r}: the database must be a number")
        db = int(names[1])
    from redis.sentinel import Sentinel

    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if options.get("sentinel_password"):
        sentinel_kwargs["password"] = options["sentinel_password"]
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, socket_timeout=timeout)
    client = sentinel.master_for(
        service,
        db=db,
        username=username,
        password=password,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=30,
    )
    return Connection(client, shown, "sentinel", options.get("wait", 1), options["wait_timeout_ms"])


def _host_port(item: str, shown: str, what: str = "Sentinel", default: int = SENTINEL_PORT) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
    host = host.strip("[]")
    if not host or (port and not port.isdigit()):
        raise ConfigurationError(f"malformed {what} URL {shown!r}: {item!r} is not host:port")
    return host, int(port) if port else default


def _cluster(url: str, shown: str, options: dict[str, Any], timeout: float, connect_timeout: float) -> Connection:
    """A Cluster URL: its nodes and password; the client is made at the first call."""
    own = options["given"]
    if own:
        raise ConfigurationError(f"store {shown!r}: {own[0]} is not supported on redis+cluster:// URLs")
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    if path.strip("/"):
        raise ConfigurationError(
            f"store {shown!r}: a redis+cluster:// URL names no database (a Redis Cluster has only 0); "
            f"drop /{path.strip('/')}"
        )
    if query:
        name = query.split("=", 1)[0]
        raise ConfigurationError(f"store {shown!r}: unknown option {name!r} on a redis+cluster:// URL")
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        user, _, secret = creds.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) or None)
    nodes = [_host_port(item, shown, "Cluster", 6379) for item in netloc.split(",") if item.strip()]
    if not nodes:
        raise ConfigurationError(f"malformed Cluster URL {shown!r}: no host")

    def make() -> Any:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call]
            username=username,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            health_check_interval=30,
        )

    return Connection(None, shown, "cluster", cluster=make)


def server_problems(info: dict[str, Any], shown: str) -> tuple[str | None, list[str]]:
    """What is wrong with the server the store writes to, from its ``INFO replication memory``:
    (an error, warnings).

    The error: it is a read-only replica (every write would be refused). The warnings: its
    ``maxmemory-policy`` may evict the store's keys (idempotency markers, leases, records).
    """
    error = topology_error(info, shown)
    warnings = []
    policy = str(info.get("maxmemory_policy") or "noeviction")
    limit = int(info.get("maxmemory") or 0)
    if policy != "noeviction":
        which = "keys with a TTL (markers, leases, records)" if policy.startswith("volatile") else "any key"
        bound = f"maxmemory {limit} bytes" if limit else "when a maxmemory is set"
        warnings.append(
            f"store {shown} has maxmemory-policy {policy}: {bound}, Redis may evict {which}, and an evicted "
            f"idempotency marker lets a duplicate run; set maxmemory-policy noeviction on the store's Redis"
        )
    return error, warnings


#: Why the store refuses a Cluster node named as one server (see docs/scaling.md).
CLUSTER_REFUSAL = (
    "name the Cluster with a redis+cluster://host:port[,host:port…] URL "
    "(a store call on one node would stop at its first key of another node's slot)"
)


def is_cluster_refusal(exc: BaseException) -> bool:
    """True for an error a Redis Cluster node gives a store call (keys of other slots)."""
    text = str(exc)
    return "non local key" in text or "CROSSSLOT" in text or text.startswith("MOVED ")


def is_readonly(exc: BaseException) -> bool:
    """True for a write refused by a replica (a command's ``READONLY``, or a script's)."""
    text = str(exc)
    return "READONLY" in text or "read only replica" in text


def topology_error(info: dict[str, Any], shown: str) -> str | None:
    """Why the store cannot write to this server (``INFO replication cluster``), or ``None``."""
    if str(info.get("cluster_enabled", "0")) == "1":
        return f"store {shown} is a Redis Cluster node: {CLUSTER_REFUSAL}"
    return readonly_reason(info, shown)


def readonly_reason(info: dict[str, Any], shown: str) -> str | None:
    """The one-line error for a store pointed at a replica, or ``None`` if it is a primary."""
    if info.get("role") != "slave":
        return None
    primary = f"{info.get('master_host', '?')}:{info.get('master_port', '?')}"
    return (
        f"store {shown} is a read-only replica (of {primary}): point the store at the primary, "
        f"or name the primary through Sentinel (redis+sentinel://host:26379/service)"
    )
