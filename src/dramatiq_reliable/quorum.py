"""``QuorumRabbitmqBroker``: Dramatiq's ``RabbitmqBroker`` with replicated (quorum) queues.

Dramatiq declares classic queues, and has no option for other types: the arguments of every
queue it declares come from ``RabbitmqBroker._build_queue_arguments`` (the queue and its ``.DQ``)
and ``_declare_xq_queue`` (the ``.XQ``). This subclass overrides those two, and nothing else.
"""

from __future__ import annotations

from typing import Any

from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.common import xq_name

from .errors import ConfigurationError


class QuorumRabbitmqBroker(RabbitmqBroker):
    """A ``RabbitmqBroker`` whose queues (``q``, ``q.DQ``, ``q.XQ``) are quorum queues.

    Quorum queues are replicated over the cluster's nodes (RabbitMQ ≥ 3.8; message TTL, used by
    the ``.XQ``, needs ≥ 3.10). A queue's type is fixed when it is first declared: an existing
    classic queue of the same name makes the declaration fail (406 PRECONDITION_FAILED); move
    to new queue names, or drain and delete the old queues first.

    Parameters:
      delivery_limit(int|None): ``x-delivery-limit`` of the queue and its ``.DQ``: a message
        handed back (its consumer's connection lost) more often than this is dead-lettered to
        the ``.XQ``, where DeadLetters' tools list it. ``None`` leaves RabbitMQ's default (none
        before 4.0, 20 from 4.0). A worker that restarts while it holds delayed messages (they
        stay unacked in its memory until their time) hands them back too: keep the limit well
        above the restarts a delay may see. Defaults to 5.
      **kwargs: ``RabbitmqBroker``'s (``url=``, ``confirm_delivery=``, ``middleware=``, …).
        ``max_priority`` is refused: quorum queues before RabbitMQ 4 have no priorities.

    Raises:
      ConfigurationError: ``delivery_limit`` is not a positive integer, or ``max_priority`` was given.

    Example::

        broker = dr.QuorumRabbitmqBroker(url="amqp://rabbit:5672", delivery_limit=5)
        dr.install(broker, dr.RedisStore("redis://redis:6379/1"))

    Dead letters on a quorum ``.XQ`` are read without spending deliveries (see
    :mod:`dramatiq_reliable.dead._rabbitmq_quorum`).
    """

    def __init__(self, *, delivery_limit: int | None = 5, **kwargs: Any) -> None:
        if delivery_limit is not None and (
            isinstance(delivery_limit, bool) or not isinstance(delivery_limit, int) or delivery_limit < 1
        ):
            raise ConfigurationError(f"delivery_limit must be a positive integer or None, not {delivery_limit!r}")
        if kwargs.get("max_priority") is not None:
            raise ConfigurationError("max_priority is not supported on quorum queues; leave it out")
        super().__init__(**kwargs)
        self.delivery_limit = delivery_limit

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)  # type: ignore[no-untyped-call]
        arguments["x-queue-type"] = "quorum"
        if self.delivery_limit is not None:
            arguments["x-delivery-limit"] = self.delivery_limit
        return arguments

    def _declare_xq_queue(self, queue_name: str) -> Any:
        arguments = {"x-queue-type": "quorum", "x-message-ttl": DEAD_MESSAGE_TTL}
        return self.channel.queue_declare(queue=xq_name(queue_name), durable=True, arguments=arguments)
