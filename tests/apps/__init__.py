"""Dramatiq apps for the integration tests, configured by ``DR_TEST_*`` variables (see conftest)."""
