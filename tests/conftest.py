"""Fixtures shared by several test modules."""

from __future__ import annotations

import errno

import pytest
from rtde_server import FakeRTDEServer, random_loopback

#: Controller versions: a CB3 (125 Hz) and an e-series (500 Hz).
CB3 = (3, 15, 7, 0)


def _started_on_free_loopback(build, started: list):
    """``build(address)`` then ``start()`` on random 127.x addresses until one is free."""
    for _ in range(10):
        server = build(random_loopback())
        try:
            server.start()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            raise
        started.append(server)
        return server
    pytest.fail("no free loopback address for the fixed UR ports")


@pytest.fixture
def make_server():
    """Start FakeRTDEServers on free loopback addresses (port 30004); closed at teardown."""
    servers: list[FakeRTDEServer] = []

    def make(controller_version=CB3) -> FakeRTDEServer:
        return _started_on_free_loopback(
            lambda host: FakeRTDEServer(host, controller_version=controller_version), servers)

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def make_controller():
    """Start emulated UR controllers (sim.ur_controller) on free loopback addresses."""
    from sim.ur_controller import ControllerProcess

    controllers: list[ControllerProcess] = []

    def make(model: str = "ur5", **kwargs) -> ControllerProcess:
        return _started_on_free_loopback(
            lambda host: ControllerProcess(host, model, **kwargs), controllers)

    yield make
    for controller in controllers:
        controller.close()


@pytest.fixture
def clients():
    """Connect the installed ur_rtde's clients to an emulated controller; disconnect at teardown.

    ``clients(kind, host, *args)`` with kind ``receive``, ``control`` or ``dashboard``.
    Teardown runs before the controller's (the fixture is requested after it) and ignores
    a client whose link is already gone.
    """
    import dashboard_client
    import rtde_control
    import rtde_receive

    made = []

    def connect(kind, host, *args):
        client = {"receive": rtde_receive.RTDEReceiveInterface,
                  "control": rtde_control.RTDEControlInterface,
                  "dashboard": dashboard_client.DashboardClient}[kind](host, *args)
        if kind == "dashboard":
            client.connect()
        made.append(client)
        return client

    yield connect
    for client in reversed(made):
        try:
            client.disconnect()
        except RuntimeError:
            pass
