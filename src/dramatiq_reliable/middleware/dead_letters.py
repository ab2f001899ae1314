"""DeadLetters: every dead-lettered message kept, with its final error, to list, replay or purge."""

from __future__ import annotations

import base64
import dataclasses
import threading
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name

from .. import _validate
from ..store.base import Store
from ..store.ops import compact
from ._run import JobRun, one_line
from .base import Outcome, ReliableMiddleware, resolve, retries_of

#: Seconds a dead letter is kept in the store: 30 days.
DEFAULT_RETENTION = 30 * 86_400


class DeadLetters(ReliableMiddleware):
    """Keeps every dead-lettered message in the store, with the error that killed it.

    When Dramatiq dead-letters a message (its retries are exhausted, it raised one of its
    ``throws``, or a middleware failed it), the broker moves it to ``<queue>.XQ``, which
    nothing reads and whose copy lacks the final exception. DeadLetters writes, in the same
    store call as the job's final state and before the message is nacked, the message as it
    was delivered, the final error and traceback, the attempts, the actor, the queue and the
    time. The job's record (JobState) becomes ``failed``.

    Dead letters are listed, shown, replayed and purged with :mod:`dramatiq_reliable.dead`
    (``dr.replay``, ``dr.purge``) or ``dramatiq-reliable dead …``; the broker's dead-letter
    queue stays the source of truth for what is still dead, so messages dead-lettered before
    DeadLetters was installed, or while the store was unreachable, are found there too.

    The queues the app declares are recorded once per process, so a tool can find their
    dead-letter queues on RabbitMQ (which cannot list queues) before anything is dead-lettered.

    If the store is unreachable the write is buffered and retried (see
    :mod:`dramatiq_reliable.store.journal`); the message is dead-lettered either way.

    Parameters:
      store(Store): where dead letters are kept.
      retention(float): seconds a dead letter is kept in the store. Defaults to 30 days. Keep it
        at least as long as the broker keeps dead letters (7 days by default on both brokers),
        or entries the store dropped are found again in the broker without their error.

    Example::

        broker.add_middleware(dr.DeadLetters(store, retention=14 * 86400))
    """

    def __init__(self, store: Store, *, retention: float = DEFAULT_RETENTION) -> None:
        super().__init__(store)
        retention = _validate.seconds("retention", retention)
        self.retention = retention
        self._queues: set[str] = set()
        self._queues_lock = threading.Lock()

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        queue = q_name(queue_name)
        with self._queues_lock:
            if queue in self._queues:
                return
            self._queues.add(queue)
        self.journal.submit({"k": "dead_queue", "id": "-", "dead": {"queues": [queue]}}, wait=False)

    def on_start(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        # Retries changes the options in place (retries, traceback) before the nack; the
        # broker keeps the message as it was delivered, and so does the store.
        run.delivered_options = dict(message.options)

    def on_finish(self, broker: Broker, message: MessageProxy, run: JobRun, outcome: Outcome) -> None:
        status, err, _detail = outcome
        if status != "failed" or not getattr(message, "failed", False):
            return  # acked: not dead-lettered
        actor = broker.actors.get(message.actor_name)
        retries = retries_of(broker)
        queue = q_name(message.queue_name)
        delivered = message._message
        if run.delivered_options is not None:
            delivered = dataclasses.replace(delivered, options=run.delivered_options)
        encoded = delivered.encode()
        try:
            text, enc = encoded.decode("utf-8"), None
        except UnicodeDecodeError:
            text, enc = base64.b64encode(encoded).decode("ascii"), "b64"
        section: dict[str, Any] = {
            "actor": message.actor_name,
            "queue": queue,
            "att": run.attempt,
            "maxr": resolve(message, actor, "max_retries", retries.max_retries if retries else 0),
            "err": err,
            "msg": text,
            "enc": enc,
            "xid": message.options.get("redis_message_id"),
            "retention_ms": int(self.retention * 1000),
        }
        run.stage(self.journal, "finish", "dead", compact(section))
        # dead_letters_total is counted once per failed job by metrics.observe_job.
        self.logger.info(
            "Message %r (%s) dead-lettered to %s.XQ after %d attempt(s): %s",
            message.message_id,
            message.actor_name,
            queue,
            run.attempt,
            one_line(err) or "no error",
        )
