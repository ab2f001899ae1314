"""Reading a dead-letter queue that is a RabbitMQ quorum queue without spending deliveries.

A quorum queue counts, per message, how often it was delivered and handed back (the
``x-delivery-count`` header); with a delivery limit (``x-delivery-limit``, or a policy; RabbitMQ
4 sets 20 by default) a message handed back once too often is dropped, or dead-lettered again.
A classic queue's reading session hands its messages back by closing its connection: on a
quorum queue, every ``dead list``, ``dead show`` or ``dead replay --dry-run`` would bring each
dead letter one step closer to being dropped.

So a session on a quorum queue never hands a message back: at its end it publishes a copy of
each message it still holds to the same queue (same body and properties, the delivery count
gone, and an ``expiration`` of what remained of the queue's dead-message TTL, so that a copy
expires when the original would have) and acks the originals, in the window's AMQP transaction:
the copy and the ack are committed together or not at all. The copies join the tail of the
queue in their order; a dead letter that arrived during the read sits before them. A session
cut off before its commit (the tool killed, the connection lost) hands its messages back, and
each counts one delivery: only such failures, never reads, spend them.

Whether a queue is a quorum queue is asked of the server itself: a consumer on a channel with a
global prefetch limit is refused on quorum queues and streams (``540 NOT_IMPLEMENTED``), on a
connection of its own that the refusal closes; nothing is delivered to it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

from .xq import XEntry

#: AMQP reply code of a feature the queue does not support (global QoS on a quorum queue).
NOT_IMPLEMENTED = 540


def is_quorum(parameters: Any, name: str) -> bool:
    """True if queue ``name`` refuses a consumer with a global prefetch limit (quorum queues, streams).

    A classic queue accepts it; the probe then stops at once (a message it may have been sent
    goes back to its place, uncounted). A queue that does not exist is not a quorum queue.
    """
    connection = pika.BlockingConnection(parameters)
    pika_log = logging.getLogger("pika.adapters.blocking_connection")
    pika_log.addFilter(_refusal)
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1, global_qos=True)
        try:
            channel.basic_consume(name, on_message_callback=lambda *_: None)
        except pika.exceptions.ConnectionClosedByBroker as exc:
            return bool(exc.reply_code == NOT_IMPLEMENTED)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_IMPLEMENTED:
                return True
            if exc.reply_code == 404:
                return False
            raise
        return False
    finally:
        pika_log.removeFilter(_refusal)
        if connection.is_open:
            connection.close()


def _refusal(record: logging.LogRecord) -> bool:
    """Keep pika from logging the probe's expected refusal as an error."""
    return "does not support global qos" not in record.getMessage()


def copy_properties(properties: Any, dead_at: int | None, now_ms: int | None = None) -> pika.BasicProperties:
    """``properties`` for the copy of a held message (see the module docstring)."""
    headers = dict(getattr(properties, "headers", None) or {})
    headers.pop("x-delivery-count", None)
    expiration = getattr(properties, "expiration", None)
    if dead_at is not None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        left = max(1, dead_at + DEAD_MESSAGE_TTL - now)
        expiration = str(min(left, int(expiration)) if expiration and str(expiration).isdigit() else left)
    return pika.BasicProperties(
        content_type=getattr(properties, "content_type", None),
        content_encoding=getattr(properties, "content_encoding", None),
        headers=headers or None,
        delivery_mode=2,
        priority=getattr(properties, "priority", None),
        correlation_id=getattr(properties, "correlation_id", None),
        reply_to=getattr(properties, "reply_to", None),
        expiration=expiration,
        message_id=getattr(properties, "message_id", None),
        timestamp=getattr(properties, "timestamp", None),
        type=getattr(properties, "type", None),
        app_id=getattr(properties, "app_id", None),
    )


def put_back_as_copies(windows: list[Any], entries: list[XEntry], properties: dict[str, Any], xq: str) -> int:
    """Replace each held entry by a copy at the tail of ``xq``, one transaction per window.

    Raises:
      pika.exceptions.AMQPError, OSError: the connection was lost; the windows not yet
        committed are handed back by the server (counting one delivery each).

    Returns:
      int: how many were put back.
    """
    groups: dict[int, list[XEntry]] = {}
    for entry in entries:
        groups.setdefault(int(entry.ref.partition(":")[0]), []).append(entry)
    count = 0
    for window, members in sorted(groups.items()):
        channel = windows[window]
        for entry in members:
            channel.basic_publish(
                exchange="",
                routing_key=xq,
                body=entry.raw or b"",
                properties=copy_properties(properties.get(entry.ref), entry.dead_at),
            )
            channel.basic_ack(int(entry.ref.partition(":")[2]))
        channel.tx_commit()
        count += len(members)
    return count
