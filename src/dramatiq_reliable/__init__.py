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

from .actors import CurrentJob, current_job, once
from .alert import Alert
from .errors import (
    ArgumentsError,
    BrokerUnavailable,
    ConfigurationError,
    DramatiqReliableError,
    DuplicateJob,
    MalformedMessage,
    NotFound,
    NotifierError,
    StoreError,
    StoreUnavailable,
)
from .install import install
from .metrics import enable_metrics
from .middleware import Alerts, Idempotency, JobState
from .notifiers import LogNotifier, SentryNotifier, WebhookNotifier
from .records import Event, JobError, JobRecord, Page
from .status import Status
from .store import MemoryStore, RedisStore, Store, open_store

__version__ = "0.1.0"

__all__ = [
    # Alerts
    "Alert",
    "Alerts",
    # Errors
    "ArgumentsError",
    "BrokerUnavailable",
    "ConfigurationError",
    # Jobs
    "CurrentJob",
    "DramatiqReliableError",
    "DuplicateJob",
    "Event",
    # Middlewares
    "Idempotency",
    "JobError",
    "JobRecord",
    "JobState",
    "LogNotifier",
    "MalformedMessage",
    # Stores
    "MemoryStore",
    "NotFound",
    "NotifierError",
    "Page",
    "RedisStore",
    "SentryNotifier",
    "Status",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WebhookNotifier",
    "__version__",
    "current_job",
    "enable_metrics",
    "install",
    "once",
    "open_store",
]
