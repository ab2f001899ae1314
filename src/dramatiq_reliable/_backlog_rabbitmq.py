"""The backlog of RabbitMQ queues: AMQP for exact counts, the management API for the rest.

* **AMQP** passive declares of ``q``, ``q.DQ`` and ``q.XQ`` give exact, current counts (a
  missing queue is reported as such).
* **The management HTTP API** (``rabbitmq-plugins enable rabbitmq_management``; port
  :data:`MANAGEMENT_PORT` on the broker's host, with the AMQP URL's user and password) lists the
  queues, counts unacked messages, and gives ``head_message_timestamp``: the AMQP ``timestamp``
  of the message at the head of the queue, read without taking it. The Watchdog stamps that
  property on every message its process publishes (:func:`stamp_publish_time`). The API's
  figures are refreshed every few seconds, so they are used only where AMQP has no answer.

Nothing here consumes, requeues or declares anything: a message's place and delivery count
never change by being looked at.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

logger = logging.getLogger("dramatiq_reliable.backlog")

#: Port of RabbitMQ's management HTTP API on the broker's host.
MANAGEMENT_PORT = 15672
#: Seconds to wait for the management API.
MANAGEMENT_TIMEOUT = 5.0


class ManagementUnavailable(Exception):
    """The management API did not answer (plugin not enabled, or refused)."""


def management_queues(broker: Any) -> dict[str, dict[str, Any]]:
    """The queues of the broker's virtual host, by name, from the management API.

    Raises:
      ManagementUnavailable: the API cannot be reached or refuses the credentials.
    """
    params = broker.parameters
    credentials = params.credentials
    vhost = urllib.parse.quote(params.virtual_host, safe="")
    columns = "name,messages_ready,messages_unacknowledged,consumers,head_message_timestamp"
    url = f"http://{params.host}:{MANAGEMENT_PORT}/api/queues/{vhost}?columns={columns}"
    auth = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=MANAGEMENT_TIMEOUT) as response:
            rows = json.load(response)
    except (OSError, ValueError) as exc:
        raise ManagementUnavailable(f"RabbitMQ management API at {params.host}:{MANAGEMENT_PORT}: {exc}") from exc
    if not isinstance(rows, list):
        raise ManagementUnavailable("RabbitMQ management API: unexpected answer")
    return {str(row["name"]): row for row in rows if isinstance(row, dict) and "name" in row}


def stats(broker: Any, queues: list[str], stats_class: Any) -> list[Any]:
    """The backlog of ``queues``; the age and in-flight counts only with the management API."""
    import pika
    from pika.exceptions import ChannelClosedByBroker

    from .backlog import _broker_errors
    from .errors import BrokerUnavailable

    try:
        api: dict[str, dict[str, Any]] | None = management_queues(broker)
    except ManagementUnavailable as exc:
        logger.debug("%s; queue ages are unknown", exc)
        api = None
    try:
        connection = pika.BlockingConnection(broker.parameters)
    except Exception as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc or type(exc).__name__}") from exc
    channel = connection.channel()

    def declare(name: str) -> Any:
        nonlocal channel
        try:
            return channel.queue_declare(name, passive=True).method
        except ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            channel = connection.channel()  # a 404 closes the channel
            return None

    out = []
    now = time.time()
    try:
        with _broker_errors():
            for q in queues:
                main, dq, xq = declare(q), declare(f"{q}.DQ"), declare(f"{q}.XQ")
                if main is None:
                    out.append(stats_class(queue=q, exists=False))
                    continue
                row = api.get(q, {}) if api is not None else {}
                delayed_row = api.get(f"{q}.DQ", {}) if api is not None else {}
                head = row.get("head_message_timestamp")
                age = max(now - head, 0.0) if isinstance(head, (int, float)) and main.message_count else None
                out.append(
                    stats_class(
                        queue=q,
                        depth=main.message_count,
                        # Workers hold delayed messages unacked until they are due: count both.
                        delayed=(dq.message_count + int(delayed_row.get("messages_unacknowledged") or 0))
                        if dq
                        else None,
                        dead=xq.message_count if xq else None,
                        in_flight=row.get("messages_unacknowledged") if api is not None else None,
                        consumers=main.consumer_count,
                        oldest_age=age,
                    )
                )
    finally:
        try:
            connection.close()
        except Exception:  # pragma: no cover - already closed by the server
            pass
    return out


def stamp_publish_time(broker: Any) -> None:
    """Make the current thread's channel of a ``RabbitmqBroker`` stamp the AMQP ``timestamp``.

    Dramatiq publishes without it; with it, the management API tells the age of a queue's head
    message without taking it. Called from ``before_enqueue`` (the publishing thread, whose
    channel ``enqueue`` uses next). Never raises: a send is never refused over a stamp.
    """
    try:
        channel = broker.channel
        if getattr(channel, "_dr_stamps_time", False):
            return
        publish = channel.basic_publish

        def basic_publish(exchange: str, routing_key: str, body: bytes, properties: Any = None, **kw: Any) -> Any:
            if properties is not None and properties.timestamp is None:
                properties.timestamp = int(time.time())
            return publish(exchange, routing_key, body, properties, **kw)

        channel.basic_publish = basic_publish
        channel._dr_stamps_time = True
    except Exception:  # pragma: no cover - the broker's own enqueue reports connection errors
        logger.debug("Could not stamp the publish time on the RabbitMQ channel.", exc_info=True)
