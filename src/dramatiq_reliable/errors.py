"""The exception tree of dramatiq-reliable.

::

    DramatiqReliableError
    ├── ConfigurationError (also ValueError)   a bad option, URL, template, cron expression
    │   └── ArgumentsError                     arguments that cannot be recorded (not JSON)
    ├── StoreError                             the store answered with an error
    │   └── StoreUnavailable                   the store cannot be reached
    ├── BrokerUnavailable                      the broker cannot be reached
    ├── NotFound (also KeyError)               no job or dead letter with that id
    ├── MalformedMessage                       a stored message that cannot be decoded
    ├── CorruptRecord                          a stored record that cannot be decoded
    ├── DuplicateJob                           ``unique=True`` refused a second enqueue
    └── NotifierError                          a notifier could not deliver an alert

The root derives from Dramatiq's ``MiddlewareError``: Dramatiq swallows every other exception
raised by a middleware hook, and errors such as ``ConfigurationError`` at declaration or
``DuplicateJob`` at ``send()`` must reach the caller.
"""

from __future__ import annotations

from dramatiq.middleware import MiddlewareError, SkipMessage


class DramatiqReliableError(MiddlewareError):
    """Root of every error raised by dramatiq-reliable.

    It derives from Dramatiq's ``MiddlewareError`` so that an error raised in a hook (an
    invalid actor option at declaration, a refused ``send()``) reaches the caller instead of
    being logged and swallowed by Dramatiq.

    Catch this to handle any of them::

        try:
            dr.replay(store, broker, ids)
        except dr.DramatiqReliableError as exc:
            print(exc)
    """


class ConfigurationError(DramatiqReliableError, ValueError):
    """An option, URL, template or expression is invalid. The message names it; fix it and retry."""


class ArgumentsError(ConfigurationError):
    """A job's arguments cannot be recorded: they are not JSON-serializable.

    Dramatiq messages are JSON; pass ids and plain values instead of objects.
    """


class StoreError(DramatiqReliableError):
    """The store answered with an error (a bug, or a Redis that refuses the command)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached. Check the store URL and that its Redis is running."""


class BrokerUnavailable(DramatiqReliableError):
    """The broker cannot be reached. Check the broker URL and that the server is running."""


class NotFound(DramatiqReliableError, KeyError):
    """No job or dead letter has that id (it may never have existed, or its record expired)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "not found"


class MalformedMessage(DramatiqReliableError):
    """A stored message cannot be decoded. List it, then purge it; it cannot be replayed."""


class CorruptRecord(DramatiqReliableError):
    """A record in the store cannot be decoded: something other than dramatiq-reliable wrote its
    key, or wrote it damaged. The message names the record and what is wrong with it.

    Listings skip such records and name them in ``Page.corrupt``; delete the key (or let it
    expire) to be rid of it.

    Attributes:
      job_id(str): the id of the job or dead letter whose record is corrupt.
    """

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class DuplicateJob(DramatiqReliableError):
    """``send()`` of a ``unique=True`` actor found a job with the same key queued or running.

    Attributes:
      key(str): the idempotency key.
      job_id(str): the id of the job that holds the key.
    """

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"a job with key {key!r} is already queued or running: {job_id}")
        self.key = key
        self.job_id = job_id


class NotifierError(DramatiqReliableError):
    """A notifier could not deliver an alert (the webhook timed out or answered an error, Sentry
    is not initialised, …). Alerts logs and counts it (``notifier_errors_total``); jobs go on."""


class DuplicateSkip(SkipMessage):
    """Raised inside a worker to skip (and ack) a message that is an idempotent duplicate."""


class JobCancelled(SkipMessage):
    """Raised inside a job that an operator cancelled (:func:`dramatiq_reliable.cancel`).

    At the job's next ``dr.once`` step, or at once in its thread for actors declared with
    ``cancellable="interrupt"``. Dramatiq then acks the message: the job is neither retried nor
    dead-lettered. Let it propagate (do not catch it with a bare ``except Exception``).
    """


__all__ = [
    "ArgumentsError",
    "BrokerUnavailable",
    "ConfigurationError",
    "CorruptRecord",
    "DramatiqReliableError",
    "DuplicateJob",
    "DuplicateSkip",
    "JobCancelled",
    "MalformedMessage",
    "NotFound",
    "NotifierError",
    "StoreError",
    "StoreUnavailable",
]
