"""The bundle's middlewares, one module each."""

from __future__ import annotations

from .alerts import Alerts
from .dead_letters import DeadLetters
from .idempotency import Idempotency
from .job_state import JobState
from .watchdog import Watchdog

__all__ = ["Alerts", "DeadLetters", "Idempotency", "JobState", "Watchdog"]
