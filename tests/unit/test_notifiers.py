"""Notifiers: the webhook against a local HTTP server, Sentry through a test transport, the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.transport import Transport

import dramatiq_reliable as dr
from tests.webhook_server import Hook

ALERT = dr.Alert(
    kind="failed",
    actor="send_invoice",
    queue="default",
    error_type="SMTPError",
    error_message="connection refused",
    job_id="job-1",
    count=3,
    suppressed=2,
    keys={"order_id": "4711"},
    window=300,
)


@pytest.fixture
def hook(request: pytest.FixtureRequest) -> Iterator[Hook]:
    server = Hook(getattr(request, "param", [200]))
    yield server
    server.close()


def test_webhook_posts_slack_compatible_json(hook: Hook) -> None:
    dr.WebhookNotifier(hook.url)(ALERT)
    [request] = hook.requests
    assert request["type"] == "application/json"
    body = request["body"]
    assert body["text"] == ALERT.text
    assert body["alert"]["kind"] == "failed" and body["alert"]["suppressed"] == 2
    assert body["alert"]["keys"] == {"order_id": "4711"} and body["alert"]["recoverable"] is False


@pytest.mark.parametrize("hook", [[500, 503, 200]], indirect=True)
def test_webhook_retries_server_errors(hook: Hook) -> None:
    dr.WebhookNotifier(hook.url, retries=2, backoff=0.01)(ALERT)
    assert len(hook.requests) == 3


@pytest.mark.parametrize("hook", [[500]], indirect=True)
def test_webhook_gives_up_after_its_retries(hook: Hook) -> None:
    with pytest.raises(dr.NotifierError, match=r"failed after 3 attempts: HTTP 500") as info:
        dr.WebhookNotifier(hook.url, retries=2, backoff=0.01)(ALERT)
    assert "secret-token" not in str(info.value)  # the path of a webhook URL is a secret
    assert len(hook.requests) == 3


@pytest.mark.parametrize("hook", [[404]], indirect=True)
def test_webhook_does_not_retry_a_client_error(hook: Hook) -> None:
    with pytest.raises(dr.NotifierError, match="after 1 attempt: HTTP 404"):
        dr.WebhookNotifier(hook.url, retries=2, backoff=0.01)(ALERT)
    assert len(hook.requests) == 1


def test_webhook_times_out() -> None:
    server = Hook(hang=threading.Event())
    try:
        with pytest.raises(dr.NotifierError, match="timed out"):
            dr.WebhookNotifier(server.url, timeout=0.3, retries=0)(ALERT)
    finally:
        server.close()


def test_webhook_unreachable() -> None:
    server = Hook()
    url = server.url
    server.close()
    with pytest.raises(dr.NotifierError, match="failed after 2 attempts"):
        dr.WebhookNotifier(url, retries=1, backoff=0.01)(ALERT)


@pytest.mark.parametrize(
    "url",
    ["ftp://hooks.example/x", "hooks.example/x", "https://", "http://host:99999/x", "https://ho st/x", 42],
)
def test_webhook_bad_url_fails_at_construction(url: Any) -> None:
    with pytest.raises(dr.ConfigurationError, match="URL"):
        dr.WebhookNotifier(url)


@pytest.mark.parametrize("options", [{"timeout": 0}, {"retries": -1}, {"retries": 1.5}, {"backoff": -1}])
def test_webhook_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(dr.ConfigurationError):
        dr.WebhookNotifier("https://hooks.example/x", **options)


def test_webhook_repr_hides_the_path() -> None:
    assert repr(dr.WebhookNotifier("https://hooks.slack.com/services/T0/B0/XYZ")) == (
        "WebhookNotifier('https://hooks.slack.com/…')"
    )


def test_log_notifier(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dramatiq_reliable.alerts"):
        dr.LogNotifier()(ALERT)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and "job-1" in record.getMessage()


# -- Sentry -----------------------------------------------------------------------------------------


class Capture(Transport):
    """A Sentry transport that keeps events in memory."""

    events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            Capture.events.append(event)


@pytest.fixture
def sentry() -> Iterator[list[dict[str, Any]]]:
    Capture.events = []
    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=Capture, default_integrations=False)
    yield Capture.events
    sentry_sdk.get_global_scope().set_client(None)  # inactive again


def test_sentry_notifier_groups_by_the_throttle_key(sentry: list[dict[str, Any]]) -> None:
    dr.SentryNotifier()(ALERT)
    sentry_sdk.flush()
    [event] = sentry
    assert event["fingerprint"] == ["dramatiq-reliable", "failed", "send_invoice", "SMTPError"]
    assert event["level"] == "error"
    assert event["message"] == ALERT.text
    assert event["tags"]["dramatiq_reliable.actor"] == "send_invoice"
    assert event["tags"]["dramatiq_reliable.queue"] == "default"
    assert event["tags"]["dramatiq_reliable.job_id"] == "job-1"
    assert event["tags"]["key.order_id"] == "4711"
    assert event["contexts"]["dramatiq_reliable"]["suppressed"] == 2


def test_sentry_notifier_without_sentry_initialised() -> None:
    with pytest.raises(dr.NotifierError, match="not initialised"):
        dr.SentryNotifier()(ALERT)


def test_sentry_notifier_bad_level() -> None:
    with pytest.raises(dr.ConfigurationError, match="level"):
        dr.SentryNotifier(level="loud")
