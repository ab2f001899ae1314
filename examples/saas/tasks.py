"""The SaaS app's jobs: a welcome email, an invoice, a nightly report.

Run from the repository root (configuration: ``examples/saas/settings.py``)::

    dramatiq examples.saas.tasks --processes 2 --threads 8        # the workers
    dramatiq-reliable scheduler examples.saas.tasks               # on one, two or three hosts

* ``signup(email)`` creates the account and queues ``send_welcome_email``: the signup never
  waits for the mail server, nor fails with it. The email is retried on a timeout (3 times),
  not on a refusal; when it fails for good, ``note_welcome_failure`` (Dramatiq's
  ``on_failure`` callback) writes a note on the account that support can read.
* ``send_invoice(order_id, customer_id, amount_cents)``: idempotent per order (a second
  invoice for one order is skipped), searchable by ``order_id`` and ``customer_id``, the PDF
  rendered and the email sent at most once per order, across retries and copies (``dr.once``).
* ``nightly_report()``: cron at 02:00 UTC, with a hard time limit, ``stuck`` (with the stack
  where it hangs) long before that limit.

Alerts go to the log, to the Redis list ``<store prefix>:saas:alerts`` (the "inbox" that the
walkthrough reads; any callable is a notifier) and, if ``SAAS_ALERT_WEBHOOK`` is set, to a
Slack-compatible webhook.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import dramatiq

import dramatiq_reliable as dr

from .integrations import SMTP, Billing, Data, SMTPTimeout, Warehouse
from .settings import Settings

logger = logging.getLogger("examples.saas")

settings = Settings.from_env()
data = Data(settings.data_url, settings.data_prefix)
smtp, billing, warehouse = SMTP(data), Billing(data), Warehouse(data)


def make_broker(settings: Settings) -> dramatiq.Broker:
    if settings.redis_broker:
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=settings.broker_url, namespace=settings.namespace)
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=settings.broker_url)


class Inbox:
    """A notifier: each alert as JSON on a Redis list (what a team's own alert page would read)."""

    name = "inbox"

    def __init__(self, data: Data) -> None:
        self.data = data

    def __call__(self, alert: dr.Alert) -> None:
        entry = {**alert.to_json(), "text": alert.text, "received": time.time()}
        self.data.client.rpush(self.data.key("alerts"), json.dumps(entry))


notifiers: list[Any] = [dr.LogNotifier(), Inbox(data)]
if settings.alert_webhook:
    notifiers.append(dr.WebhookNotifier(settings.alert_webhook))
if settings.metrics_dir:
    dr.enable_metrics(settings.metrics_dir)  # before the first job; the exporter reads the folder

broker = make_broker(settings)
store = dr.open_store(settings.store_url)
dr.install(
    broker,
    store,
    notifiers=notifiers,
    window=settings.alert_window,
    heartbeat_interval=settings.heartbeat_interval,
    abandon_after=settings.abandon_after,
    sweep_interval=settings.sweep_interval,
)
dramatiq.set_broker(broker)

BACKOFF = {"min_backoff": settings.backoff_ms, "max_backoff": settings.backoff_ms * 30}
WELCOME_RETRIES = 3


# -- the welcome email ----------------------------------------------------------------------------


def retry_timeouts(retries: int, exception: Exception) -> bool:
    """Retry a welcome email a few times on a timeout; a refusal will not go away in seconds."""
    return isinstance(exception, SMTPTimeout) and retries <= WELCOME_RETRIES


@dramatiq.actor(queue_name=settings.queue("emails"), retry_when=retry_timeouts, track=("user_id",), **BACKOFF)
def send_welcome_email(user_id: int, email: str) -> None:
    smtp.send(email, "Welcome aboard")
    data.note(user_id, "welcome_email", "sent")


@dramatiq.actor(queue_name=settings.queue("emails"), max_retries=0)
def note_welcome_failure(message: dict[str, Any], error: dict[str, str]) -> None:
    """Dramatiq's ``on_failure`` callback: a note on the account for support."""
    user_id = message["args"][0]
    data.note(
        user_id,
        "welcome_email",
        f"not sent: {error['type']}: {error['message']} (job {message['message_id']}); resend it from the admin page",
    )


def signup(email: str) -> int:
    """Create the account and queue its welcome email; return the user id. Never fails on the email."""
    user_id = data.create_user(email)
    try:
        send_welcome_email.send_with_options(args=(user_id, email), on_failure=note_welcome_failure.actor_name)
    except Exception as exc:  # the broker or the store is down: the account exists anyway
        logger.warning("Welcome email of user %s not queued: %s: %s", user_id, type(exc).__name__, exc)
        data.note(user_id, "welcome_email", f"not queued: {type(exc).__name__}: {exc}")
    return user_id


# -- the invoice ----------------------------------------------------------------------------------


@dramatiq.actor(
    queue_name=settings.queue("billing"),
    max_retries=3,
    track=("order_id", "customer_id"),
    idempotency_key="invoice:{order_id}",
    stuck_after=120,
    **BACKOFF,
)
def send_invoice(order_id: int, customer_id: int, amount_cents: int) -> None:
    pdf = dr.once("render", billing.render_invoice, order_id, customer_id, amount_cents)
    dr.once("email", smtp.send, f"customer-{customer_id}@example.com", f"Invoice {order_id}", pdf["file"])


# -- the nightly report ---------------------------------------------------------------------------


@dr.cron(settings.report_cron, timezone="UTC")
@dramatiq.actor(
    queue_name=settings.queue("reports"),
    max_retries=0,
    time_limit=int(settings.report_time_limit * 1000),
    stuck_after=settings.report_stuck_after,
)
def nightly_report() -> None:
    totals = warehouse.daily_totals()
    warehouse.save_report({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **totals})
