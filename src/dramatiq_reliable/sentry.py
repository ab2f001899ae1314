"""Sentry context: events sent from a job carry its id, attempt, actor and business keys.

Active only when sentry-sdk is initialised with its Dramatiq integration
(``sentry_sdk.init(dsn, integrations=[DramatiqIntegration()])``, before the broker is built):
that integration gives each message its own scope, in which the bundle sets, before the actor
runs, the tags ``dramatiq_reliable.job_id``, ``dramatiq_reliable.attempt``,
``dramatiq_reliable.actor``, ``dramatiq_reliable.queue`` and ``key.<name>`` for each business
key (from the actor's ``track``), plus a ``dramatiq_reliable`` context with the same values.
Without the integration nothing is set: tags set on a worker thread's scope would leak into
the next job's events.

The check costs a dictionary lookup per job when sentry-sdk is not imported, and a client
lookup otherwise; the integration is looked up once per Sentry client.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .middleware._run import JobRun

#: Sentry drops tag keys longer than this.
MAX_TAG_KEY = 32
#: ... and cuts tag values longer than this.
MAX_TAG_VALUE = 200

#: (the Sentry client last checked, whether the bundle tags its events)
_checked: list[Any] = [None, False]


def _active(sdk: Any) -> bool:
    client = sdk.get_client()
    checked = _checked
    if checked[0] is not client:
        active = False
        if client.is_active():
            try:
                from sentry_sdk.integrations.dramatiq import DramatiqIntegration

                active = client.get_integration(DramatiqIntegration) is not None
            except Exception:  # an sdk without the integration, or without dramatiq support
                active = False
        checked[:] = [client, active]
    return bool(checked[1])


def tag_job(run: JobRun) -> None:
    """Tag the current Sentry scope with the job's id, attempt, actor, queue and business keys."""
    sdk = sys.modules.get("sentry_sdk")
    if sdk is None or not _active(sdk):
        return
    message = run.message
    tags = {
        "dramatiq_reliable.job_id": run.id,
        "dramatiq_reliable.attempt": str(run.attempt),
        "dramatiq_reliable.actor": message.actor_name,
        "dramatiq_reliable.queue": message.queue_name,
    }
    keys = run.keys or {}
    for name, value in keys.items():
        key = f"key.{name}"
        if len(key) <= MAX_TAG_KEY:
            tags[key] = value[:MAX_TAG_VALUE]
    scope = sdk.get_isolation_scope()
    for key, value in tags.items():
        scope.set_tag(key, value)
    scope.set_context(
        "dramatiq_reliable",
        {"job_id": run.id, "attempt": run.attempt, "actor": message.actor_name, "keys": dict(keys)},
    )
