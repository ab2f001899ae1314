"""The bundle's middlewares, one module each."""

from __future__ import annotations

from .dead_letters import DeadLetters
from .idempotency import Idempotency
from .job_state import JobState

__all__ = ["DeadLetters", "Idempotency", "JobState"]
