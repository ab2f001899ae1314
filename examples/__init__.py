"""Runnable apps built on dramatiq-reliable (``examples.saas``: the SaaS app of docs/operations.md)."""
