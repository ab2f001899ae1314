"""Idempotency keys: templates checked when the actor is declared, rendered at send and at run.

A key in the store is scoped to its actor, ``<actor>:<rendered template>``, so two actors whose
templates render the same string (``"{order_id}"``) never share completions, leases or
checkpoints. A delivery of an actor without a template is keyed by its message id,
``msg:<id>``.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._snapshot import signature
from ..errors import ConfigurationError

#: The longest key accepted (characters).
MAX_KEY = 512


def actor_key(actor_name: str, rendered: str) -> str:
    """The store key of an actor's rendered key: ``<actor>:<rendered>``."""
    return f"{actor_name}:{rendered}"


def message_key(message_id: str) -> str:
    """The store key of a delivery of an actor without ``idempotency_key``: ``msg:<id>``."""
    return f"msg:{message_id}"


def arguments_key(actor_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The key ``unique=True`` reserves for an actor without ``idempotency_key``.

    ``<actor>:<sha1 of the JSON arguments>``: the same send (same arguments) has the same key.
    """
    text = json.dumps([list(args), dict(kwargs)], sort_keys=True, default=str)
    return actor_key(actor_name, hashlib.sha1(text.encode()).hexdigest())


class KeyTemplate:
    """An actor's ``idempotency_key``: a ``str.format`` template or a callable.

    Raises:
      ConfigurationError: at construction, for a template naming an argument the actor does
        not take, or an option that is neither a string nor a callable.
    """

    def __init__(self, actor_name: str, fn: Any, template: str | Callable[..., Any]) -> None:
        self.actor_name = actor_name
        self.template = template
        if callable(template):
            return
        if not isinstance(template, str) or not template:
            raise ConfigurationError(
                f"actor {actor_name!r}: idempotency_key must be a non-empty str.format template "
                f"or a callable, not {template!r}"
            )
        sig = signature(fn)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise ConfigurationError(f"actor {actor_name!r}: malformed idempotency_key {template!r}: {exc}") from None
        for field in fields:
            root = field.split(".", 1)[0].split("[", 1)[0]
            if not root or root.isdigit():
                raise ConfigurationError(
                    f"actor {actor_name!r}: idempotency_key {template!r} must name arguments, e.g. '{{order_id}}'"
                )
            if root not in sig.names and not sig.varkw:
                raise ConfigurationError(
                    f"actor {actor_name!r}: idempotency_key {template!r} names {root!r}, which is not one "
                    f"of its arguments ({', '.join(sig.names) or 'none'})"
                )

    def render(self, bound: Mapping[str, Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The key for these arguments.

        Raises:
          ConfigurationError: an argument the template needs is missing, or the callable did not
            return a non-empty string.
        """
        if callable(self.template):
            try:
                key = self.template(*args, **kwargs)
            except Exception as exc:
                raise ConfigurationError(
                    f"actor {self.actor_name!r}: idempotency_key callable failed: {type(exc).__name__}: {exc}"
                ) from None
        else:
            try:
                key = self.template.format(**bound)
            except (KeyError, IndexError, AttributeError) as exc:
                raise ConfigurationError(
                    f"actor {self.actor_name!r}: idempotency_key {self.template!r} needs {exc}, "
                    "which this message does not have"
                ) from None
        if not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"actor {self.actor_name!r}: idempotency_key must produce a non-empty string, not {key!r}"
            )
        if len(key) > MAX_KEY:
            raise ConfigurationError(f"actor {self.actor_name!r}: idempotency key longer than {MAX_KEY} characters")
        return key
