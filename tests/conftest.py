"""Fixtures shared by several test modules."""

from __future__ import annotations

import errno

import pytest
from rtde_server import FakeRTDEServer, random_loopback

#: Controller versions: a CB3 (125 Hz) and an e-series (500 Hz).
CB3 = (3, 15, 7, 0)


@pytest.fixture
def make_server():
    """Start FakeRTDEServers on free loopback addresses (port 30004); closed at teardown."""
    servers: list[FakeRTDEServer] = []

    def make(controller_version=CB3) -> FakeRTDEServer:
        for _ in range(10):
            server = FakeRTDEServer(random_loopback(), controller_version=controller_version)
            try:
                server.start()
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            servers.append(server)
            return server
        pytest.fail("no free loopback address for port 30004")

    yield make
    for server in servers:
        server.close()
