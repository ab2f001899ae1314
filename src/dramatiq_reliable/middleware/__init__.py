"""The bundle's middlewares, one module each."""

from __future__ import annotations

from .dead_letters import DeadLetters
from .idempotency import Idempotency
from .job_state import JobState
from .watchdog import Watchdog

__all__ = ["Idempotency", "JobState", "Watchdog"]
__all__ = ["DeadLetters", "Idempotency", "JobState"]
