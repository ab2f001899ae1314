"""``RedisStore``: the store on Redis, shared by every worker process and host.

Key layout (``prefix`` defaults to ``dr``; all times are milliseconds since the epoch)::

    dr:job:<id>                 string  the job record, compact JSON (below); expires
                                        ``retention`` + 1 day after a terminal status,
                                        30 days after any other write
    dr:jobs:status:<status>     zset    job id -> when it entered <status>
    dr:jobs:actor:<actor>       zset    job id -> when it was enqueued
    dr:jobs:key:<name>=<value>  zset    job id -> when it was enqueued (business keys)

    dr:idem:done:<key>          string  id of the job that completed <key>; PX ``ttl``
    dr:idem:lease:<key>         string  owner token of the running delivery; PX ``lease``
    dr:idem:unique:<key>        string  id of the pending job that reserved <key>; PX ``ttl``
    dr:idem:once:<id>           hash    step name -> JSON result of ``dr.once``; PX ``ttl``

    dr:alert:<kind>:<actor>:<error type>
                                hash    an alert throttle: last (ms of the last notification),
                                        sup (occurrences suppressed since), since (ms of the
                                        first of them), seen (ms of the latest), jid, msg, q,
                                        win (ms), kind, actor, etype; PX 2 windows + 1 min
                                        after the latest occurrence
    dr:alerts:due               zset    throttle name -> ms its summary of suppressed
                                        occurrences is due (while it has some)
    dr:alerts:quiet             zset    throttle name -> ms it counts as recovered
                                        (``notify_recovered=True`` only)

``<key>`` is an actor's ``idempotency_key`` (``<actor>:<rendered template>``), or
``msg:<job id>`` for actors without one.

The job record: ``id actor queue status att(empts) maxr(max_retries) enq start fin next due
upd(ated) worker keys args(JSON text) err{type,message,traceback} dup stack ev[[ms, status,
detail], ...]``; absent fields are left out.

Every transition is one op of a batch applied by one Lua script (``store/lua/*.lua``,
assembled in name order), which keeps the indexes in step with the records: a job is in
exactly one status index, and records past their retention are removed together with their
index entries. The script touches keys it derives from its arguments, so ``RedisStore`` needs
a single Redis server (or a primary), not a Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError, StoreError, StoreUnavailable
from ..records import JobRecord, Page
from ..status import Status
from . import _paging
from .base import Store, statuses_to_count

T = TypeVar("T")

#: Seconds to wait for a connection, and for an answer, before the store counts as unreachable.
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_SOCKET_TIMEOUT = 5.0


def _script_source() -> str:
    folder = resources.files(__package__).joinpath("lua")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".lua"))
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


def hide_password(url: str) -> str:
    """``redis://:secret@host/1`` → ``redis://:***@host/1``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RedisStore(Store):
    """The store on a Redis server. See the module docstring for the key layout.

    Parameters:
      url(str): ``redis://[:password@]host[:port][/db]`` or ``rediss://…`` (TLS). Keep it
        apart from the broker's database: ``redis://127.0.0.1:6379/1``.
      prefix(str): prepended to every key. Defaults to ``"dr"``.
      socket_timeout(float): seconds to wait for an answer. Defaults to 5.
      socket_connect_timeout(float): seconds to wait for a connection. Defaults to 2.

    Raises:
      ConfigurationError: the URL is malformed.

    Nothing connects until the first call.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/1",
        *,
        prefix: str = "dr",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__()
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(f"not a Redis URL: {hide_password(url)!r} (expected redis:// or rediss://)")
        try:
            _ = parts.port
            self.client: redis.Redis = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout,
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigurationError(f"malformed Redis URL {hide_password(url)!r}: {exc}") from None
        if parts.scheme != "unix" and not parts.hostname:
            raise ConfigurationError(f"malformed Redis URL {hide_password(url)!r}: no host")
        self.url = hide_password(url)
        self.prefix = prefix + ":"
        self._script = self.client.register_script(_script_source())

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"store {self.url} unreachable: {_reason(exc)}") from exc
        except RedisError as exc:
            raise StoreError(f"store {self.url} refused {what}: {exc}") from exc

    def k(self, *parts: str) -> str:
        """A key under this store's prefix: ``k("job", id)`` → ``dr:job:<id>``."""
        return self.prefix + ":".join(parts)

    # -- writes ---------------------------------------------------------------------------------

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if not batch.get("ops"):
            return []
        payload = json.dumps(batch, separators=(",", ":"))
        raw = self._call("a batch", self._script, args=[self.prefix, payload])
        results = json.loads(raw)
        return results if isinstance(results, list) else []

    # -- reads ----------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        data = _paging.decode_record(self._call("a read", self.client.get, self.k("job", job_id)))
        return JobRecord.from_stored(data) if data else None

    def find_jobs(
        self,
        *,
        status: Status | str | None = None,
        actor: str | None = None,
        key: tuple[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        status_value = _paging.check_query(status, limit)
        return _paging.find(
            fetch=self._fetch_index,
            load=self._load_records,
            status=status_value,
            actor=actor,
            key=key,
            limit=limit,
            cursor=cursor,
        )

    def _fetch_index(self, index: str, position: _paging.Entry | None, count: int) -> list[_paging.Entry]:
        name = self.prefix + "jobs:" + index
        top: float | str = "+inf" if position is None else position[0]
        out: list[_paging.Entry] = []
        offset = 0
        while len(out) < count:
            rows = self._call(
                "a listing",
                self.client.zrevrangebyscore,
                name,
                top,
                "-inf",
                start=offset,
                num=count + 16,
                withscores=True,
            )
            for member, score in rows:
                entry = (float(score), member.decode() if isinstance(member, bytes) else str(member))
                if _paging.after(entry, position):
                    out.append(entry)
            if len(rows) < count + 16:
                break
            offset += len(rows)
        return out[:count]

    def _load_records(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        raws = self._call("a read", self.client.mget, [self.k("job", i) for i in ids])
        return [_paging.decode_record(raw) for raw in raws]

    # -- step checkpoints -----------------------------------------------------------------------

    def once_get(self, job_id: str, name: str) -> str | None:
        raw = self._call("a checkpoint read", self.client.hget, self.k("idem", "once", job_id), name)
        return raw.decode() if isinstance(raw, bytes) else raw

    def once_set(self, job_id: str, name: str, result_json: str, ttl_ms: int) -> None:
        key = self.k("idem", "once", job_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, name, result_json)
        pipe.pexpire(key, ttl_ms)
        self._call("a checkpoint write", pipe.execute)

    # -- alerts / metrics ---

    def count_jobs(self, statuses: Sequence[Status | str] | None = None) -> dict[str, int]:
        names = statuses_to_count(statuses)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.zcard(self.k("jobs", "status", name))
        counts = self._call("a count", pipe.execute)
        return {name: int(n) for name, n in zip(names, counts, strict=True)}

    # -- housekeeping ---------------------------------------------------------------------------

    def ping(self) -> None:
        self._call("a ping", self.client.ping)

    def close(self) -> None:
        super().close()
        self.client.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
