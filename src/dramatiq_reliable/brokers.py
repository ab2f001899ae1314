"""Brokers from URLs, for the CLI and tools: ``redis://…`` → RedisBroker, ``amqp://…`` → RabbitmqBroker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq

from ._identity import broker_identity
from .errors import BrokerUnavailable, ConfigurationError

if TYPE_CHECKING:
    from .dead.xq import DeadQueue

#: URL schemes per broker.
REDIS_SCHEMES = ("redis", "rediss", "unix")
AMQP_SCHEMES = ("amqp", "amqps")


def check_broker_url(url: str) -> str:
    """Return the broker kind (``"redis"`` or ``"rabbitmq"``) of a URL.

    Raises:
      ConfigurationError: the URL is malformed or of another scheme.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigurationError(f"malformed broker URL {url!r}: {exc}") from None
    if parts.scheme in REDIS_SCHEMES:
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"malformed broker URL {url!r}: no host")
        return "redis"
    if parts.scheme in AMQP_SCHEMES:
        if not parts.hostname:
            raise ConfigurationError(f"malformed broker URL {url!r}: no host")
        return "rabbitmq"
    raise ConfigurationError(f"unsupported broker URL {url!r} (use redis://… or amqp://…)")


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
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        url, namespace = _split_namespace(url)
        if namespace is not None:
            options.setdefault("namespace", namespace)
        return RedisBroker(url=url, **options)  # type: ignore[no-untyped-call]
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=url, **options)


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
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrokerUnavailable(f"broker unreachable: {reason}") from exc


def _split_namespace(url: str) -> tuple[str, str | None]:
    """``redis://h/0?namespace=x&…`` → (``redis://h/0?…``, ``"x"``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [v for k, v in query if k == "namespace"]
    if not names:
        return url, None
    if not names[-1]:
        raise ConfigurationError(f"malformed broker URL {url!r}: empty namespace")
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
