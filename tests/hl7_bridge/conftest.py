"""Bridge fixtures shared by the inbound and outbound tests."""

from tests.hl7_bridge.test_listener import anyio_backend, bridge, clinic  # noqa: F401 - fixtures
