"""The bundle's middlewares, one module each."""

from __future__ import annotations

from .alerts import Alerts
from .idempotency import Idempotency
from .job_state import JobState

__all__ = ["Alerts", "Idempotency", "JobState"]
