"""``QuorumRabbitmqBroker`` declares quorum queues; bad options fail at construction (no server needed)."""

from __future__ import annotations

import time

import pytest

import dramatiq_reliable as dr
from dramatiq_reliable.dead._rabbitmq_quorum import copy_properties


def test_queue_arguments_are_quorum_with_the_delivery_limit() -> None:
    broker = dr.QuorumRabbitmqBroker(url="amqp://guest:guest@127.0.0.1:5672/%2F", delivery_limit=7)
    arguments = broker._build_queue_arguments("q")
    assert arguments["x-queue-type"] == "quorum" and arguments["x-delivery-limit"] == 7
    assert arguments["x-dead-letter-routing-key"] == "q.XQ"
    unlimited = dr.QuorumRabbitmqBroker(url="amqp://127.0.0.1", delivery_limit=None)
    assert "x-delivery-limit" not in unlimited._build_queue_arguments("q")


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "5"])
def test_a_bad_delivery_limit_is_refused(bad: object) -> None:
    with pytest.raises(dr.ConfigurationError, match="delivery_limit must be a positive integer"):
        dr.QuorumRabbitmqBroker(url="amqp://127.0.0.1", delivery_limit=bad)  # type: ignore[arg-type]


def test_priorities_are_refused() -> None:
    with pytest.raises(dr.ConfigurationError, match="max_priority is not supported"):
        dr.QuorumRabbitmqBroker(url="amqp://127.0.0.1", max_priority=5)


def test_a_copy_keeps_headers_drops_the_delivery_count_and_expires_with_the_original() -> None:
    class Props:
        headers = {"x-death": [{"time": 1}], "x-delivery-count": 3}
        priority = 2
        expiration = None
        content_type = "application/json"

    now = int(time.time() * 1000)
    copy = copy_properties(Props(), dead_at=now - 1000, now_ms=now)
    assert copy.headers == {"x-death": [{"time": 1}]} and copy.priority == 2 and copy.delivery_mode == 2
    from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL

    assert int(copy.expiration) == DEAD_MESSAGE_TTL - 1000
