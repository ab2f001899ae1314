"""The op schema: what a batch passed to :meth:`Store.apply` holds.

An op is the transition of one job: ``{"k": kind, "id": job id, <section>: {...}, ...}``.
Each middleware contributes its own section to the op of a message (``job`` for JobState,
``idem`` for Idempotency, …); the store runs, for each op, the handlers of its kind in a fixed
priority order, and a handler runs only when the op carries its section. Handlers of one op
share an outcome (``duplicate``, ``busy``, ``refused``) so that, for instance, JobState records
``skipped`` when Idempotency found a duplicate in the same op.

Kinds and sections (priority in brackets):

``enqueue``   ``job`` [20]: create the record as ``queued`` (fields below), or fill the missing
              fields of an existing one without changing its status.
``reserve``   ``idem`` [10]: ``unique=True``: reserve the key, or answer ``refused`` + ``holder``.
``unreserve`` ``idem`` [10]: release a reservation whose enqueue failed.
``claim``     ``idem`` [10]: before a delivery runs: answer ``duplicate`` (+ ``dup``, the job that
              completed the key), ``busy`` (+ ``retry_in`` ms, ``owner``) or ``run`` (lease taken).
``start``     ``job`` [20]: ``running`` (a "redelivered" event if it was running already).
``finish``    ``idem`` [10]: complete the key (dropping its checkpoints), release the lease
              and, unless retrying or deferred, the unique key;
              ``job`` [20]: ``done``/``retrying``/``failed``/``skipped``, or ``deferred`` (put
              back without running: an event, the status stays).
``due``       ``job`` [20]: a retry's delay is over: ``retrying`` → ``queued``.

Watchdog kinds (section ``wd`` [30]; ``id`` is ``"-"`` for the per-process ones):

``beat``      the process's deadline, what it is (``info``), and the fleet's sweep if it wins
              the lock: answers ``sweep`` {``abandoned``, ``dead``, ``pending``, ``bids``},
              ``revived`` (+ ``back``, ``recovered``) for a process found dead earlier.
``start``     (with the job's other sections) the process runs the job; ``finish``: no more.
``stuck``     the job runs past its ``stuck_after``: ``stuck`` with its thread's ``stack``.
``bye``       the process stops; jobs it still runs are ``abandoned``.
``recovered`` the broker messages of these dead processes were put back.

``wd`` section fields: ``proc`` (``host:pid:token``), ``ab`` (abandon_after, ms), ``a``/``q``
(actor, queue), ``info``, ``sweep`` (lock ms), ``keep`` (ms dead processes are kept), ``att``,
``stack``, ``detail``, ``hist``, ``procs``.
Dead letters (``lua/40_dead.lua``; ``finish`` also carries ``dl`` [40]: keep the dead letter):

``dead_queue``    ``dl`` [40]: remember queue names (``queues``).
``dead_import``   ``job`` [20]: a non-terminal record → ``failed``; ``dl`` [40]: keep an entry
                  found in the broker (or add a broker id to a known one; ``known`` in result).
``replay``        ``job`` [20]: ``failed`` → ``queued``, attempts reset (``requeued`` in result).
``replayed``      ``dl`` [40]: the broker moved it: drop the dead letter.
``replay_failed`` ``job`` [20]: the broker did not move it: ``queued`` → ``failed``.
``dead_purge``    ``job`` [20]: a "purged" event; ``dl`` [40]: drop it (``removed``).
``dead_forget``   ``dl`` [15]: drop it if dead before ``before`` ms; ``job`` [20]: event.
``dead_sync``     ``dl`` [40]: store a queue's reconciliation ``offset``.
``dead_lock``     ``dl`` [40]: take a queue's lock (``ok``, ``holder``); ``dead_unlock``: free it.

``dl`` section fields: ``actor queue att maxr err msg enc xid ret`` (ms kept), ``dead`` (ms,
imports), ``bad`` (why malformed), ``queues``, ``before``, ``offset``, ``token``, ``ttl``.

Counters (``lua/70_stats.lua``; ``finish`` also carries ``st`` [70]: count the job's end in
its minute, for the support page's charts): ``a`` (actor), ``q`` (queue), ``o`` (outcome),
``w`` (ms the message waited in its queue), ``ret`` (ms the minute is kept, default 25 h).

``job`` section fields: ``actor queue maxr enq args keys`` (creation fields, used when the
record does not exist yet), ``att`` (attempt, 1-based), ``worker``, ``due``/``next`` (ms),
``outcome``, ``err`` (``{type, message, traceback}``), ``dup``, ``detail`` (event text),
``hist`` (events kept), ``began`` (``finish`` only: ``{att, worker, at}``, the attempt's start,
carried by its end when the journal collapsed the two during a store outage).

Any op may carry ``at`` (ms): when it was made, set on the writes the journal buffered during a
store outage. The ``job`` handlers then use it for the event's time (placed in the history in
time order), ``start`` and ``fin``, instead of the batch's ``now``.

``idem`` section fields: ``key`` (the claimed key: ``<actor>:<rendered>`` or ``msg:<id>``),
``token`` (lease owner), ``lease`` / ``ttl`` (ms), ``ukey`` (the key a ``unique`` job reserved),
``outcome``.

Values are never ``None``: absent fields are left out (Lua's cjson turns ``null`` into a
truthy sentinel).
"""

from __future__ import annotations

from typing import Any

Op = dict[str, Any]


def compact(section: dict[str, Any]) -> dict[str, Any]:
    """The section without its ``None`` values."""
    return {k: v for k, v in section.items() if v is not None}
