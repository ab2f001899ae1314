"""The op schema: what a batch passed to :meth:`Store.apply` holds, typed.

An op is the transition of one job: ``{"k": kind, "id": job id, <section>: {...}, ...}``
(``id`` is ``"-"`` for the per-process kinds). An op the journal buffered while the store was
unreachable also carries ``at_ms``, when it was made (by its sender's clock: it dates events
for people and decides nothing): the ``job`` and ``st`` handlers date it then, and place its
events in the history in time order. Each middleware contributes its own section to
the op of a message (``job`` for JobState, ``idem`` for Idempotency, ``wd`` for the Watchdog,
``dead`` for DeadLetters, ``al`` for Alerts, ``st`` for the counters, ``cron`` for the
scheduler, ``ctl`` for operator controls). The library (``store/lua``) registers a handler per (kind, section), with a
priority and the section's fields; :data:`KINDS` below is the same table, and
``tests/contract/test_op_schema.py`` holds it against what the loaded library registered.

Atomicity: the library checks every section of an op against its fields (names, types, none
missing, none unknown) before it applies any; a refused op changes nothing and its result is
``{"error": why, "section": name}``. Handlers then run in priority order (lowest first) and
share an outcome, so that, for instance, JobState records ``skipped`` when Idempotency found a
duplicate in the same op. Their writes wait in the op's write queue until every handler
returned: a handler that raises leaves nothing of the op applied, and the result is
``{"error": why, "section": name}`` too (see ``lua/00_prelude.lua``).

Units are in the names: ``*_ms`` fields are milliseconds, durations or (``enq_ms``,
``due_ms``, ``next_ms``, ``dead_ms``, ``fire_ms``, ``at_ms``) times since the epoch. Times
that decide leases, liveness and retention are the store's (``TIME``), never the sender's;
``at_ms`` (an alert's occurrence, the sender's clock) is only compared with the batch's
``sent_ms`` (the same clock). Values are never ``None``: absent fields are left out (Lua's
cjson turns ``null`` into a truthy sentinel, and the check refuses it).
"""

from __future__ import annotations

from typing import Any, TypedDict

Op = dict[str, Any]


class Batch(TypedDict, total=False):
    """What :meth:`Store.apply` takes."""

    ops: list[Op]
    #: status -> retention (ms): records that entered a terminal status longer ago are removed.
    retention_ms: dict[str, int]
    #: records removed by that cleanup at most.
    limit: int
    #: status -> ms a record in that status is kept at most (the key's expiry).
    ttl_ms: dict[str, int]
    #: the sender's clock when it sent the batch (compared with ``at_ms`` only).
    sent_ms: int
    #: run the batch at this time instead of the store's clock (tests and tools that drive time).
    now_ms: int


# -- job (JobState) ----------------------------------------------------------------------------


class JobEvent(TypedDict, total=False):
    """An event only: ``due``, ``dead_import``, ``replay_failed``, ``dead_purge``, ``dead_forget``."""

    detail: str
    #: events kept in the record's history.
    hist: int


class JobCreation(JobEvent, total=False):
    """The record's creation fields (used when it does not exist yet)."""

    actor: str
    queue: str
    maxr: int
    enq_ms: int
    #: the redacted arguments, as JSON text.
    args: str
    keys: dict[str, str]


class EnqueueJob(JobCreation, total=False):
    due_ms: int


class _StartJob(TypedDict):
    att: int


class StartJob(_StartJob, JobCreation, total=False):
    worker: str


class _BeganJob(TypedDict):
    att: int


class BeganJob(_BeganJob, total=False):
    """The start of an attempt, carried by its end when the journal collapsed the two."""

    worker: str
    at_ms: int


class _FinishJob(TypedDict):
    #: done, retrying, failed, skipped or deferred.
    outcome: str


class FinishJob(_FinishJob, JobCreation, total=False):
    att: int
    err: dict[str, str]
    dup: str
    next_ms: int
    began: BeganJob


class _ReplayJob(TypedDict):
    detail: str


class ReplayJob(_ReplayJob, total=False):
    hist: int


# -- idem (Idempotency) ------------------------------------------------------------------------


class _ClaimIdem(TypedDict):
    #: ``<actor>:<rendered>`` or ``msg:<id>``.
    key: str
    token: str
    lease_ms: int


class ClaimIdem(_ClaimIdem, total=False):
    #: 1: JobState's ``done`` index marks the message id (no separate marker).
    rec: int
    #: the actor (whose ``done`` index ``rec`` reads).
    a: str


class _FinishIdem(TypedDict):
    outcome: str


class FinishIdem(_FinishIdem, total=False):
    key: str
    token: str
    ttl_ms: int
    rec: int
    #: the key a ``unique`` job reserved.
    ukey: str
    #: 1: ``dr.once`` read or stored steps of ``key`` in this delivery (``done`` drops them).
    once: int


class UnreserveIdem(TypedDict):
    key: str


class ReserveIdem(UnreserveIdem):
    ttl_ms: int


class RenewIdem(TypedDict):
    #: key -> lease token
    leases: dict[str, str]
    lease_ms: int


# -- wd (Watchdog) -----------------------------------------------------------------------------


class ProcWd(TypedDict):
    #: ``host:pid:token``
    proc: str


class _BeatWd(ProcWd):
    abandon_ms: int


class BeatWd(_BeatWd, total=False):
    info: dict[str, Any]
    #: the sweep lock's duration; present when the process may sweep.
    sweep_ms: int
    #: how long dead processes are kept.
    keep_ms: int
    hist: int


class StartWd(ProcWd, total=False):
    #: only until the process's first beat registered it.
    abandon_ms: int
    a: str
    q: str
    #: the lease key and token the job holds.
    lk: str
    lt: str


class StuckWd(ProcWd, total=False):
    att: int
    stack: list[dict[str, Any]]
    detail: str
    hist: int


class ByeWd(ProcWd, total=False):
    hist: int


class RecoveredWd(TypedDict):
    procs: list[str]


# -- dead (DeadLetters) ------------------------------------------------------------------------


class _FinishDead(TypedDict):
    actor: str
    queue: str
    retention_ms: int


class FinishDead(_FinishDead, total=False):
    att: int
    maxr: int
    err: dict[str, str]
    msg: str
    #: ``b64`` when ``msg`` is base64.
    enc: str
    #: the Redis broker's message id.
    xid: str


class _ImportDead(FinishDead):
    dead_ms: int


class ImportDead(_ImportDead, total=False):
    #: why the entry cannot be decoded.
    bad: str


class QueuesDead(TypedDict):
    queues: list[str]


class NoDead(TypedDict):
    """No fields: ``replayed``, ``dead_purge``."""


class ForgetDead(TypedDict):
    older_than_ms: int


class SyncDead(TypedDict):
    queue: str
    offset: int


class UnlockDead(TypedDict):
    queue: str
    token: str


class LockDead(UnlockDead):
    ttl_ms: int


# -- al (Alerts), st (counters) ----------------------------------------------------------------


class _AlertAl(TypedDict):
    kind: str
    actor: str
    window_ms: int


class AlertAl(_AlertAl, total=False):
    etype: str
    queue: str
    msg: str
    keys: dict[str, str]
    at_ms: int
    quiet: bool


class DueAl(TypedDict, total=False):
    limit: int


class _FinishSt(TypedDict):
    #: actor and outcome
    a: str
    o: str


class FinishSt(_FinishSt, total=False):
    q: str
    wait_ms: int
    retention_ms: int


# -- cron (the scheduler) ----------------------------------------------------------------------


class _Tick(TypedDict):
    name: str
    fire_ms: int
    by: str


class ClaimCron(_Tick):
    job: str
    lease_ms: int
    grace_ms: int
    keep_ms: int


class ConfirmCron(_Tick):
    #: sent or skipped
    st: str


class ReleaseCron(_Tick):
    retry_ms: int


class ReadCron(TypedDict):
    names: list[str]


class SweepCron(ReadCron):
    by: str
    lease_ms: int
    limit: int


# -- ctl (operator controls) -------------------------------------------------------------------


class _BeatCtl(TypedDict):
    #: the last log sequence number this process read.
    after: int


class BeatCtl(_BeatCtl, total=False):
    max: int


class _PauseCtl(TypedDict):
    #: ``actor:<name>`` or ``queue:<name>``
    target: str
    on: bool


class PauseCtl(_PauseCtl, total=False):
    by: str


class NoCtl(TypedDict):
    """No fields: ``paused``."""


class ByCtl(TypedDict, total=False):
    """``cancel``, ``retry_now``: who asked."""

    by: str
    hist: int


class WorkersCtl(TypedDict, total=False):
    #: jobs listed per process at most.
    max: int


# -- shards of a store on a Redis Cluster (``store/cluster.py``, ``lua/90_shards.lua``) ---------


class _ShardSweepWd(TypedDict):
    #: processes found dead (or saying goodbye, ``bye``)
    procs: list[str]


class ShardSweepWd(_ShardSweepWd, total=False):
    bye: bool
    #: also run the sweep's housekeeping in the shard (expired dead letters; processes dead
    #: longer than ``keep_ms`` forgotten).
    house: bool
    keep_ms: int
    hist: int


class ReviveWd(ProcWd, total=False):
    hist: int


class TakeoverIdem(TypedDict):
    key: str
    token: str
    #: the lease token of the dead holder
    owner: str
    lease_ms: int


class ShardReserveIdem(ReserveIdem):
    #: the job, ended, that held the key
    holder: str


class RegisterWd(ProcWd):
    abandon_ms: int


class ShardCtl(TypedDict):
    #: ``c`` (cancel) or ``n`` (retry now)
    kind: str


#: kind -> section -> (priority, fields): every handler the library registers. A kind whose
#: section has more than one handler (operator controls read ``start``'s and ``finish``'s ``job``
#: at priorities 10 and 25 too) lists the one that declares the fields.
KINDS: dict[str, dict[str, tuple[int, type]]] = {
    # A send: the record as ``queued`` (or the missing fields of an existing one).
    "enqueue": {"job": (20, EnqueueJob)},
    # ``unique=True``: reserve the key (``reserved``), or ``refused`` + ``holder``.
    "reserve": {"idem": (10, ReserveIdem)},
    # The reserving send failed: release the key.
    "unreserve": {"idem": (10, UnreserveIdem)},
    # The reserving send happened: hold the key until the job ends.
    "confirm": {"idem": (10, ReserveIdem)},
    # Before a delivery runs: ``duplicate`` (+ ``dup``), ``busy`` (+ ``retry_in`` ms, ``owner``) or ``run``.
    "claim": {"idem": (10, ClaimIdem)},
    # ``running``; the process runs it.
    "start": {"job": (20, StartJob), "wd": (30, StartWd)},
    # The end of an attempt: complete the key, the record's status, the process no longer runs
    # it, keep the dead letter, throttle the alert, count it in its minute.
    "finish": {
        "idem": (10, FinishIdem),
        "job": (20, FinishJob),
        "wd": (30, ProcWd),
        "dead": (40, FinishDead),
        "al": (50, AlertAl),
        "st": (70, FinishSt),
    },
    # A retry's delay is over: ``retrying`` -> ``queued``.
    "due": {"job": (20, JobEvent)},
    # The heartbeat: extend leases (``lost``), the process's deadline (result ``now_ms``: the
    # store's clock), the fleet's sweep if it wins the lock (``sweep``), ``revived``.
    "renew": {"idem": (10, RenewIdem)},
    "beat": {"wd": (30, BeatWd)},
    "stuck": {"wd": (30, StuckWd)},
    "bye": {"wd": (30, ByeWd)},
    "recovered": {"wd": (30, RecoveredWd)},
    # Dead letters (``lua/40_dead.lua``).
    "dead_queue": {"dead": (40, QueuesDead)},
    "dead_import": {"job": (20, JobEvent), "dead": (40, ImportDead)},
    "replay": {"job": (20, ReplayJob)},
    "replayed": {"dead": (40, NoDead)},
    "replay_failed": {"job": (20, JobEvent)},
    "dead_purge": {"job": (20, JobEvent), "dead": (40, NoDead)},
    "dead_forget": {"dead": (15, ForgetDead), "job": (20, JobEvent)},
    "dead_sync": {"dead": (40, SyncDead)},
    "dead_lock": {"dead": (40, LockDead)},
    "dead_unlock": {"dead": (40, UnlockDead)},
    # Alerts: an occurrence outside a job's final write; the summaries due.
    "alert": {"al": (50, AlertAl)},
    "alerts_due": {"al": (50, DueAl)},
    # Cron ticks (``lua/60_cron.lua``).
    "cron_claim": {"cron": (10, ClaimCron)},
    "cron_confirm": {"cron": (10, ConfirmCron)},
    "cron_release": {"cron": (10, ReleaseCron)},
    "cron_sweep": {"cron": (10, SweepCron)},
    "cron_read": {"cron": (10, ReadCron)},
    # Operator controls (``lua/80_control.lua``): a worker's view of them in its heartbeat, pause
    # and resume, cancel, retry now, and the fleet (``result now_ms``: the store's clock).
    "ctl_beat": {"ctl": (80, BeatCtl)},
    "pause": {"ctl": (80, PauseCtl)},
    "paused": {"ctl": (80, NoCtl)},
    "cancel": {"ctl": (80, ByCtl)},
    "retry_now": {"ctl": (80, ByCtl)},
    "workers": {"ctl": (80, WorkersCtl)},
    # A store on a Redis Cluster (``store/cluster.py``): the shard's part of the fleet's sweep
    # and of a goodbye (``abandoned``), the fleet's part of a goodbye with jobs still running
    # and of a job's start before its process's first beat,
    # the fleet's log entry of a cancel or retry-now applied in a shard (``seq``).
    "shard_sweep": {"wd": (30, ShardSweepWd)},
    "shard_bury": {"wd": (30, ProcWd)},
    "shard_register": {"wd": (30, RegisterWd)},
    "shard_revive": {"wd": (30, ReviveWd)},
    # ... a claim's takeover of the lease of a process the fleet knows is gone, a reservation
    # taken from a job that ended (their records are in other shards than the key).
    "shard_takeover": {"idem": (10, TakeoverIdem)},
    "shard_reserve": {"idem": (10, ShardReserveIdem)},
    "shard_ctl": {"ctl": (80, ShardCtl)},
}


def compact(section: dict[str, Any]) -> dict[str, Any]:
    """The section without its ``None`` values."""
    return {k: v for k, v in section.items() if v is not None}
