"""``once``: a step of a job that runs at most once across its attempts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ArgumentsError, ConfigurationError
from .context import current_run

T = TypeVar("T")


def once(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` once per job: later attempts get the stored result.

    A job that charges a card and then fails on the email retries the email only::

        @dramatiq.actor(idempotency_key="invoice:{order_id}")
        def send_invoice(order_id, customer_id):
            charge = dr.once("charge", billing.charge, order_id)
            dr.once("email", mailer.send_invoice, customer_id, charge["receipt"])

    The result must be JSON (it is stored, and later attempts get it back decoded, so a tuple
    comes back as a list; the first attempt gets the decoded value too). Checkpoints live in
    the Idempotency store for its ``ttl`` and are dropped when the job completes. If the store
    cannot be reached the step raises :class:`StoreUnavailable` and the job is retried later;
    a step whose worker dies after ``fn`` returned but before the result was stored runs again.

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
    idem = run.data.get("idem_middleware")
    if idem is None:
        raise ConfigurationError(f"dr.once({name!r}) needs the Idempotency middleware on the broker")
    store, ttl_ms = idem
    stored = store.once_get(run.id, name)
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
    store.once_set(run.id, name, text, ttl_ms)
    return json.loads(text)
