"""Dead-letter queues of a ``RedisBroker``: ``<ns>:<q>.XQ`` (zset) and ``<ns>:<q>.XQ.msgs`` (hash)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from dramatiq import Message

from ..errors import BrokerUnavailable
from .xq import DeadQueue, Session, XEntry

T = TypeVar("T")

#: Entries read per Redis call.
CHUNK = 2_000

# Move entries from the dead-letter queue to the live queue, each only if it is still there.
# ARGV: namespace, queue, n, then n times (old id, new id, payload), then ids to drop.
# The live queue's keys are written as Dramatiq's own ``enqueue`` command writes them.
MOVE = """
local ns, q, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local xq = ns .. ':' .. q .. '.XQ'
local out = {}
for i = 0, n - 1 do
  local old, new, data = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  if redis.call('zrem', xq, old) == 1 then
    redis.call('hdel', xq .. '.msgs', old)
    redis.call('hset', ns .. ':' .. q .. '.msgs', new, data)
    redis.call('rpush', ns .. ':' .. q, new)
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
for i = 4 + 3 * n, #ARGV do
  redis.call('zrem', xq, ARGV[i])
  redis.call('hdel', xq .. '.msgs', ARGV[i])
end
return out
"""

# Remove entries. ARGV: namespace, queue, ids. Returns 1/0 per id (was it there).
REMOVE = """
local xq = ARGV[1] .. ':' .. ARGV[2] .. '.XQ'
local out = {}
for i = 3, #ARGV do
  out[i - 2] = redis.call('zrem', xq, ARGV[i])
  redis.call('hdel', xq .. '.msgs', ARGV[i])
end
return out
"""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisDeadQueue(DeadQueue):
    """Dead-letter queues of a ``RedisBroker`` (its client and namespace)."""

    kind = "redis"

    def __init__(self, broker: Any) -> None:
        self.client: redis.Redis = broker.client
        self.namespace: str = broker.namespace
        self._move = self.client.register_script(MOVE)
        self._remove = self.client.register_script(REMOVE)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"broker unreachable: {_reason(exc)}") from exc

    def xq(self, queue: str) -> str:
        return f"{self.namespace}:{queue}.XQ"

    def discover(self) -> set[str]:
        prefix = self.namespace + ":"
        names: set[str] = set()
        for key in self.call(
            lambda: list(self.client.scan_iter(match=_glob_escape(prefix) + "*.XQ", count=1000, _type="zset"))
        ):
            text = key.decode() if isinstance(key, bytes) else str(key)
            names.add(text[len(prefix) : -len(".XQ")])
        return names

    def counts(self, queues: list[str]) -> dict[str, int]:
        if not queues:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.zcard(self.xq(q))
        return {q: int(n) for q, n in zip(queues, self.call(pipe.execute), strict=True)}

    def open(self, queue: str) -> Session:
        return _RedisSession(self, queue)


class _RedisSession(Session):
    def __init__(self, owner: RedisDeadQueue, queue: str) -> None:
        self.owner = owner
        self.queue = queue
        self.key = owner.xq(queue)

    def scan(self, want: set[str] | None = None) -> list[XEntry]:
        out: list[XEntry] = []
        start = 0
        while True:
            rows: list[Any] = self.owner.call(
                self.owner.client.zrange, self.key, start, start + CHUNK - 1, withscores=True
            )
            for member, score in rows:
                ref = member.decode() if isinstance(member, bytes) else str(member)
                out.append(XEntry(self.queue, ref, dead_at=int(score), ident=ref, stable=True))
            if len(rows) < CHUNK:
                return out
            start += CHUNK

    def load(self, entries: list[XEntry]) -> None:
        todo = [e for e in entries if not e.loaded]
        for i in range(0, len(todo), CHUNK):
            chunk = todo[i : i + CHUNK]
            raws = self.owner.call(self.owner.client.hmget, self.key + ".msgs", [e.ref for e in chunk])
            for entry, raw in zip(chunk, raws, strict=True):
                entry.fill(raw)

    def fetch(self, refs: list[str]) -> list[XEntry]:
        if not refs:
            return []
        pipe = self.owner.client.pipeline(transaction=False)
        for ref in refs:
            pipe.zscore(self.key, ref)
            pipe.hget(self.key + ".msgs", ref)
        replies = self.owner.call(pipe.execute)
        out = []
        for i, ref in enumerate(refs):
            score, raw = replies[2 * i], replies[2 * i + 1]
            if score is not None:
                out.append(XEntry(self.queue, ref, dead_at=int(score), ident=ref, stable=True).fill(raw))
        return out

    def prepare(self, message: Message[Any]) -> Message[Any]:
        return message.copy(options={"redis_message_id": str(uuid.uuid4())})

    def move(self, items: list[tuple[XEntry, Message[Any]]], drop: list[XEntry]) -> list[bool]:
        args: list[Any] = [self.owner.namespace, self.queue, len(items)]
        for entry, message in items:
            args += [entry.ref, message.options["redis_message_id"], message.encode()]
        args += [e.ref for e in drop]
        result = self.owner.call(self.owner._move, args=args)
        return [bool(int(r)) for r in result]

    def remove(self, entries: list[XEntry]) -> list[bool]:
        if not entries:
            return []
        result = self.owner.call(self.owner._remove, args=[self.owner.namespace, self.queue, *[e.ref for e in entries]])
        return [bool(int(r)) for r in result]
