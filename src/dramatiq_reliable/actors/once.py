"""``once``: a step of a job that runs at most once across its attempts and duplicate sends."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ..errors import ArgumentsError, ConfigurationError, StoreUnavailable
from ..middleware._control import stop_point
from .context import current_run

if TYPE_CHECKING:
    from ..store.base import Store

T = TypeVar("T")
logger = logging.getLogger("dramatiq_reliable.once")

#: Seconds a step whose function already ran keeps trying to store its result while the store
#: is unreachable (the side effect happened: giving up would run it again on the next attempt).
CHECKPOINT_PATIENCE = 120.0


class Checkpoints(NamedTuple):
    """Where the running job keeps its steps' results (set by the Idempotency middleware).

    ``scope`` is the key the delivery claimed: the actor's idempotency key
    (``<actor>:<rendered>``), so that every message with that key shares the steps, or
    ``msg:<job id>`` for an actor without one.
    """

    store: Store
    scope: str
    #: Milliseconds the results are kept after the last step stored one (the key's ``ttl``).
    ttl_ms: int


def once(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` once per idempotency key: later runs get the stored result.

    Steps belong to the actor's ``idempotency_key`` when it has one: a later attempt, a
    redelivery, or another message with the same key (an order sent twice) gets the stored
    result instead of running ``fn`` again. Without an ``idempotency_key`` they belong to the
    job (its attempts and redeliveries). A job that charges a card and then fails on the email
    retries the email only::

        @dramatiq.actor(idempotency_key="invoice:{order_id}")
        def send_invoice(order_id, customer_id):
            charge = dr.once("charge", billing.charge, order_id)
            dr.once("email", mailer.send_invoice, customer_id, charge["receipt"])

    The result must be JSON (it is stored, and later attempts get it back decoded, so a tuple
    comes back as a list; the first attempt gets the decoded value too). Checkpoints live in
    the Idempotency store for the key's ``ttl`` after the last step stored one, and are
    dropped when a job that used them completes the key (its completion then answers for every
    step; steps no completing job read expire with their ``ttl``). A job
    that failed for good keeps them, so a replay or a new send with the key resumes after its
    last completed step.

    If the store cannot be reached before ``fn`` runs, the step raises :class:`StoreUnavailable`
    and the job is retried later. If it cannot be reached after ``fn`` ran, the step keeps
    trying to store the result for up to ``CHECKPOINT_PATIENCE`` seconds, so the store coming
    back in that time costs no duplicate. What no library can close: a worker killed after
    ``fn`` returned and before its result was stored (a few hundred microseconds) runs it again.

    Raises:
      ConfigurationError: outside a job, or without the Idempotency middleware, or a bad name.
      ArgumentsError: ``fn`` returned something that is not JSON (after it ran).
      StoreUnavailable: the store cannot be reached.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"dr.once needs a step name (a non-empty string), not {name!r}")
    run = current_run()
    if run is None:
        raise ConfigurationError(f"dr.once({name!r}) called outside a job")
    where: Checkpoints | None = run.checkpoints
    if where is None:
        raise ConfigurationError(f"dr.once({name!r}) needs the Idempotency middleware on the broker")
    store, scope, ttl_ms = where
    run.once_used = True  # its completion drops the key's steps
    stop_point()  # a cancelled job stops here
    stored = store.once_get(scope, name)
    if stored is not None:
        return json.loads(stored)
    result = fn(*args, **kwargs)
    try:
        text = json.dumps(result, separators=(",", ":"))
    except (TypeError, ValueError):
        raise ArgumentsError(
            f"dr.once({name!r}): {getattr(fn, '__name__', fn)!s} returned a {type(result).__name__}, which is "
            "not JSON; the step ran but its result cannot be checkpointed (return plain values)"
        ) from None
    _keep(store, run.id, scope, name, text, ttl_ms)
    return json.loads(text)


def _keep(store: Store, job_id: str, scope: str, name: str, text: str, ttl_ms: int) -> None:
    """Store a step's result, waiting out a store outage for up to ``CHECKPOINT_PATIENCE``."""
    deadline = time.monotonic() + CHECKPOINT_PATIENCE
    pause = 0.2
    while True:
        try:
            store.once_set(scope, name, text, ttl_ms)
            return
        except StoreUnavailable as exc:
            if time.monotonic() + pause > deadline:
                logger.error(
                    "Job %r: step %r ran but its result could not be stored (%s); a retry will run it again.",
                    job_id,
                    name,
                    exc,
                )
                raise
            if pause == 0.2:
                logger.warning(
                    "Job %r: step %r ran but the store is unreachable (%s); keeping its result until it answers.",
                    job_id,
                    name,
                    exc,
                )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
