"""Brokers from URLs, for the CLI and tools: ``redis://…`` → RedisBroker, ``amqp://…`` → RabbitmqBroker."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import dramatiq

from .errors import BrokerUnavailable, ConfigurationError

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
      url(str): ``redis://host:port/db`` or ``amqp://user:password@host:port/vhost``.
      **options: passed to the broker's constructor (``namespace=``, ``confirm_delivery=``, …).

    Raises:
      ConfigurationError: the URL is malformed or of another scheme.
    """
    kind = check_broker_url(url)
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

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
