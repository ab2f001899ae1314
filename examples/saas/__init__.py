"""A small SaaS app on dramatiq-reliable: a welcome email, an invoice, a nightly report.

* ``examples.saas.settings``: configuration from ``SAAS_*`` environment variables.
* ``examples.saas.integrations``: fake SMTP, billing and data-warehouse services, switched
  from outside the workers through Redis, so every failure path can be shown.
* ``examples.saas.tasks``: the broker, the store and the actors; run the workers with
  ``dramatiq examples.saas.tasks`` and the schedulers with
  ``dramatiq-reliable scheduler examples.saas.tasks`` (from the repository root).
* ``examples.saas.walkthrough``: the operator's minute, step by step, on a real broker.
"""
