"""Scheduling fixtures shared by the $find and $hold/$book tests."""

from tests.scheduling.test_find import app_client, cfg  # noqa: F401 - re-exported fixtures
