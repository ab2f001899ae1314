"""dramatiq-reliable: "job accepted" becomes "job done, or a person knows exactly why not".

A bundle of Dramatiq middlewares for a stock ``RedisBroker`` or ``RabbitmqBroker``::

    import dramatiq
    import dramatiq_reliable as dr
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url="redis://127.0.0.1:6379/0")
    store = dr.RedisStore("redis://127.0.0.1:6379/1")
    dr.install(broker, store)
    dramatiq.set_broker(broker)

Importing this package touches no network, file or environment variable.
"""

from __future__ import annotations

from . import dead
from ._secrets import DEFAULT_REDACT
from .actors import CurrentJob, current_job, once
from .actors.cron import CronRegistry, Schedule, cron, registry_of
from .alert import Alert
from .backlog import QueueStats, queue_stats
from .control import (
    ControlResult,
    Paused,
    PauseResult,
    cancel,
    cancel_where,
    pause,
    pause_cron,
    paused,
    resume,
    resume_cron,
    retry_now,
)
from .dead import purge, replay
from .errors import (
    ArgumentsError,
    BrokerUnavailable,
    ConfigurationError,
    CorruptRecord,
    DramatiqReliableError,
    DuplicateJob,
    JobCancelled,
    MalformedMessage,
    NotFound,
    NotifierError,
    StoreError,
    StoreUnavailable,
)
from .fleet import WorkerProcess
from .install import add as install_one
from .install import install
from .metrics import enable_metrics
from .middleware import Alerts, DeadLetters, Idempotency, JobState, Watchdog
from .notifiers import LogNotifier, SentryNotifier, WebhookNotifier
from .records import CronTick, DeadLetter, DeadResult, DeadStats, Event, JobError, JobRecord, Page
from .scheduler import Scheduler
from .scheduler import run_now as cron_run
from .status import Status
from .store import MemoryStore, RedisStore, Store, open_store
from .workers import RunningJob, WorkerStatus, workers

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_REDACT",
    "Alert",
    "Alerts",
    "ArgumentsError",
    "BrokerUnavailable",
    "ConfigurationError",
    "ControlResult",
    "CorruptRecord",
    "CronRegistry",
    "CronTick",
    "CurrentJob",
    "DeadLetter",
    "DeadLetters",
    "DeadResult",
    "DeadStats",
    "DramatiqReliableError",
    "DuplicateJob",
    "Event",
    "Idempotency",
    "JobCancelled",
    "JobError",
    "JobRecord",
    "JobState",
    "LogNotifier",
    "MalformedMessage",
    "MemoryStore",
    "NotFound",
    "NotifierError",
    "Page",
    "PauseResult",
    "Paused",
    "QueueStats",
    "QuorumRabbitmqBroker",
    "RedisStore",
    "RunningJob",
    "Schedule",
    "Scheduler",
    "SentryNotifier",
    "Status",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Watchdog",
    "WebhookNotifier",
    "WorkerProcess",
    "WorkerStatus",
    "__version__",
    "cancel",
    "cancel_where",
    "cron",
    "cron_run",
    "current_job",
    "dead",
    "enable_metrics",
    "install",
    "install_one",
    "once",
    "open_store",
    "pause",
    "pause_cron",
    "paused",
    "purge",
    "queue_stats",
    "registry_of",
    "replay",
    "resume",
    "resume_cron",
    "retry_now",
    "workers",
]


def __getattr__(name: str) -> object:
    # Imported on first use: it imports Dramatiq's RabbitMQ broker (and pika).
    if name == "QuorumRabbitmqBroker":
        from .quorum import QuorumRabbitmqBroker

        return QuorumRabbitmqBroker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
