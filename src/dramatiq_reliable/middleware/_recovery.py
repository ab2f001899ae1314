"""Put a dead worker process's unacked messages back in their Redis queues, at once.

Dramatiq's ``RedisBroker`` keeps the messages a process fetched in
``<ns>:__acks__.<broker_id>.<queue>`` until it acks them. When the process dies they come back
only through Dramatiq's own maintenance: a dispatch on that queue that wins a 0.1 % roll,
once the process's broker heartbeat (``<ns>:__heartbeats__``) is older than 60 s. On a quiet
system that takes many minutes.

:class:`RedisRecovery` runs that maintenance now, for the queues of a process the Watchdog
proved dead: on a tool broker sharing the worker's Redis client, with ``maintenance_chance``
at its maximum and a heartbeat timeout just above the dead process's silence. Maintenance
puts back the messages of *every* broker id silent for longer than that timeout, so it runs
for a queue only when:

* the dead process's own broker heartbeat is at least ``min_silence_ms`` old (a process that
  still talks to the broker is not dead, whatever the store says), and
* every other broker id as silent as it (within ``GUARD_MS``) that holds messages of that
  queue is one the store also proved dead. A live process, however slow, is never robbed.

A queue that is not safe now is tried again at the next sweep.

Before they are put back, the messages get the option
:data:`~._redelivery.REDELIVERED_OPTION`: a worker then knows that an earlier delivery may
have done the work, and asks the store before running them (see :mod:`._redelivery`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .._clock import now_ms
from ._redelivery import REDELIVERED_OPTION

logger = logging.getLogger("dramatiq_reliable.middleware.Watchdog")

#: Milliseconds of margin between the dead process's last broker heartbeat and any live one's.
GUARD_MS = 1_000
#: ``maintenance_chance`` that makes every dispatch run maintenance (Dramatiq's scale).
ALWAYS = 1_000_000
#: Replace a message's data only if it is still there (it was not acked meanwhile).
_REPLACE = "if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end"


@dataclass(frozen=True)
class Pending:
    """A dead process whose broker messages are still to be put back."""

    proc: str
    bid: str
    broker: str | None = None
    ns: str | None = None
    queues: list[str] = field(default_factory=list)

    @classmethod
    def from_result(cls, item: dict[str, Any]) -> Pending:
        queues = item.get("queues")
        return cls(
            proc=str(item["proc"]),
            bid=str(item["bid"]),
            broker=item.get("broker"),
            ns=item.get("ns"),
            queues=[str(q) for q in queues] if isinstance(queues, list) else [],
        )


class RedisRecovery:
    """Forces Dramatiq's recovery of dead processes' messages on one RedisBroker.

    Parameters:
      broker(RedisBroker): the worker's broker (its client and namespace are used).
      identity(str): the broker server's identity (:func:`dramatiq_reliable.brokers.broker_identity`),
        as the Watchdog records it for each process.
      min_silence_ms(int): a dead process's broker heartbeat must be at least this old.
    """

    def __init__(self, broker: Any, *, identity: str, min_silence_ms: int) -> None:
        self.broker = broker
        self.locator = identity
        self.namespace: str = broker.namespace
        self.min_silence_ms = min_silence_ms
        self._tool: Any = None

    def handles(self, item: Pending) -> bool:
        """True if ``item``'s process used this broker (same server, database and namespace,
        whatever address each named it by)."""
        return item.broker == self.locator and item.ns == self.namespace

    def recover(self, pending: list[Pending], dead_bids: set[str]) -> list[str]:
        """Put back what is safe to put back now.

        Parameters:
          pending(list[Pending]): dead processes whose messages may still be unacked.
          dead_bids(set[str]): every broker id the store proved dead.

        Returns:
          list[str]: the processes with nothing left to put back.
        """
        mine = [item for item in pending if self.handles(item)]
        if not mine:
            return []
        client = self.broker.client
        rows = client.zrange(f"{self.namespace}:__heartbeats__", 0, -1, withscores=True)
        scores = {_text(bid): float(score) for bid, score in rows}
        done = []
        for item in mine:
            last = scores.get(item.bid)
            if last is None:
                done.append(item.proc)  # no heartbeat left: nothing of it remains in the broker
                continue
            if now_ms() - last < self.min_silence_ms:
                logger.debug("Dead worker %s still used its broker %d ms ago; not yet.", item.proc, now_ms() - last)
                continue
            queues = item.queues or self._queues_of(item.bid)
            blocked = [q for q in queues if not self._put_back(item, q, last, scores, dead_bids | {item.bid})]
            if blocked:
                logger.info(
                    "Messages of dead worker %s on %s wait: a live process is as silent as it.",
                    item.proc,
                    ", ".join(blocked),
                )
            else:
                done.append(item.proc)
        return done

    def _queues_of(self, bid: str) -> list[str]:
        """The queues a broker id holds unacked messages of (when its process died before saying)."""
        prefix = f"{self.namespace}:__acks__.{bid}."
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        keys = self.broker.client.scan_iter(match=pattern, count=1000)
        return sorted(_text(key)[len(prefix) :] for key in keys)

    def _put_back(self, item: Pending, queue: str, last: float, scores: dict[str, float], dead: set[str]) -> bool:
        """Run maintenance on ``queue`` if it is safe; False if it was not."""
        client = self.broker.client
        acks = f"{self.namespace}:__acks__."
        others = [bid for bid, score in scores.items() if score <= last + GUARD_MS and bid not in dead]
        pipe = client.pipeline(transaction=False)
        for bid in others:
            pipe.scard(f"{acks}{bid}.{queue}")
        pipe.scard(f"{acks}{item.bid}.{queue}")
        *held, count = pipe.execute()
        if any(held):
            return False
        if not count:
            return True
        self._mark(item.bid, queue)
        tool = self._tool_broker()
        tool.heartbeat_timeout = max(int(now_ms() - last), 1)
        tool.do_qsize(queue)
        logger.warning(
            "Put back %d unacked message(s) of dead worker %s (broker id %s) in queue %r.",
            count,
            item.proc,
            item.bid,
            queue,
        )
        return True

    def _mark(self, bid: str, queue: str) -> None:
        """Add :data:`REDELIVERED_OPTION` to the unacked messages of ``bid`` in ``queue``."""
        from dramatiq import Message
        from dramatiq.errors import DecodeError

        client = self.broker.client
        ids = sorted(client.smembers(f"{self.namespace}:__acks__.{bid}.{queue}"))
        if not ids:
            return
        data_key = f"{self.namespace}:{queue}.msgs"
        stamp = now_ms()
        pipe = client.pipeline(transaction=False)
        for redis_id, data in zip(ids, client.hmget(data_key, ids), strict=True):
            if data is None:
                continue
            try:
                message = Message.decode(data)
            except (DecodeError, TypeError):
                continue  # put back as it is: a worker will reject it as Dramatiq does
            pipe.eval(_REPLACE, 1, data_key, redis_id, message.copy(options={REDELIVERED_OPTION: stamp}).encode())
        pipe.execute()

    def _tool_broker(self) -> Any:
        """A RedisBroker on the worker's client that always runs maintenance.

        It dispatches under the worker's own broker id, so it adds no entry to the broker's
        heartbeats.
        """
        if self._tool is None:
            from dramatiq.brokers.redis import RedisBroker

            tool = RedisBroker(  # type: ignore[no-untyped-call]
                client=self.broker.client,
                namespace=self.namespace,
                middleware=[],
                maintenance_chance=ALWAYS,
                dead_message_ttl=self.broker.dead_message_ttl,
            )
            tool.broker_id = self.broker.broker_id
            self._tool = tool
        return self._tool


def put_back_prefetched(worker: Any) -> int:
    """Put back the messages a stopped worker's Redis consumers fetched but never handed out.

    Dramatiq's Redis consumer fetches messages in batches (they move to the process's ack set)
    and hands them to the worker one at a time. A consumer stopped between the two keeps the
    rest in memory, and Dramatiq's shutdown requeues only the messages the worker holds: those
    stay in the ack set of a process that is gone, until Dramatiq's own maintenance finds them
    (a minute at least), and meanwhile they stop the Watchdog from putting back the messages of
    any process that died about then (they make its broker id look like a live one). None of
    them was handed to a worker thread, so they are put back here at once.

    Returns:
      int: how many were put back.
    """
    from dramatiq import Message
    from dramatiq.errors import DecodeError

    count = 0
    for thread in list(getattr(worker, "consumers", {}).values()):
        consumer = getattr(thread, "consumer", None)
        cache = getattr(consumer, "message_cache", None)
        if not cache or consumer is None:
            continue
        messages = []
        for data in cache:
            try:
                messages.append(Message.decode(data))
            except (DecodeError, TypeError):
                continue  # no message id to put back by: left to Dramatiq's maintenance
        consumer.message_cache = []
        try:
            consumer.requeue(messages)
        except Exception as exc:
            logger.warning("Could not put back %d prefetched message(s): %s", len(messages), exc)
            continue
        count += len(messages)
        logger.info("Put back %d prefetched message(s) no worker thread took, in %r.", len(messages), thread.queue_name)
    return count


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
