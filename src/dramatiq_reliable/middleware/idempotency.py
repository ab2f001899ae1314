"""Idempotency: a re-run is harmless. Completed keys, leases, unique jobs, step checkpoints."""

from __future__ import annotations

import itertools
import os
import random
import threading
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import SkipMessage

from .. import _validate, metrics
from .._snapshot import signature
from ..actors.context import current_run
from ..actors.once import Checkpoints
from ..errors import ConfigurationError, DuplicateJob, DuplicateSkip, StoreUnavailable
from ..store.base import Store
from ._heartbeat import heartbeat_for
from ._keys import KeyTemplate, actor_key, arguments_key, message_key
from ._redelivery import PUT_BACK_OPTION, REDELIVERED_OPTION, REPLAY_OPTION, may_be_redelivery
from ._run import Claim, JobRun
from .base import Outcome, ReliableMiddleware

if TYPE_CHECKING:
    from .watchdog import Watchdog

#: Seconds a completed key is remembered: 24 hours.
DEFAULT_TTL = 24 * 3600
#: Seconds a lease outlives its last renewal; a dead worker's key frees itself after this.
DEFAULT_LEASE = 60
#: Seconds before a message whose check failed (store unreachable) is tried again.
STORE_ERROR_DELAY = 10
#: Milliseconds a ``unique`` key stays reserved before its enqueue is confirmed.
UNIQUE_PENDING_MS = 60_000

__all__ = ["PUT_BACK_OPTION", "REDELIVERED_OPTION", "REPLAY_OPTION", "Claim", "Idempotency"]

_tokens = itertools.count(1)


class Idempotency(ReliableMiddleware):
    """Makes redeliveries and duplicate sends harmless.

    * **Redelivery protection, always on**: a message whose id already completed is skipped
      and acked (it keeps its ``done`` record, with a "skipped" event); never dead-lettered.
    * ``idempotency_key``: a job whose key already completed is skipped, recorded as
      ``skipped`` with ``duplicate_of`` the job that did the work. Keys are remembered ``ttl``.
    * **Leases**: while a key's job runs it holds a lease, renewed by the process heartbeat
      and released when it ends, so a retry can run; a dead worker's lease expires after
      ``lease``. A second delivery of a key whose lease is held is put back with a delay and
      checked again: not lost, not run concurrently.
    * ``unique=True``: ``send()`` raises :class:`~dramatiq_reliable.DuplicateJob` while a job
      with the same key is queued, delayed, retrying or running; once it has finished (done,
      failed or skipped) the same send is a new job. Uniqueness is only a reservation: without
      ``idempotency_key`` the job is protected against redelivery by its message id, not
      skipped because an earlier job with the same arguments completed.
    * :func:`~dramatiq_reliable.once` checkpoints steps across attempts, and across every
      message with the same ``idempotency_key``.

    Keys are scoped to their actor: the store key is ``<actor>:<rendered template>``.

    When the store cannot be reached, a message is not run unchecked: it is put back with a
    delay (``on_store_error="retry"``, the default). ``on_store_error="run"`` runs it anyway,
    with a warning and the ``idempotency_unchecked_total`` counter.

    Parameters:
      store(Store): where keys and leases are kept.
      ttl(float): seconds a completed key is remembered. Defaults to 24 hours.
      lease(float): seconds a lease outlives its holder's last heartbeat. Defaults to 60.
      on_store_error(str): ``"retry"`` (default) or ``"run"``.

    Actor options:
      idempotency_key(str | callable): a ``str.format`` template over the arguments
        (``"invoice:{order_id}"``), or ``callable(*args, **kwargs) -> str``.
      idempotency_ttl(float): seconds this actor's completed keys are remembered.
      unique(bool): refuse a second ``send()`` while one with this key is queued, delayed,
        retrying or running. Without ``idempotency_key``, the key is the actor and a hash of
        the arguments.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
        on_store_error: str = "retry",
    ) -> None:
        super().__init__(store)
        ttl = _validate.seconds("ttl", ttl)
        lease = _validate.seconds("lease", lease)
        on_store_error = _validate.choice("on_store_error", on_store_error, ("retry", "run"))
        self.ttl = ttl
        self.lease = lease
        self.on_store_error = on_store_error
        self._templates: dict[str, KeyTemplate | None] = {}
        self._held: dict[str, str] = {}
        self._held_lock = threading.Lock()
        #: Seconds between two renewals of the leases this process holds.
        self.interval = max(lease / 3, 0.5)
        self._lease_ms = int(lease * 1000)
        self._beating = 0  # the pid whose heartbeat renews our leases
        #: (id of the broker's middleware list, its size) -> JobState's retention in ms, or 0.
        self._records: tuple[int, int, int] = (0, -1, 0)
        #: (id of the broker's middleware list, its size) -> the Watchdog on this store, if any.
        self._watchdog: tuple[int, int, Watchdog | None] = (0, -1, None)

    @property
    def actor_options(self) -> set[str]:
        return {"idempotency_key", "idempotency_ttl", "unique"}

    # -- declaration ----------------------------------------------------------------------------

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        super().before_declare_actor(broker, actor)
        options = actor.options
        name = actor.actor_name
        template = options.get("idempotency_key")
        self._templates[name] = KeyTemplate(name, actor.fn, template) if template is not None else None
        _validate.flag("unique", options.get("unique", False), where=f"actor {name!r}")
        if options.get("idempotency_ttl") is not None:
            _validate.seconds("idempotency_ttl", options["idempotency_ttl"], where=f"actor {name!r}")

    def declare_metrics(self, broker: Broker) -> None:
        super().declare_metrics(broker)
        metrics.declare("idempotency_leases_lost_total")

    # -- send -----------------------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        actor = broker.actors.get(message.actor_name)
        if actor is None or (not actor.options.get("unique") and self._templates.get(actor.actor_name) is None):
            return
        if self._not_a_send(message):
            return
        key = self.key_of(actor, message)  # raises ConfigurationError for a bad key, before anything runs
        if not actor.options.get("unique"):
            return
        key = self.unique_key_of(actor, message)
        op = {"k": "reserve", "id": message.message_id, "idem": {"key": key, "ttl_ms": UNIQUE_PENDING_MS}}
        slot = self.journal.submit(op, wait=True, retry=False)
        result = slot.result or {}
        if slot.error is not None or "error" in result:
            if self.on_store_error == "run":
                self.logger.warning("Could not check uniqueness of %r (store error); sending anyway.", key)
                metrics.inc("idempotency_unchecked_total", actor=message.actor_name)
                return
            raise StoreUnavailable(f"cannot check that {key!r} is unique: {slot.error or result['error']}")
        if result.get("outcome") == "refused":
            raise DuplicateJob(key, str(result.get("holder")))

    def after_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        actor = broker.actors.get(message.actor_name)
        if actor is None or not actor.options.get("unique") or self._not_a_send(message):
            return
        op = {
            "k": "confirm",
            "id": message.message_id,
            "idem": {"key": self.unique_key_of(actor, message), "ttl_ms": self._ttl_ms(actor)},
        }
        self.journal.submit(op, wait=False, retry=True)

    def _not_a_send(self, message: dramatiq.Message[Any]) -> bool:
        from dramatiq.worker import ConsumerThread

        run = current_run()
        if run is not None and run.id == message.message_id and not run.finished:
            return True  # a retry or a put-back of the running message
        return isinstance(threading.current_thread(), ConsumerThread)

    # -- processing -----------------------------------------------------------------------------

    def on_start(self, broker: Broker, message: MessageProxy, run: JobRun) -> None:
        actor = broker.actors.get(run.actor)
        if actor is None:
            return
        msg = run.msg
        ttl_ms = self._ttl_ms(actor)
        journal = self.store.journal
        try:
            key = self.key_of(actor, msg)
            if actor.options.get("unique"):
                # Freed when this job ends, however it ends (a skipped duplicate included).
                run.reserved = self.unique_key_of(actor, msg)
        except ConfigurationError as exc:
            self.logger.error("Message %r: %s; it is dead-lettered.", run.id, exc)
            message.fail()
            raise SkipMessage(str(exc)) from None
        run.checkpoints = Checkpoints(self.store, key, ttl_ms)
        token = f"{run.id}|{self._holder(broker, run)}|{next(_tokens)}"
        section: dict[str, Any] = {"key": key, "token": token, "lease_ms": self._lease_ms}
        rec = self._templates.get(actor.actor_name) is None and self._record_marks(broker, ttl_ms)
        if rec:
            section.update(rec=1, a=actor.actor_name)
        op = {"k": "claim", "id": run.id, "idem": section}
        if actor.options.get("unique") or self._templates.get(actor.actor_name) is not None:
            self._act_on(broker, message, run, key, journal.submit(op, wait=True, retry=False))
        elif (why := may_be_redelivery(message)) is not None:
            self.logger.debug("Message %r may have run before (%s); checked before it runs.", run.id, why)
            self._act_on(broker, message, run, key, journal.submit(op, wait=True, retry=False))
        else:
            # A first delivery of a job without a key: nothing the store says can change what
            # runs, so it starts now; its lease is taken in the next group-committed write.
            run.claim_slot = journal.submit(op, wait=False, retry=False)
        run.claim = Claim(key, token, ttl_ms, rec)
        with self._held_lock:
            self._held[key] = token
        if self._beating != os.getpid():
            heartbeat_for(self.store).add(self)
            self._beating = os.getpid()

    def _act_on(self, broker: Broker, message: MessageProxy, run: JobRun, key: str, slot: Any) -> None:
        """Run, skip or put back ``message`` per the answer to its start op (returns only to run)."""
        result = (slot.result if slot else None) or {}
        if slot is None or slot.error is not None or "error" in result:
            reason = (slot.error if slot else None) or result.get("error")
            if self.on_store_error == "run":
                self.logger.warning("Message %r runs unchecked: store error (%s).", run.id, reason)
                metrics.inc("idempotency_unchecked_total", actor=run.actor)
                return
            self._put_back(broker, message, run, STORE_ERROR_DELAY * 1000, f"store unavailable ({reason})")
        outcome = result.get("outcome")
        if outcome == "run" and result.get("took"):
            self.logger.warning("Message %r: key %r %s.", run.id, key, result.get("detail"))
        if outcome in ("duplicate", "busy"):
            run.discard(self.store.journal, "start")  # staged by a middleware before this one
        if outcome == "duplicate":
            dup = str(result.get("dup"))
            run.dup = dup
            metrics.inc("idempotent_skips_total", actor=run.actor)
            if dup == run.id:
                self.logger.info("Message %r already completed; skipped.", run.id)
                raise DuplicateSkip(f"job {run.id} already completed")
            self.logger.info("Message %r: key %r was completed by job %r; skipped.", run.id, key, dup)
            raise DuplicateSkip(f"key {key!r} already completed by job {dup}")
        if outcome == "busy":
            # Check again soon, then less and less often, never later than the lease expires.
            tries = int(run.msg.options.get(PUT_BACK_OPTION) or 0)
            delay = min(int(result.get("retry_in", 1000)), 1000 * 2 ** min(tries, 6)) + random.randint(0, 250)
            owner = str(result.get("owner", "")).split("|")[0]
            self._put_back(broker, message, run, delay, f"key {key!r} is held by a running delivery of job {owner}")

    def on_finish(self, broker: Broker, message: MessageProxy, run: JobRun, outcome: Outcome) -> None:
        claim, reserved = run.claim, run.reserved
        slot = run.claim_slot
        if slot is not None and slot.done and (slot.result or {}).get("outcome") == "duplicate":
            self.logger.warning(
                "Message %r ran although its job had completed (%s): a redelivery the broker did not mark.",
                run.id,
                slot.result.get("dup") if slot.result else "?",
            )
        if claim is None and reserved is None:
            return
        section: dict[str, Any] = {"outcome": outcome[0]}
        if claim is not None:
            with self._held_lock:
                if self._held.get(claim.key) == claim.token:
                    del self._held[claim.key]
            section.update(key=claim.key, token=claim.token, ttl_ms=claim.ttl_ms)
            if claim.rec:
                section["rec"] = 1
            if run.once_used:
                section["once"] = 1
        if reserved is not None:
            section["ukey"] = reserved
        run.stage(self.store.journal, "finish", "idem", section)

    def _holder(self, broker: Broker, run: JobRun) -> str:
        """Who holds the leases this process takes, as named in their tokens.

        The Watchdog's process id when a Watchdog shares this store: a delivery that finds the
        lease of a process past its heartbeat deadline takes it over at once. Without one, the
        worker thread's name (such a lease is taken over once it went unrenewed for the
        claimer's ``abandon_after``, at least ``lease / 2``, or expires).
        """
        middleware = broker.middleware
        list_id, size, watchdog = self._watchdog
        if list_id != id(middleware) or size != len(middleware):
            from .watchdog import Watchdog

            found = [m for m in middleware if isinstance(m, Watchdog) and m.store is self.store]
            watchdog = found[0] if found else None
            self._watchdog = (id(middleware), len(middleware), watchdog)
        return run.worker if watchdog is None else watchdog.process_id(broker)

    def _record_marks(self, broker: Broker, ttl_ms: int) -> bool:
        """Whether the job record itself marks a message id (``msg:<id>``) as completed.

        Redelivery protection needs to know that a message id completed. When ``JobState`` on
        the same store keeps finished records at least as long as ``ttl``, its ``done`` index
        already says so: the check reads it and no separate marker is written, which saves
        about 150 bytes of Redis per job. Keys of ``idempotency_key`` always get their marker.
        """
        middleware = broker.middleware
        list_id, size, retention_ms = self._records
        if list_id != id(middleware) or size != len(middleware):
            from .job_state import JobState

            states = [m for m in middleware if isinstance(m, JobState) and m.store is self.store]
            retention_ms = int(states[0].retention * 1000) if states else 0
            self._records = (id(middleware), len(middleware), retention_ms)
        return retention_ms >= ttl_ms

    def _put_back(self, broker: Broker, message: MessageProxy, run: JobRun, delay_ms: int, reason: str) -> None:
        """Enqueue the message again with a delay, then skip (ack) this delivery."""
        run.deferred = reason
        again = message._message.copy(options={PUT_BACK_OPTION: int(message.options.get(PUT_BACK_OPTION) or 0) + 1})
        try:
            broker.enqueue(again, delay=delay_ms)
        except Exception as exc:
            self.logger.error(
                "Message %r could not be put back (%s: %s); it is dead-lettered so it is not lost.",
                message.message_id,
                type(exc).__name__,
                exc,
            )
            message.fail()
            raise SkipMessage(f"{reason}; could not be put back") from None
        self.logger.info("Message %r put back for %d ms: %s.", message.message_id, delay_ms, reason)
        metrics.inc("idempotency_deferred_total", actor=message.actor_name)
        raise SkipMessage(reason)

    # -- the heartbeat --------------------------------------------------------------------------

    def beat_ops(self) -> list[dict[str, Any]]:
        with self._held_lock:
            held = dict(self._held)
        if not held:
            return []
        return [{"k": "renew", "id": "-", "idem": {"leases": held, "lease_ms": int(self.lease * 1000)}}]

    def beat_results(self, results: list[dict[str, Any]] | None, error: BaseException | None) -> None:
        if error is not None:
            self.logger.warning("Could not renew leases: %s", error)
            return
        for result in results or []:
            lost = result.get("lost")
            for key in lost if isinstance(lost, list) else []:
                self.logger.warning("Lost the lease of key %r (expired); another delivery may run it.", key)
                metrics.inc("idempotency_leases_lost_total")

    # -- keys -----------------------------------------------------------------------------------

    def key_of(self, actor: dramatiq.Actor[Any, Any], message: Any) -> str:
        """The key a delivery claims: ``<actor>:<rendered template>``, or ``msg:<id>`` without one.

        Completions, leases and ``dr.once`` checkpoints are kept under it.

        Raises:
          ConfigurationError: the template or callable cannot make a string key from the args.
        """
        template = self._templates.get(actor.actor_name)
        if template is None:
            return message_key(message.message_id)
        bound = signature(actor.fn).bind(message.args, message.kwargs)
        return actor_key(actor.actor_name, template.render(bound, message.args, message.kwargs))

    def unique_key_of(self, actor: dramatiq.Actor[Any, Any], message: Any) -> str:
        """The key a ``unique=True`` send reserves: the actor's idempotency key, or without one
        ``<actor>:<sha1 of the arguments>`` (the same send has the same key).

        Raises:
          ConfigurationError: as :meth:`key_of`.
        """
        if self._templates.get(actor.actor_name) is None:
            return arguments_key(actor.actor_name, message.args, message.kwargs)
        return self.key_of(actor, message)

    def _ttl_ms(self, actor: dramatiq.Actor[Any, Any]) -> int:
        return int(float(actor.options.get("idempotency_ttl", self.ttl)) * 1000)
