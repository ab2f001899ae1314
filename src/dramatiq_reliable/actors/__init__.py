"""What an actor's code touches: :func:`current_job`, :func:`once`, and cron registration."""

from __future__ import annotations

from .context import CurrentJob, current_job
from .once import once

__all__ = ["CurrentJob", "current_job", "once"]
