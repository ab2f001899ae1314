"""Sentry context: events from a job carry its id, attempt, actor and business keys as tags."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import sentry_sdk
from dramatiq.brokers.stub import StubBroker
from sentry_sdk.integrations.dramatiq import DramatiqIntegration

import dramatiq_reliable as dr
from tests.unit.test_notifiers import Capture

FAST = {"min_backoff": 10, "max_backoff": 20}


@pytest.fixture(params=[True, False], ids=["with-integration", "without-integration"])
def sentry(request: pytest.FixtureRequest) -> Iterator[tuple[bool, list[dict[str, Any]]]]:
    Capture.events = []
    integrations = [DramatiqIntegration()] if request.param else []
    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1", transport=Capture, default_integrations=False, integrations=integrations
    )
    yield request.param, Capture.events
    sentry_sdk.get_global_scope().set_client(None)


def test_events_from_a_job_carry_its_tags(sentry: tuple[bool, list[dict[str, Any]]]) -> None:
    integration, captured = sentry
    # Given the bundle on a broker built after sentry_sdk.init (as the integration requires)
    broker = StubBroker(fail_fast_default=False)
    broker.emit_after("process_boot")
    dr.install(broker, dr.MemoryStore(), notifiers=[])

    @dramatiq.actor(broker=broker, max_retries=1, track=("order_id",), **FAST)
    def charge(order_id: int) -> None:
        sentry_sdk.capture_message(f"charging {order_id}")
        raise ValueError("card declined")

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        # When a job runs twice and fails, and another one runs after it
        first = charge.send(order_id=4711).message_id
        broker.join(charge.queue_name, fail_fast=False)
        worker.join()
        second = charge.send(order_id=4712).message_id
        broker.join(charge.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
        broker.close()
    sentry_sdk.flush()

    messages = [e for e in captured if e.get("message", "").startswith("charging")]
    assert len(messages) == 4
    if not integration:
        # Then without the integration nothing is tagged (tags would leak between jobs)
        assert all("dramatiq_reliable.job_id" not in e.get("tags", {}) for e in captured)
        return
    # Then every event, the job's own and the integration's error events, carries the job's tags
    errors = [e for e in captured if e.get("exception")]
    assert len(errors) == 4
    for event in captured:
        tags = event["tags"]
        order = tags["key.order_id"]
        assert tags["dramatiq_reliable.job_id"] == {"4711": first, "4712": second}[order]
        assert tags["dramatiq_reliable.actor"] == "charge"
        assert tags["dramatiq_reliable.queue"] == "default"
        assert tags["dramatiq_reliable.attempt"] in ("1", "2")
        assert event["contexts"]["dramatiq_reliable"]["keys"] == {"order_id": order}
    attempts = sorted(e["tags"]["dramatiq_reliable.attempt"] for e in messages)
    assert attempts == ["1", "1", "2", "2"]
