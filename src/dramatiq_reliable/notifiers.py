"""Notifiers: where alerts go. A notifier is any callable that takes an :class:`~.Alert`.

:class:`~dramatiq_reliable.Alerts` calls notifiers off the job threads, one sender thread per
notifier and process (see ``middleware/_outbox.py``): a notifier may block or raise; it is
logged and counted (``notifier_errors_total``), and no job waits for it.

Example::

    dr.install(broker, store, notifiers=[
        dr.LogNotifier(),
        dr.WebhookNotifier("https://hooks.slack.com/services/T000/B000/XXXX"),
        dr.SentryNotifier(),
        lambda alert: pager.send(alert.text),
    ])
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from . import _validate
from .alert import Alert
from .errors import ConfigurationError, NotifierError

#: Anything that takes an alert.
Notifier = Callable[[Alert], Any]

__all__ = ["LogNotifier", "Notifier", "SentryNotifier", "WebhookNotifier", "notifier_name"]


def notifier_name(notifier: Notifier) -> str:
    """A short name for logs and metric labels: the ``name`` attribute, the class or the function."""
    name = getattr(notifier, "name", None)
    if isinstance(name, str) and name:
        return name
    if hasattr(notifier, "__name__"):
        return str(notifier.__name__)
    return type(notifier).__name__


class LogNotifier:
    """Writes each alert to a logger.

    Parameters:
      logger(str | logging.Logger): defaults to ``"dramatiq_reliable.alerts"``.
      level(int): the level of problems. Defaults to ``logging.ERROR``; recovered notices are
        logged at ``INFO``.
    """

    name = "log"

    def __init__(
        self, logger: str | logging.Logger = "dramatiq_reliable.alerts", *, level: int = logging.ERROR
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def __call__(self, alert: Alert) -> None:
        level = logging.INFO if alert.recovered else self.level
        self.logger.log(level, "%s", alert.text)

    def __repr__(self) -> str:
        return f"LogNotifier({self.logger.name!r})"


def _shown(url: str) -> str:
    """A webhook URL for display: scheme and host only (the path often holds a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"


class WebhookNotifier:
    """POSTs each alert as JSON: ``{"text": alert.text, "alert": alert.to_json()}``.

    ``text`` makes it a Slack (and Mattermost, Rocket.Chat, Teams workflow) incoming webhook
    message as it is; ``alert`` carries the fields for anything else.

    Parameters:
      url(str): ``http://`` or ``https://`` URL of the webhook.
      timeout(float): seconds to wait for a connection and for the answer. Defaults to 5.
      retries(int): further attempts after a connection error, a timeout, a 429 or a 5xx
        answer (not after another 4xx). Defaults to 2.
      backoff(float): seconds before the first retry, doubled for each next one. Defaults to 0.5.
      headers(dict[str, str]): extra request headers (e.g. an ``Authorization``).
      name(str): the notifier's name in logs and metric labels. Defaults to ``"webhook"``.

    Raises:
      ConfigurationError: the URL is not an http(s) URL with a host, or an option is out of range.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.5,
        headers: Mapping[str, str] | None = None,
        name: str = "webhook",
    ) -> None:
        if not isinstance(url, str):
            raise ConfigurationError(f"WebhookNotifier needs a URL string, not {url!r}")
        try:
            parts = urlsplit(url)
            _ = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"malformed webhook URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
            raise ConfigurationError(f"webhook URL must be http:// or https:// with a host, not {url[:40]!r}")
        timeout = _validate.seconds("timeout", timeout)
        retries = _validate.count("retries", retries, least=0)
        backoff = _validate.seconds("backoff", backoff, zero=True)
        self.url = url
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.headers = {"Content-Type": "application/json", "User-Agent": "dramatiq-reliable", **(headers or {})}
        self.name = name

    def __repr__(self) -> str:
        return f"WebhookNotifier({_shown(self.url)!r})"

    def __call__(self, alert: Alert) -> None:
        """Send one alert; raise :class:`NotifierError` once every attempt failed."""
        body = json.dumps({"text": alert.text, "alert": alert.to_json()}, ensure_ascii=False).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read(65536)
                return
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code} {exc.reason}"
                if exc.code < 500 and exc.code != 429:
                    break
            except (urllib.error.URLError, OSError) as exc:
                cause = getattr(exc, "reason", None) or exc
                reason = str(cause).strip() or type(cause).__name__
        attempts = f"{attempt + 1} attempt{'s' if attempt else ''}"
        raise NotifierError(f"webhook {_shown(self.url)} failed after {attempts}: {reason}")


class SentryNotifier:
    """Sends each alert to Sentry as a message (``sentry_sdk.capture_message``).

    Events are grouped by the throttle key (fingerprint ``["dramatiq-reliable", kind, actor,
    error_type]``) and tagged with ``dramatiq_reliable.kind``, ``dramatiq_reliable.actor``,
    ``dramatiq_reliable.queue``, ``dramatiq_reliable.job_id`` and ``key.<name>`` for each
    business key; the whole alert is in the ``dramatiq_reliable`` context. Call
    ``sentry_sdk.init(...)`` in the worker processes (as for Sentry's Dramatiq integration).

    Parameters:
      level(str | None): the Sentry level. Defaults to ``"error"`` for failed, stuck and
        abandoned jobs, ``"warning"`` for retries and backlogs, ``"info"`` for recovered notices.

    Raises:
      ConfigurationError: sentry-sdk is not installed (``pip install 'dramatiq-reliable[sentry]'``).
    """

    name = "sentry"

    def __init__(self, *, level: str | None = None) -> None:
        try:
            import sentry_sdk  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "SentryNotifier needs sentry-sdk: pip install 'dramatiq-reliable[sentry]'"
            ) from None
        if level is not None and level not in ("fatal", "error", "warning", "info", "debug"):
            raise ConfigurationError(f"level must be a Sentry level (error, warning, info, …), not {level!r}")
        self.level = level

    def __repr__(self) -> str:
        return "SentryNotifier()"

    def __call__(self, alert: Alert) -> None:
        import sentry_sdk

        client = sentry_sdk.get_client()
        if not client.is_active() or getattr(client, "transport", None) is None:
            raise NotifierError("sentry_sdk is not initialised with a DSN in this process (call sentry_sdk.init)")
        fingerprint = ["dramatiq-reliable", alert.kind, alert.actor, alert.error_type]
        if alert.recovered:
            fingerprint.append("recovered")
        tags = {
            "dramatiq_reliable.kind": alert.kind,
            "dramatiq_reliable.actor": alert.actor,
            "dramatiq_reliable.queue": alert.queue,
            "dramatiq_reliable.job_id": alert.job_id or "",
            **{f"key.{k}"[:32]: v[:200] for k, v in alert.keys.items()},
        }
        sentry_sdk.capture_message(
            alert.text,
            level=self.level or _level(alert),  # type: ignore[arg-type]
            fingerprint=fingerprint,
            tags=tags,
            contexts={"dramatiq_reliable": alert.to_json()},
        )


def _level(alert: Alert) -> str:
    if alert.recovered:
        return "info"
    return "warning" if alert.kind in ("retrying", "backlog") else "error"
