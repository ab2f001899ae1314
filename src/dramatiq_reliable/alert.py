"""``Alert``: what a notifier receives, and its text in plain words."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._clock import format_duration, iso
from ._secrets import mask_urls
from .events import KINDS

__all__ = ["KINDS", "Alert"]

#: What a job of each kind went through, for the text: (one job, several jobs).
_WHAT = {
    "failed": ("job failed for good", "jobs failed for good"),
    "retrying": ("attempt failed", "attempts failed"),
    "stuck": ("job is stuck", "jobs are stuck"),
    "abandoned": ("job was abandoned (its worker died)", "jobs were abandoned (their workers died)"),
    "backlog": ("backlog report", "backlog reports"),
}

#: Whether retries may still recover a job of each kind: (True/False/None, one job, several jobs).
_RECOVERY: dict[str, tuple[bool | None, str, str]] = {
    "failed": (
        False,
        "Retries will not recover it: it is dead-lettered; replay it once the cause is fixed.",
        "Retries will not recover them: they are dead-lettered; replay them once the cause is fixed.",
    ),
    "retrying": (True, "Retries may still recover it.", "Retries may still recover them."),
    "stuck": (None, "It is still running and may yet finish.", "They are still running and may yet finish."),
    "abandoned": (
        True,
        "The broker delivers it again, so a retry may still recover it.",
        "The broker delivers them again, so retries may still recover them.",
    ),
    "backlog": (None, "", ""),
}


def _hms(dt: datetime | None) -> str:
    return iso(dt) or "?"


@dataclass(frozen=True)
class Alert:
    """One notification: a problem, how often it happened, and one example.

    Notifiers get an ``Alert``; most only need :attr:`text`. :meth:`to_json` is the shape
    the webhook posts under ``"alert"``.

    A job's error reaches an alert already masked (its secret argument values hidden where the
    error was captured); URL credentials in ``error_message``, ``detail`` and business keys are
    masked here too, whatever produced the alert (a stuck job's event, a dead letter found in
    the broker).
    """

    #: ``failed``, ``retrying``, ``stuck``, ``abandoned`` or ``backlog``.
    kind: str
    #: The actor (job type); for ``backlog``, the queue's name.
    actor: str
    queue: str = ""
    #: The error's class name (part of the throttle key), or a short cause for non-errors.
    error_type: str = ""
    #: The error in plain words (first line of its message).
    error_message: str = ""
    #: One example job (the one that triggered this alert, or the latest suppressed one).
    job_id: str | None = None
    #: How many occurrences this alert is about (1 + those suppressed before it, or the summary's).
    count: int = 1
    #: Occurrences that were throttled since the previous alert of this key, included in ``count``.
    suppressed: int = 0
    #: When the first suppressed occurrence happened.
    since: datetime | None = None
    #: When the latest occurrence happened.
    at: datetime | None = None
    #: Business keys of the example job.
    keys: dict[str, str] = field(default_factory=dict)
    attempt: int | None = None
    max_retries: int | None = None
    #: More about the example (e.g. "dead-lettered after 4 attempts: …", a backlog's age).
    detail: str = ""
    #: The throttle window, in seconds.
    window: float = 0.0
    #: A summary of suppressed occurrences (no new one arrived when the window ended).
    summary: bool = False
    #: The key has been quiet for a whole window (``notify_recovered=True``).
    recovered: bool = False
    #: The store could not be reached: throttled in this process only.
    local: bool = False

    def __post_init__(self) -> None:
        for name in ("error_message", "detail"):
            value = getattr(self, name)
            masked = mask_urls(value)
            if masked != value:
                object.__setattr__(self, name, masked)
        if any("@" in v or "=" in v for v in self.keys.values()):
            object.__setattr__(self, "keys", {k: mask_urls(v) for k, v in self.keys.items()})

    @property
    def key(self) -> tuple[str, str, str]:
        """The throttle key: ``(kind, actor, error_type)``."""
        return (self.kind, self.actor, self.error_type)

    @property
    def recoverable(self) -> bool | None:
        """Whether retries may still recover the job: ``True``, ``False``, or ``None`` (not applicable)."""
        return None if self.recovered else _RECOVERY.get(self.kind, (None, "", ""))[0]

    @property
    def title(self) -> str:
        """One line: ``"[failed] send_invoice: 3 jobs failed for good: SMTPError"``."""
        if self.recovered:
            return f"[recovered] {self.actor}: no new {self.kind} {self._cause()}for {format_duration(self.window)}"
        one, many = _WHAT.get(self.kind, ("occurrence", "occurrences"))
        what = one if self.count == 1 else many
        head = f"{self.count} more {what}" if self.summary else f"{self.count} {what}"
        error = f": {self.error_type}" if self.error_type else ""
        return f"[{self.kind}] {self.actor}: {head}{error}"

    def _cause(self) -> str:
        return f"({self.error_type}) " if self.error_type else ""

    @property
    def text(self) -> str:
        """The whole message in plain words: what, how many, the error, an example, the outlook."""
        lines = [self.title]
        where = f" on queue {self.queue}" if self.queue and self.queue != self.actor else ""
        if self.recovered:
            lines.append(f"Last seen at {_hms(self.at)}{where}; example job {self.job_id or '-'}.")
            if self.suppressed:
                lines.append(f"{self.suppressed} occurrence(s) since {_hms(self.since)} had not been reported yet.")
            return "\n".join(lines)
        if self.error_message:
            lines.append(f"Error: {self.error_message}")
        example = f"Example job: {self.job_id}" if self.job_id else "No example job"
        keys = ", ".join(f"{k}={v}" for k, v in sorted(self.keys.items()))
        lines.append(f"{example}{f' ({keys})' if keys else ''}{where}.")
        if self.detail:
            lines.append(self.detail[0].upper() + self.detail[1:] + ("" if self.detail.endswith(".") else "."))
        _, one, many = _RECOVERY.get(self.kind, (None, "", ""))
        outlook = one if self.count == 1 else many
        if outlook:
            lines.append(outlook)
        window = format_duration(self.window)
        if self.summary:
            between = f"between {_hms(self.since)} and {_hms(self.at)}"
            lines.append(f"These were suppressed {between} (at most one alert per {window}).")
        elif self.suppressed:
            lines.append(
                f"Includes {self.suppressed} suppressed since {_hms(self.since)} (at most one alert per {window})."
            )
        if self.local:
            lines.append("The store was unreachable: this alert was throttled by one worker process only.")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The alert as JSON (times as ISO 8601 UTC strings)."""
        return {
            "kind": self.kind,
            "actor": self.actor,
            "queue": self.queue,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "job_id": self.job_id,
            "count": self.count,
            "suppressed": self.suppressed,
            "since": iso(self.since),
            "at": iso(self.at),
            "keys": dict(self.keys),
            "attempt": self.attempt,
            "max_retries": self.max_retries,
            "detail": self.detail,
            "window_seconds": self.window,
            "summary": self.summary,
            "recovered": self.recovered,
            "recoverable": self.recoverable,
            "local": self.local,
            "text": self.text,
        }
