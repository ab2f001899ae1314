"""Which deliveries may be redeliveries of a job that already ran.

A job without ``idempotency_key`` or ``unique`` needs the store's answer before it runs only
when its message may have been delivered before: then the earlier delivery may have done the
work (the worker died before the ack) or may still be doing it. Every other delivery is a first
one and starts at once; its lease is taken in the next group-committed write.

The signals, per broker:

* RabbitMQ sets ``redelivered`` on a message it delivered before and got back unacked (a
  consumer's connection closed: its process died, or it shut down with messages prefetched).
  Dramatiq exposes the flag on its ``_RabbitmqMessage``.
* On Redis, a dead process's unacked messages are put back by the Watchdog
  (:mod:`._recovery`), which marks each with :data:`REDELIVERED_OPTION` first. Dramatiq's own
  maintenance puts back the messages of a process silent for a minute without changing them: such
  a copy cannot be told from a first delivery (same data, same ``redis_message_id``), so it is
  not checked. With the Watchdog running, its recovery comes first (after ``abandon_after``).
* Any broker: a message the bundle put back after a check (:data:`PUT_BACK_OPTION`) or a
  replayed dead letter (:data:`REPLAY_OPTION`) is checked again, and so is every cron tick
  (:data:`CRON_FIRE_OPTION`): a scheduler whose claim lapsed before it confirmed the enqueue
  may have its tick enqueued again, under the same message id, by another. Ticks are few, so
  checking each costs nothing that shows.
"""

from __future__ import annotations

from typing import Any

#: Option the Watchdog adds to a dead process's unacked Redis messages when it puts them back:
#: when it did (ms).
REDELIVERED_OPTION = "dr_redelivered_at"
#: Option counting how many times a message was put back because its key was busy.
PUT_BACK_OPTION = "dr_put_back"
#: Option a replayed dead letter carries: when it was replayed (ms). A replay is checked like any
#: redelivery: if its job (or key) already completed, it is skipped, so a replay delivered twice,
#: or the replay of a copy whose job was done by another copy, does the work once.
REPLAY_OPTION = "dr_replayed_at"

#: Option of a cron tick (the time it fires, ms): the same as ``actors.cron.FIRE_OPTION``.
CRON_FIRE_OPTION = "dr_cron_fire"

_MARKS = (REDELIVERED_OPTION, PUT_BACK_OPTION, REPLAY_OPTION, CRON_FIRE_OPTION)


def may_be_redelivery(message: Any) -> str | None:
    """Why ``message`` (a delivered ``MessageProxy``) may have been delivered before, or ``None``."""
    if message.__dict__.get("redelivered"):
        return "redelivered by RabbitMQ"
    options = message._message.options
    for mark in _MARKS:
        if mark in options:
            return mark
    return None
