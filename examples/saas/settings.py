"""The SaaS example's configuration, read from ``SAAS_*`` environment variables in one place.

| variable | default | meaning |
|---|---|---|
| ``SAAS_BROKER`` | ``redis://127.0.0.1:6379/0`` | ``redis://…`` or ``amqp://user:password@host:5672/vhost`` |
| ``SAAS_NAMESPACE`` | ``dramatiq`` | the RedisBroker's key namespace (ignored on RabbitMQ) |
| ``SAAS_STORE`` | ``redis://127.0.0.1:6379/1`` | the dramatiq-reliable store (``?prefix=NAME``: key prefix) |
| ``SAAS_QUEUE_PREFIX`` | (empty) | put before the queue names ``emails``, ``billing``, ``reports`` |
| ``SAAS_QUICK`` | (unset) | ``1``: short retry backoff, watchdog and alert intervals (the walkthrough) |
| ``SAAS_BACKOFF_MS`` | 10000 (quick: 100) | Dramatiq's ``min_backoff`` of the email jobs; max 30 times it |
| ``SAAS_HEARTBEAT_INTERVAL`` | 5 (quick: 0.5) | Watchdog ``heartbeat_interval``, seconds |
| ``SAAS_ABANDON_AFTER`` | 30 (quick: 3) | Watchdog ``abandon_after``, seconds |
| ``SAAS_SWEEP_INTERVAL`` | 5 (quick: 0.5) | Watchdog ``sweep_interval``, seconds |
| ``SAAS_ALERT_WINDOW`` | 300 | Alerts ``window``, seconds |
| ``SAAS_REPORT_CRON`` | ``0 2 * * *`` | the nightly report's schedule (UTC) |
| ``SAAS_REPORT_TIME_LIMIT`` | 1800 (quick: 60) | the report's hard ``time_limit``, seconds |
| ``SAAS_REPORT_STUCK_AFTER`` | 600 (quick: 2) | the report is ``stuck`` after this many seconds |
| ``SAAS_METRICS_DIR`` | (unset) | ``dr.enable_metrics(DIR)`` in each worker process |
| ``SAAS_ALERT_WEBHOOK`` | (unset) | also send alerts to this Slack-compatible webhook |

A malformed number raises ``ValueError`` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {text!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Where the app's broker, store and data live, and how quickly it retries and watches."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "dramatiq"
    store_url: str = "redis://127.0.0.1:6379/1"
    queue_prefix: str = ""
    backoff_ms: int = 10_000
    heartbeat_interval: float = 5.0
    abandon_after: float = 30.0
    sweep_interval: float = 5.0
    alert_window: float = 300.0
    report_cron: str = "0 2 * * *"
    report_time_limit: float = 1800.0
    report_stuck_after: float = 600.0
    metrics_dir: str | None = None
    alert_webhook: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        quick = env.get("SAAS_QUICK", "") not in ("", "0")
        return cls(
            broker_url=env.get("SAAS_BROKER") or cls.broker_url,
            namespace=env.get("SAAS_NAMESPACE") or cls.namespace,
            store_url=env.get("SAAS_STORE") or cls.store_url,
            queue_prefix=env.get("SAAS_QUEUE_PREFIX", ""),
            backoff_ms=int(_number(env, "SAAS_BACKOFF_MS", 100 if quick else 10_000)),
            heartbeat_interval=_number(env, "SAAS_HEARTBEAT_INTERVAL", 0.5 if quick else 5.0),
            abandon_after=_number(env, "SAAS_ABANDON_AFTER", 3.0 if quick else 30.0),
            sweep_interval=_number(env, "SAAS_SWEEP_INTERVAL", 0.5 if quick else 5.0),
            alert_window=_number(env, "SAAS_ALERT_WINDOW", 300.0),
            report_cron=env.get("SAAS_REPORT_CRON") or cls.report_cron,
            report_time_limit=_number(env, "SAAS_REPORT_TIME_LIMIT", 60.0 if quick else 1800.0),
            report_stuck_after=_number(env, "SAAS_REPORT_STUCK_AFTER", 2.0 if quick else 600.0),
            metrics_dir=env.get("SAAS_METRICS_DIR") or None,
            alert_webhook=env.get("SAAS_ALERT_WEBHOOK") or None,
        )

    def queue(self, name: str) -> str:
        """The full name of one of the app's queues (``emails``, ``billing``, ``reports``)."""
        return self.queue_prefix + name

    @property
    def queues(self) -> list[str]:
        return [self.queue(name) for name in ("emails", "billing", "reports")]

    @property
    def redis_broker(self) -> bool:
        return urlsplit(self.broker_url).scheme in ("redis", "rediss", "unix")

    @property
    def cli_broker_url(self) -> str:
        """The broker URL for ``dramatiq-reliable --broker`` (a Redis one carries the namespace)."""
        if not self.redis_broker or self.namespace == "dramatiq":
            return self.broker_url
        parts = urlsplit(self.broker_url)
        query = [*parse_qsl(parts.query), ("namespace", self.namespace)]
        return urlunsplit(parts._replace(query=urlencode(query)))

    @property
    def data_url(self) -> str:
        """The store's Redis without the ``prefix`` query: the app's fake database and switches live there."""
        parts = urlsplit(self.store_url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "prefix"]
        return urlunsplit(parts._replace(query=urlencode(query)))

    @property
    def store_prefix(self) -> str:
        """The store's key prefix (``dr`` unless the URL says ``?prefix=``)."""
        found = [v for k, v in parse_qsl(urlsplit(self.store_url).query) if k == "prefix"]
        return found[-1] if found else "dr"

    @property
    def data_prefix(self) -> str:
        """Keys of the fake database and the integration switches start with this."""
        return f"{self.store_prefix}:saas:"
