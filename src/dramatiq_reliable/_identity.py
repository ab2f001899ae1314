"""What names a broker's server: the same for every client of it, whatever address it was given.

Two worker fleets that name one Redis as ``localhost`` and ``127.0.0.1`` (or through a DNS
alias, a proxy, a load balancer) share their queues, so each must be able to put back the other's
unacked messages. Comparing the URLs' text would keep them apart; the identity is read from the
server instead:

* Redis: ``redis:<id>/<db>``, where ``<id>`` is a random id the first client stored in the
  broker's database under ``<namespace>:__dr_identity__`` (``SET NX``; every later client reads
  it). It names the database, survives a restart when the server persists its data, and follows
  a failover (it is replicated). Redis's own ``run_id`` would not do: it changes at every
  restart, and a process that died before it would never be matched again. If the key cannot be
  written (a read-only replica), ``redis:run:<run_id>/<db>`` is used.
* RabbitMQ: ``amqp:<cluster name>/<vhost>``, from the server properties of the connection: the
  same for every node of a cluster.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

logger = logging.getLogger("dramatiq_reliable.brokers")

#: Key, under a RedisBroker's namespace, holding the id of its database.
IDENTITY_KEY = "__dr_identity__"


def broker_identity(broker: Any) -> str:
    """The identity of ``broker``'s server (module docstring). Connects to it.

    Raises:
      Exception: the broker's client's own errors when the server cannot be reached.
    """
    if hasattr(broker, "client") and hasattr(broker, "namespace"):  # RedisBroker
        return _redis_identity(broker.client, broker.namespace)
    if hasattr(broker, "parameters"):  # RabbitmqBroker
        return _amqp_identity(broker)
    return f"{type(broker).__name__}:{id(broker)}"


def _redis_identity(client: Any, namespace: str) -> str:
    db = client.connection_pool.connection_kwargs.get("db", 0)
    key = f"{namespace}:{IDENTITY_KEY}"
    try:
        pipe = client.pipeline(transaction=False)
        pipe.set(key, secrets.token_hex(8), nx=True)
        pipe.get(key)
        _, found = pipe.execute()
        if found:
            return f"redis:{_text(found)}/{db}"
    except Exception as exc:
        if "READONLY" not in str(exc):
            raise
    return f"redis:run:{client.info('server')['run_id']}/{db}"


def _amqp_identity(broker: Any) -> str:
    import pika

    # A connection of its own, closed at once: the broker's are per thread and stay open.
    connection = pika.BlockingConnection(broker.parameters)
    try:
        properties = connection._impl.server_properties or {}
        vhost = connection._impl.params.virtual_host
    finally:
        connection.close()
    return f"amqp:{_text(properties.get('cluster_name') or '?')}/{vhost}"


def redis_url_locator(broker: Any) -> str:
    """``host:port/db`` of a RedisBroker's server, as its client was told (for display only)."""
    kwargs = broker.client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
