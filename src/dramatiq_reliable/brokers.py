"""Brokers from URLs, for the CLI and tools: ``redis://…`` → RedisBroker, ``amqp://…`` → RabbitmqBroker."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq

from ._identity import broker_identity
from ._urls import check_redis_query, hide_password, safe_reason
from .errors import BrokerUnavailable, ConfigurationError

if TYPE_CHECKING:
    from .dead.xq import DeadQueue

#: URL schemes per broker.
REDIS_SCHEMES = ("redis", "rediss", "unix")
AMQP_SCHEMES = ("amqp", "amqps")

#: Seconds to wait for a connection (and, on RabbitMQ, for its whole handshake) unless the URL
#: says otherwise (``?socket_connect_timeout=`` on Redis, ``?stack_timeout=`` on RabbitMQ): a
#: URL that names the wrong port fails within seconds instead of pika's 15.
DEFAULT_CONNECT_TIMEOUT = 3.0

#: The URL (password hidden) of each broker built here, for the messages that name it.
_URLS: weakref.WeakKeyDictionary[dramatiq.Broker, str] = weakref.WeakKeyDictionary()


def check_broker_url(url: str) -> str:
    """Return the broker kind (``"redis"`` or ``"rabbitmq"``) of a URL.

    Raises:
      ConfigurationError: the URL is malformed or of another scheme.
    """
    shown = hide_password(url)
    try:
        parts = urlsplit(url)
        _ = parts.port
        query = parse_qsl(parts.query, keep_blank_values=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigurationError(f"malformed broker URL {shown!r}: {safe_reason(exc, url)}") from None
    if parts.scheme in REDIS_SCHEMES:
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"malformed broker URL {shown!r}: no host")
        check_redis_query([k for k, _ in query], ("namespace",), url, "broker")
        return "redis"
    if parts.scheme in AMQP_SCHEMES:
        if not parts.hostname:
            raise ConfigurationError(f"malformed broker URL {shown!r}: no host")
        return "rabbitmq"
    raise ConfigurationError(f"unsupported broker URL {shown!r} (use redis://… or amqp://…)")


def broker_from_url(url: str, **options: Any) -> dramatiq.Broker:
    """A broker for ``url``, with Dramatiq's default middleware. Nothing connects yet.

    Parameters:
      url(str): ``redis://host:port/db`` or ``amqp://user:password@host:port/vhost``. A Redis URL
        may name the broker's key namespace: ``redis://host:6379/0?namespace=myapp`` (default
        ``dramatiq``, as ``RedisBroker``'s).
      **options: passed to the broker's constructor (``namespace=``, ``confirm_delivery=``, …).

    Raises:
      ConfigurationError: the URL is malformed or of another scheme.
    """
    kind = check_broker_url(url)
    shown = hide_password(url)
    broker: dramatiq.Broker
    try:
        if kind == "redis":
            from dramatiq.brokers.redis import RedisBroker

            bare, namespace = _split_namespace(url)
            if namespace is not None:
                options.setdefault("namespace", namespace)
            if "socket_connect_timeout=" not in urlsplit(url).query:
                options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
            broker = RedisBroker(url=bare, **options)  # type: ignore[no-untyped-call]
        else:
            from dramatiq.brokers.rabbitmq import RabbitmqBroker

            broker = RabbitmqBroker(url=url, **options)
            _bound_handshake(broker, urlsplit(url).query)
    except ValueError as exc:  # an option's value (pika and redis check them when the URL is read)
        raise ConfigurationError(f"malformed broker URL {shown!r}: {safe_reason(exc, url)}") from None
    _URLS[broker] = shown
    return broker


def _bound_handshake(broker: Any, query: str) -> None:
    """Bound pika's connection and handshake times (15 s by default) unless the URL set them."""
    for parameters in broker.parameters if isinstance(broker.parameters, list) else [broker.parameters]:
        for name in ("socket_timeout", "stack_timeout"):
            if f"{name}=" not in query:
                setattr(parameters, name, DEFAULT_CONNECT_TIMEOUT)


def ping_broker(broker: dramatiq.Broker) -> None:
    """Check the broker answers.

    Raises:
      BrokerUnavailable: it does not.
    """
    try:
        if hasattr(broker, "client"):  # RedisBroker
            broker.client.ping()
        elif hasattr(broker, "connection"):  # RabbitmqBroker
            broker.connection.process_data_events(time_limit=0)
    except Exception as exc:
        shown = _URLS.get(broker)
        where = f"broker {shown}" if shown else "broker"
        raise BrokerUnavailable(f"{where} unreachable: {_reason(exc, shown or '')}") from exc


def _reason(exc: BaseException, url: str) -> str:
    """Why a broker did not answer, in words (pika's own messages hold socket tuples)."""
    while True:  # pika wraps the socket's error, in args or in .exception
        inner = exc.args[0] if exc.args else getattr(exc, "exception", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    kind = type(exc).__name__
    if kind == "AMQPConnectorStackTimeout":
        return f"no AMQP handshake within {DEFAULT_CONNECT_TIMEOUT:g}s (is it a RabbitMQ port?)"
    if kind == "AMQPConnectionWorkflowFailed":
        last = getattr(exc, "exceptions", None)
        if last:
            return _reason(last[-1], url)
    text = safe_reason(exc, url)
    return text if text != kind else f"{kind} (refused or no answer)"


def _split_namespace(url: str) -> tuple[str, str | None]:
    """``redis://h/0?namespace=x&…`` → (``redis://h/0?…``, ``"x"``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [v for k, v in query if k == "namespace"]
    if not names:
        return url, None
    if not names[-1]:
        raise ConfigurationError(f"malformed broker URL {hide_password(url)!r}: empty namespace")
    rest = urlencode([(k, v) for k, v in query if k != "namespace"])
    return urlunsplit(parts._replace(query=rest)), names[-1]


# -- dead letters ------------------------------------------------------------------------------


def dead_queue(broker: dramatiq.Broker) -> DeadQueue:
    """Native access to ``broker``'s dead-letter queues (see :mod:`dramatiq_reliable.dead.xq`).

    Raises:
      ConfigurationError: the broker is neither a RedisBroker, a RabbitmqBroker nor a StubBroker.
    """
    from dramatiq.brokers.stub import StubBroker

    if isinstance(broker, StubBroker):
        from .dead.xq_stub import StubDeadQueue

        return StubDeadQueue(broker)
    if hasattr(broker, "client") and hasattr(broker, "namespace"):  # RedisBroker
        from .dead.xq_redis import RedisDeadQueue

        return RedisDeadQueue(broker)
    if hasattr(broker, "parameters"):  # RabbitmqBroker
        from .dead.xq_rabbitmq import RabbitmqDeadQueue

        return RabbitmqDeadQueue(broker)
    raise ConfigurationError(f"dead letters of {type(broker).__name__} are not supported (Redis, RabbitMQ or stub)")


__all__ = [
    "AMQP_SCHEMES",
    "REDIS_SCHEMES",
    "broker_from_url",
    "broker_identity",
    "check_broker_url",
    "dead_queue",
    "ping_broker",
]
