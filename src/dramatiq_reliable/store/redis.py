"""``RedisStore``: the store on Redis, shared by every worker process and host.

Key layout (``prefix`` defaults to ``dr``; all times are milliseconds since the epoch)::

    dr:job:<id>                 string  the job record, compact JSON (below); expires
                                        ``retention`` + 1 day after a terminal status,
                                        30 days after any other write
    dr:jobs:s:<status>:<actor>  zset    job id -> when it entered <status> (one index per job)
    dr:jobs:actors              set     the actors that have such indexes
    dr:jobs:gc                  string  when a call last checked every index for records past
                                        their retention (the next does, GC_EVERY = 1 s later)
    dr:jobs:key:<name>=<value>  zset    job id -> when it was enqueued (business keys)

    dr:idem:done:<key>          string  id of the job that completed <key>; PX ``ttl`` (not for a
                                        message id whose JobState record serves: its done index)
    dr:idem:lease:<key>         string  owner token of the running delivery; PX ``lease``
    dr:idem:unique:<key>        string  id of the pending job that reserved <key>; PX ``ttl``
    dr:idem:once:<key>          hash    step name -> JSON result of ``dr.once``; PX ``ttl`` from
                                        the last step stored; deleted when a job that read or
                                        stored steps of <key> completes it

    dr:cron:tick:<name>:<fire>  string  the claim of one tick of schedule <name> (fire time in ms):
                                        JSON {st, job, by, lease, dl, at, n}; PX misfire grace
                                        + claim lease + 60 s
    dr:cron:pending:<name>      zset    fire time -> when the claim lapses, for ticks claimed
                                        but not yet enqueued
    dr:cron:last:<name>         string  the latest tick: JSON {fire, job, st, by, at}; PX 400 days
    dr:wd:procs                 zset    Watchdog: live process -> deadline (last beat + its
                                        ``abandon_after``); process = ``host:pid:token``
    dr:wd:info                  hash    process -> JSON {host, pid, bid (RedisBroker id), broker,
                                        ns, queues}
    dr:wd:run:<process>         hash    job id -> JSON {a(ctor), q(ueue), lk/lt (lease key and
                                        token)}: the jobs the process runs
    dr:wd:dead                  zset    process found dead -> when (kept 1 hour, then forgotten)
    dr:wd:pending               set     dead processes whose unacked broker messages are still
                                        to be put back (Redis brokers)
    dr:wd:lock                  string  ``<expiry ms>|<process>`` of the last sweep; PX
                                        ``sweep_interval`` (the sweep also drops expired
                                        dead letters)
    dr:dead:<id>                string  a dead letter (DeadLetters): the message as delivered,
                                        the final error, attempts, actor, queue, time; kept
                                        ``retention``: removed with its index entries by the
                                        fleet's sweep or the next dead-letter op, and PX
                                        ``retention`` + 1 day as a backstop
    dr:deads:time               zset    job id -> when it was dead-lettered
    dr:deads:queue:<queue>      zset    job id -> when it was dead-lettered
    dr:deads:actor:<actor>      zset    job id -> when it was dead-lettered
    dr:deads:exp                zset    job id -> when its retention ends (cleanup)
    dr:deads:xids:<queue>       hash    Redis broker message id (``redis_message_id``) -> job id
    dr:deads:stats              hash    "<actor>\t<error type>" -> dead letters held
    dr:deads:queues             zset    queue -> when last declared or dead-lettered
    dr:deads:offset             hash    queue -> broker entries minus store entries, last reconciled
    dr:deads:lock:<queue>       string  token of the tool reading a RabbitMQ dead-letter queue; PX
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
    dr:stats:m:<minute>         hash    counters of jobs that ended in that minute (ms // 60000):
                                        "a\t<actor>\t<done|failed|dead>" -> count, "w\t<queue>" ->
                                        longest wait (ms); PX 25 hours after its first write

``<key>`` is an actor's ``idempotency_key`` (``<actor>:<rendered template>``), or
``msg:<job id>`` for actors without one; the reservation of a ``unique`` actor without one is
``<actor>:<sha1 of the JSON arguments>``.

The job record (its id is in its key): ``actor queue status att(empts) maxr(max_retries) enq
start fin next due worker keys args(JSON text) err{type,message,traceback} dup stack wp
e[[ms, status, detail], ...]``; absent fields are left out; the time of the last event is the
time of the last update. ``wp`` is the Watchdog's process running the job. Compact: ``start``,
``fin`` and the events' times count from ``enq`` (from 0 without one), and ``worker`` is left
out when the latest start's event ("attempt N on <worker>") names it
(:func:`dramatiq_reliable._stored.absolute` reads it back). A record written by library v2 has
``ev`` with times since the epoch; both are read.

Every transition is one op of a batch applied by the store's Lua library (``store/lua/*.lua``,
loaded once with ``FUNCTION LOAD`` as ``dramatiq_reliable_v<N>``, called with ``FCALL``; see
``store/_library.py``), which keeps the indexes in step with the records: a job is in exactly
one (status, actor) index, and records past their retention are removed together with their index
entries. Times in keys and records are the store's clock (``TIME``). The library builds every
key from its arguments (in one place, the ``K`` table of ``00_prelude.lua``), from the prefix
it is given; it needs Redis >= 7.0 or Valkey >= 7.2 (Redis Functions).

On a Redis Cluster (``redis+cluster://``, :class:`~.cluster.ClusterStore`) the store is in
shards: this layout, whole, under ``{dr:<s>}:`` for each shard ``s`` (a hash tag: each call of
the library lives in one slot), the fleet's keys (``wd:*``, ``cron:*``, ``alert*``, ``ctl:*``,
dead-letter queue locks and offsets) under ``{dr}:``; see ``store/cluster.py``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import _stored
from .._urls import check_redis_query, hide_password, safe_reason
from ..errors import ConfigurationError, CorruptRecord, StoreError, StoreUnavailable
from ..fleet import WorkerProcess, build_processes
from ..records import DeadLetter, DeadStats, JobRecord
from ..status import Status
from . import _connect, _dead, _durability, _library, _paging
from .base import Store, statuses_to_count

T = TypeVar("T")

#: Seconds to wait for a connection, and for an answer, before the store counts as unreachable.
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_SOCKET_TIMEOUT = 5.0


class RedisStore(Store):
    """The store on a Redis server. See the module docstring for the key layout.

    Parameters:
      url(str): ``redis://[:password@]host[:port][/db][?prefix=name]``, ``rediss://…`` (TLS),
        ``unix://…``, or ``redis+sentinel://[:password@]host:port[,host:port…]/service[/db]``
        (the primary the Sentinels name; it follows a failover). Keep it apart from the
        broker's database: ``redis://127.0.0.1:6379/1``. A ``prefix`` query parameter overrides
        ``prefix`` (so one URL names the store for the CLI too); ``wait=N`` (default 1 on
        Sentinel URLs, else 0) and ``wait_timeout_ms`` (default 200) make each call wait for
        ``N`` replicas to have its writes (see :mod:`._durability` and docs/scaling.md); or
        ``redis+cluster://[:password@]host:port[,host:port…][?prefix=name]``, a Redis Cluster
        from any of its nodes (no database: a Cluster has only 0; the store's keys take the hash
        tag ``{prefix}``, see the module docstring).
      prefix(str): prepended to every key. Defaults to ``"dr"``.
      socket_timeout(float): seconds to wait for an answer. Defaults to 5.
      socket_connect_timeout(float): seconds to wait for a connection. Defaults to 2.

    Raises:
      ConfigurationError: the URL is malformed.

    Nothing connects until the first call. A ``redis+cluster://`` URL makes a
    :class:`~.cluster.ClusterStore` (this class, in shards over the Cluster's primaries).
    """

    def __new__(cls, url: str = "redis://127.0.0.1:6379/1", *args: Any, **kwargs: Any) -> RedisStore:
        if cls is RedisStore and isinstance(url, str) and url.split("://", 1)[0] == _connect.CLUSTER_SCHEME:
            from .cluster import ClusterStore

            return super().__new__(ClusterStore)
        return super().__new__(cls)

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/1",
        *,
        prefix: str = "dr",
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__()
        try:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigurationError(f"malformed Redis URL {hide_password(url)!r}: {safe_reason(exc, url)}") from None
        prefixes = [v for k, v in query if k == "prefix"]
        if prefixes:
            prefix = prefixes[-1]
            if not prefix:
                raise ConfigurationError(f"empty prefix in store URL {hide_password(url)!r}")
            url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
        if parts.scheme not in (*_connect.SERVER_SCHEMES, _connect.SENTINEL_SCHEME, _connect.CLUSTER_SCHEME):
            raise ConfigurationError(
                f"not a Redis URL: {hide_password(url)!r} "
                "(expected redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://)"
            )
        check_redis_query([k for k, _ in query], ("prefix", *_connect.OWN_OPTIONS), url, "store")
        conn = _connect.connect(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout)
        self._client = conn.client
        self._make_cluster = conn.cluster
        self._setup(
            conn.shown + ("" if prefix == "dr" else f"{'&' if '?' in url else '?'}prefix={prefix}"),
            prefix,
            replicas=(conn.wait_replicas, conn.wait_timeout_ms),
        )

    #: The Redis client (a ``redis.cluster.RedisCluster`` on a Cluster, made at its first use).
    _client: Any = None
    _make_cluster: Callable[[], Any] | None = None

    @property
    def client(self) -> Any:
        client = self._client
        if client is None and self._make_cluster is not None:
            with self._serial_lock:
                if self._client is None:
                    try:
                        self._client = self._make_cluster()
                    except (RedisError, RedisClusterException, OSError) as exc:
                        raise StoreUnavailable(f"store {self.url} unreachable: {_reason(exc)}") from exc
                client = self._client
        return client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    def _setup(
        self,
        url: str,
        prefix: str,
        clock: Callable[[], int] | None = None,
        replicas: tuple[int, int] = (0, _connect.DEFAULT_WAIT_TIMEOUT_MS),
    ) -> None:
        self.url = url
        #: The embedded server (``MemoryStore``): no replicas, no topology to check.
        self._embedded = url == "memory://"
        self._replicas = _durability.ReplicaWait(replicas[0], replicas[1], url)
        #: Why writes are refused (a replica, a Cluster node), once seen; cleared when no longer so.
        self._refusal: str | None = None
        #: The process that found the server fit for writes (see ``_check_topology``).
        self._checked_pid = 0
        #: On a Redis Cluster: the prefix is a hash tag (one slot holds the whole store).
        self._cluster = self._make_cluster is not None
        self.prefix = "{" + prefix + "}:" if self._cluster else prefix + ":"
        #: The key an ``FCALL`` names on a Cluster (the client routes the call by its slot).
        self._slot_key = self.prefix + "meta"
        #: When set (``MemoryStore(clock=...)``), every batch runs at this clock's time, not the server's.
        self._clock = clock
        self._loader = _library.Loader(url, embedded=url == "memory://")
        self._loaded_pid = 0
        self._serial_lock = threading.Lock()
        self._serial: Any = None
        self._serial_pid = 0

    # -- plumbing -------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, RedisClusterException) as exc:
            raise StoreUnavailable(f"store {self.url} unreachable: {_reason(exc)}") from exc
        except RedisError as exc:
            if "DB index is out of range" in str(exc):
                # The URL names a database the server does not have: the store cannot be used.
                raise StoreUnavailable(f"store {self.url} unusable: the server has no such database ({exc})") from exc
            if _connect.is_readonly(exc):
                raise self._refused_readonly() from exc
            if _connect.is_cluster_refusal(exc) and not self._cluster:
                raise StoreUnavailable(f"store {self.url} is a Redis Cluster node: {_connect.CLUSTER_REFUSAL}") from exc
            raise StoreError(f"store {self.url} refused {what}: {exc}") from exc

    def _refused_readonly(self) -> StoreUnavailable:
        """A write went to a replica: unavailable for writes, with one clear line (not the raw error)."""
        self._checked_pid = 0
        self._loaded_pid = 0
        try:
            info = self.client.info("replication")
            self._refusal = _connect.readonly_reason(info, self.url)
        except RedisError:
            pass
        self._refusal = self._refusal or f"store {self.url} refused a write: it is a read-only replica"
        return StoreUnavailable(self._refusal)

    def _check_topology(self) -> None:
        """Before a process's first write (the library load is one): refuse a replica or a
        Cluster node in one line.

        A Cluster node runs a store call until its first key of another node's slot, so the
        call would leave half its writes behind; a replica refuses every write. One ``INFO``
        per process, repeated while the server is unfit (a replica may be promoted).
        """
        if self._embedded or self._cluster or self._checked_pid == os.getpid():
            return
        info = self._call("a check", self.client.execute_command, "INFO", "replication", "cluster")
        self._refusal = _connect.topology_error(info, self.url)
        if self._refusal is not None:
            raise StoreUnavailable(self._refusal)
        self._checked_pid = os.getpid()

    def check_server(self) -> list[str]:
        """Warnings about the store's server (its eviction policy); see :meth:`Store.check_server`."""
        if self._embedded:
            return []
        if self._cluster:
            warnings: list[str] = []
            for node in self._call("a check", self._primaries):
                info = self._call("a check", node.info, "memory")
                warnings.extend(_connect.server_problems(info, self.url)[1])
            return sorted(set(warnings))
        info = self._call("a check", self.client.execute_command, "INFO", "replication", "memory", "cluster")
        error, warnings = _connect.server_problems(info, self.url)
        self._refusal = error
        if error is not None:
            raise StoreUnavailable(error)
        return warnings

    def k(self, *parts: str) -> str:
        """A key under this store's prefix: ``k("job", id)`` → ``dr:job:<id>``."""
        return self.prefix + ":".join(parts)

    def _primaries(self) -> list[redis.Redis]:
        """A Cluster's primaries, a client each (the slots are asked for again first)."""
        cluster = self.client
        cluster.nodes_manager.initialize()
        return [node.redis_connection for node in cluster.get_primaries()]

    def _ensure_library(self) -> None:
        """Load the library once per process (see :mod:`._library`), on a server fit for writes
        (on a Cluster: on every primary)."""
        self._check_topology()
        if self._loaded_pid != os.getpid():
            if self._cluster:
                for node in self._call("the library load", self._primaries):
                    self._call("the library load", self._loader.ensure, node)
            else:
                self._call("the library load", self._loader.ensure, self.client)
            self._loaded_pid = os.getpid()

    def _payload(self, batch: dict[str, Any]) -> str:
        if self._clock is not None:
            batch = {**batch, "now_ms": int(self._clock())}
        return json.dumps(batch, separators=(",", ":"))

    # -- writes ---------------------------------------------------------------------------------

    def apply(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        if not batch.get("ops"):
            return []
        payload = self._payload(batch)
        self._ensure_library()
        try:
            raw = self._apply_pooled(payload)
        except StoreError as exc:
            if not _library.missing(exc.__cause__ or exc):
                raise
            self._loaded_pid = 0  # the server lost it (restart, FLUSHALL): load it again, once
            self._ensure_library()
            raw = self._apply_pooled(payload)
        return self._results(raw)

    def _apply_pooled(self, payload: str) -> Any:
        """The ``FCALL`` over the pool, and the replicas' ``WAIT`` in the same round trip."""
        if self._cluster:
            call = ("FCALL", _library.APPLY, 1, self._slot_key, self.prefix, payload)
            return self._call("a batch", self.client.execute_command, *call)
        wait = self._replicas.command()
        if wait is None:
            return self._call("a batch", self.client.fcall, _library.APPLY, 0, self.prefix, payload)
        return self._call("a batch", self._apply_waiting, payload, wait)

    def _apply_waiting(self, payload: str, wait: tuple[str, int, int]) -> Any:
        """The batch and a ``WAIT`` for the replicas, on one connection (``WAIT`` covers its own)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.fcall(_library.APPLY, 0, self.prefix, payload)
        pipe.execute_command(*wait)
        raw, acked = pipe.execute(raise_on_error=False)
        if not isinstance(acked, BaseException):
            self._replicas.acked(int(acked))
        if isinstance(raw, BaseException):
            raise raw
        return raw

    def _results(self, raw: bytes | str) -> list[dict[str, Any]]:
        results = _results(raw)
        errors = [Exception(r.get("error") or "") for r in results if r.get("error")]
        if any(_connect.is_readonly(e) for e in errors):
            raise self._refused_readonly()  # on a replica, no op of the batch was written
        if not self._cluster and any(_connect.is_cluster_refusal(e) for e in errors):
            raise StoreUnavailable(f"store {self.url} is a Redis Cluster node: {_connect.CLUSTER_REFUSAL}")
        return results

    def apply_serial(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """``apply`` over a connection of this process's own, without the pool's per-call cost
        (on a Cluster: ``apply``, whose client keeps a connection per node)."""
        if not batch.get("ops"):
            return []
        if self._cluster:
            return self.apply(batch)
        payload = self._payload(batch)
        self._ensure_library()
        with self._serial_lock:
            if self._serial_pid != os.getpid():
                self._serial = self.client.connection_pool.make_connection()
                self._serial_pid = os.getpid()
            conn = self._serial
            try:
                # connect() first: a Sentinel connection finds the primary there, whereas sending
                # on a closed one would connect it to its default address (localhost:6379).
                conn.connect()
                try:
                    raw = self._fcall(conn, payload)
                except ResponseError as exc:
                    if not _library.missing(exc):
                        raise
                    self._loaded_pid = 0
                    self._ensure_library()
                    raw = self._fcall(conn, payload)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                conn.disconnect()
                raise StoreUnavailable(f"store {self.url} unreachable: {_reason(exc)}") from exc
            except RedisError as exc:
                conn.disconnect()
                if _connect.is_readonly(exc):
                    raise self._refused_readonly() from exc
                if _connect.is_cluster_refusal(exc):
                    shown = f"store {self.url} is a Redis Cluster node: {_connect.CLUSTER_REFUSAL}"
                    raise StoreUnavailable(shown) from exc
                raise StoreError(f"store {self.url} refused a batch: {exc}") from exc
        return self._results(raw)

    def _fcall(self, conn: Any, payload: str) -> Any:
        call = ("FCALL", _library.APPLY, 0, self.prefix, payload)
        wait = self._replicas.command()
        if wait is None:
            conn.send_packed_command(conn.pack_command(*call))
            return conn.read_response()
        # The WAIT rides in the same round trip; its answer is read even when the call failed.
        conn.send_packed_command(conn.pack_commands([call, wait]))
        try:
            raw = conn.read_response()
        except ResponseError:
            self._replicas.acked(int(conn.read_response()))
            raise
        self._replicas.acked(int(conn.read_response()))
        return raw

    def kinds(self) -> dict[str, Any]:
        """The op kinds and sections the loaded library registered, with their fields (see ``ops``)."""
        self._ensure_library()
        found = json.loads(self._call("a read", self.client.fcall, _library.KINDS, 0))
        return found if isinstance(found, dict) else {}

    def _now_ms(self) -> int:
        return self.store_time_ms()

    def store_time_ms(self) -> int:
        """The store's clock (``TIME``), in milliseconds since the epoch."""
        if self._clock is not None:
            return int(self._clock())
        seconds, micros = self._call("a read", self.client.time)
        return int(seconds) * 1000 + int(micros) // 1000

    # -- reads ----------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        data = _paging.decode_record(self._call("a read", self.client.get, self.k("job", job_id)))
        if isinstance(data, _stored.Corrupt):
            raise CorruptRecord(f"the record of job {job_id!r} is corrupt: {data.reason}", job_id)
        return JobRecord.from_stored(data, job_id) if data else None

    def _intersect(self, index: str, others: Sequence[str], most: int) -> list[_paging.Entry] | None:
        names = [self.prefix + "jobs:" + name for name in (index, *others)]
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.zcard(name)
        sizes = self._call("a listing", pipe.execute)
        if min(sizes) > most:
            return None
        if min(sizes) == 0:
            return []
        # The first index's scores (weight 1; the others' weigh 0), in Redis's ascending order.
        weights = {name: (1 if i == 0 else 0) for i, name in enumerate(names)}
        rows = self._call("a listing", self.client.zinter, weights, withscores=True)
        entries = [(float(score), m.decode() if isinstance(m, bytes) else str(m)) for m, score in rows]
        entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
        return entries

    def _actors(self) -> list[str]:
        return [_text(a) for a in self._call("a listing", self.client.smembers, self.prefix + "jobs:actors")]

    def _member(self, index: str, ids: Sequence[str]) -> list[bool]:
        scores = self._call("a listing", self.client.zmscore, self.prefix + "jobs:" + index, list(ids))
        return [score is not None for score in scores]

    def _fetch_index(self, index: str, position: _paging.Entry | None, count: int) -> list[_paging.Entry]:
        top: float | str = "+inf" if position is None else position[0]
        return self._zpages("jobs:" + index, top, "-inf", position, count)

    def _fetch_indexes(
        self, indexes: Sequence[str], position: _paging.Entry | None, count: int
    ) -> list[list[_paging.Entry]]:
        """The first page of every index in one pipelined round trip; an index whose first page
        does not hold ``count`` entries after ``position`` (ties at the cursor's score) is read on."""
        top: float | str = "+inf" if position is None else position[0]
        pipe = self.client.pipeline(transaction=False)
        for index in indexes:
            pipe.zrevrangebyscore(self.prefix + "jobs:" + index, top, "-inf", start=0, num=count + 16, withscores=True)
        out: list[list[_paging.Entry]] = []
        for index, rows in zip(indexes, self._call("a listing", pipe.execute), strict=True):
            entries = [(float(score), _text(member)) for member, score in rows]
            entries = [e for e in entries if _paging.after(e, position)]
            if len(entries) >= count or len(rows) < count + 16:
                out.append(entries[:count])
            else:
                out.append(self._fetch_index(index, position, count))
        return out

    def _zpages(
        self, name: str, top: float | str, bottom: float | str, position: _paging.Entry | None, count: int
    ) -> list[_paging.Entry]:
        """:meth:`_zpage` of zset ``name`` under this store's prefix (a Cluster store: of every shard)."""
        return self._zpage(self.prefix + name, top, bottom, position, count)

    def _zpage(
        self, name: str, top: float | str, bottom: float | str, position: _paging.Entry | None, count: int
    ) -> list[_paging.Entry]:
        """Up to ``count`` entries of zset ``name`` in ``[bottom, top]``, newest first, after ``position``."""
        out: list[_paging.Entry] = []
        offset = 0
        while len(out) < count:
            rows = self._call(
                "a listing",
                self.client.zrevrangebyscore,
                name,
                top,
                bottom,
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

    def _load_records(self, ids: Sequence[str]) -> list[dict[str, Any] | _stored.Corrupt | None]:
        if not ids:
            return []
        raws = self._call("a read", self.client.mget, [self.k("job", i) for i in ids])
        return [_paging.decode_record(raw) for raw in raws]

    # -- step checkpoints -----------------------------------------------------------------------

    def once_get(self, scope: str, name: str) -> str | None:
        raw = self._call("a checkpoint read", self.client.hget, self._once_key(scope), name)
        return raw.decode() if isinstance(raw, bytes) else raw

    def once_set(self, scope: str, name: str, result_json: str, ttl_ms: int) -> None:
        key = self._once_key(scope)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, name, result_json)
        pipe.pexpire(key, ttl_ms)
        self._call("a checkpoint write", pipe.execute)

    def _once_key(self, scope: str) -> str:
        """The hash of the ``dr.once`` checkpoints of key ``scope``."""
        return self.k("idem", "once", scope)

    # -- Watchdog -------------------------------------------------------------------------------

    def worker_processes(self) -> list[WorkerProcess]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(self.k("wd", "procs"), 0, -1, withscores=True)
        pipe.zrange(self.k("wd", "dead"), 0, -1, withscores=True)
        pipe.hgetall(self.k("wd", "info"))
        pipe.smembers(self.k("wd", "pending"))
        procs_raw, dead_raw, info_raw, pending_raw = self._call("a read", pipe.execute)
        procs = {_text(m): float(s) for m, s in procs_raw}
        dead = {_text(m): float(s) for m, s in dead_raw}
        names = [*procs, *dead]
        return build_processes(
            procs,
            dead,
            {_text(k): _text(v) for k, v in info_raw.items()},
            self._running_counts(names),
            {_text(m) for m in pending_raw},
        )

    def _running_counts(self, procs: Sequence[str]) -> dict[str, int]:
        """How many jobs each process runs now (or ran when it died): its run hash's size."""
        if not procs:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for proc in procs:
            pipe.hlen(self.k("wd", "run", proc))
        return {proc: int(n) for proc, n in zip(procs, self._call("a read", pipe.execute), strict=True)}

    # -- dead letters ---------------------------------------------------------------------------

    def _fetch_dead(
        self, index: str, position: _paging.Entry | None, count: int, low: float, high: float
    ) -> list[_paging.Entry]:
        top: float | str = "+inf" if high == float("inf") else f"({high}"
        if position is not None:
            top = position[0] if position[0] < high else top
        bottom: float | str = "-inf" if low == float("-inf") else low
        return self._zpages("deads:" + index, top, bottom, position, count)

    def _load_dead(self, ids: Sequence[str]) -> list[tuple[_dead.Stored, _dead.Stored]]:
        if not ids:
            return []
        keys = [self.k("dead", i) for i in ids] + [self.k("job", i) for i in ids]
        raws = self._call("a read", self.client.mget, keys)
        n = len(ids)
        return [(_dead.decode(raws[i]), _stored.decode_object(raws[n + i])) for i in range(n)]

    def get_dead_letter(self, job_id: str) -> DeadLetter | None:
        return self.get_dead_letters([job_id])[0]

    def get_dead_letters(self, job_ids: list[str]) -> list[DeadLetter | None]:
        out: list[DeadLetter | None] = []
        now = self._now_ms()
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i : i + 500]
            for job_id, (d, job) in zip(chunk, self._load_dead(chunk), strict=True):
                out.append(_dead.view(job_id, d, job, now))
        return out

    def dead_letter_stats(self) -> DeadStats:
        kinds = self._call("a read", self.client.hgetall, self.k("deads", "stats"))
        queues = {q: n for q, (n, _) in self.dead_letter_queues().items()}
        return _dead.stats({_text(k): int(v) for k, v in kinds.items()}, queues)

    def dead_letter_queues(self) -> dict[str, tuple[int, int]]:
        names = [_text(q) for q in self._call("a read", self.client.zrange, self.k("deads", "queues"), 0, -1)]
        if not names:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for q in names:
            pipe.zcard(self.k("deads", "queue", q))
        pipe.hmget(self.k("deads", "offset"), names)
        replies = self._call("a read", pipe.execute)
        offsets = replies[-1]
        return {q: (int(replies[i]), int(offsets[i] or 0)) for i, q in enumerate(names)}

    def dead_letter_index(self, queue: str) -> tuple[dict[str, int], dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(self.k("deads", "queue", queue), 0, -1, withscores=True)
        pipe.hgetall(self.k("deads", "xids", queue))
        ids, xids = self._call("a read", pipe.execute)
        return (
            {_text(m): int(score) for m, score in ids},
            {_text(x): _text(i) for x, i in xids.items()},
        )

    # -- alerts / metrics ---

    def count_jobs(self, statuses: Sequence[Status | str] | None = None) -> dict[str, int]:
        names = statuses_to_count(statuses)
        actors = self._actors()
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            for actor in actors:
                pipe.zcard(self.prefix + "jobs:" + _paging.index_name(name, actor))
        counts = iter(self._call("a count", pipe.execute) if actors else [])
        return {name: sum(int(next(counts)) for _ in actors) for name in names}

    def stats_minutes(self, first: int, last: int) -> dict[int, dict[str, int]]:
        minutes = range(first, last + 1)
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(self.k("stats", "m", str(minute)))
        found = self._call("a read", pipe.execute)
        return {
            m: {_text(f): int(v) for f, v in fields.items()} for m, fields in zip(minutes, found, strict=True) if fields
        }

    # -- housekeeping ---------------------------------------------------------------------------

    def ping(self) -> None:
        self._call("a ping", self.client.ping)
        if self._refusal is not None:  # it refused writes: answering is not enough
            self._checked_pid = 0
            self._check_topology()

    def close(self) -> None:
        super().close()
        with self._serial_lock:
            if self._serial is not None and self._serial_pid == os.getpid():
                self._serial.disconnect()
            self._serial = None
        if self._client is not None:
            self._client.close()


def _results(raw: bytes | str) -> list[dict[str, Any]]:
    """The library's results; an empty result is ``{}`` (a Lua table may encode as ``[]``)."""
    results = json.loads(raw)
    if not isinstance(results, list):
        return []
    return [r if isinstance(r, dict) else {} for r in results]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
