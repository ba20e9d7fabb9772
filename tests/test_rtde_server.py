"""The fake RTDE controller (tests/rtde_server.py) against the real ur_rtde RTDEReceiveInterface.

Besides checking the fake, these tests pin down how ur_rtde 1.6.5's RTDEReceiveInterface
behaves when the controller stalls or goes away:

* stream stalls (TCP connection open, no data packages): the getters keep returning the last
  values, ``getTimestamp()`` stops, no error, and ``isConnected()`` stays True. After 2.5 s
  without data the receive thread's read deadline closes the socket and ``isConnected()``
  turns False (the stale values are still returned, still no exception).
* connection closed by the controller (RST or FIN): ``isConnected()`` is False within a few
  ms; the getters return the stale values. ``reconnect()`` works against a listening controller
  and raises RuntimeError if nothing listens. If the controller accepts the connection but
  streams no data, ``reconnect()`` never returns.
* ``reconnect()`` must wait until ``isConnected()`` is False: called right after a drop, while
  the old receive thread still runs, it hung or crashed the process (SIGSEGV) in probes, so no
  test here does that. ``disconnect()`` during a stall blocks until the 2.5 s deadline.
* constructor: RuntimeError if nothing listens; if the controller accepts but streams no data
  it returns after 2.5 s without an exception, with ``isConnected()`` False and empty or zero
  values (``getActualQ() == []``).
* ``disconnect()`` and the destructor each sleep 0.5 s. The constructor and the destructor hold
  the GIL; the methods (``reconnect()`` and ``disconnect()`` included) release it.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import rtde_receive
from polling import wait_for
from rtde_server import RTDE_PORT, FakeRTDEServer, random_loopback

CB3 = (3, 15, 7, 0)
E_SERIES = (5, 11, 2, 0)
STALL_TIMEOUT_S = 2.5  # ur_rtde's read deadline in the receive thread


@pytest.fixture
def connect():
    """Connect a real RTDEReceiveInterface; disconnected at teardown."""
    clients = []

    def conn(host: str, **kwargs):
        client = rtde_receive.RTDEReceiveInterface(host, **kwargs)
        clients.append(client)
        return client

    yield conn
    for client in clients:
        client.disconnect()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_package(sock: socket.socket) -> tuple[str, bytes]:
    size, ptype = struct.unpack(">HB", recv_exactly(sock, 3))
    return chr(ptype), recv_exactly(sock, size - 3)


def package(ptype: str, payload: bytes = b"") -> bytes:
    return struct.pack(">HB", 3 + len(payload), ord(ptype)) + payload


def distinct_timestamps(client, duration_s: float) -> list[float]:
    seen = [client.getTimestamp()]
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        ts = client.getTimestamp()
        if ts != seen[-1]:
            seen.append(ts)
        time.sleep(0.0002)
    return seen


# --------------------------------------------------------------------------- connect and read


def test_real_client_reads_served_state(make_server, connect):
    server = make_server()
    q = [0.1, -1.2, 1.3, -0.4, 1.5, -2.6]
    qd = [0.01, -0.02, 0.03, -0.04, 0.05, -0.06]
    server.set_state(q=q, qd=qd)
    client = connect(server.host)

    assert client.isConnected()
    assert client.getActualQ() == pytest.approx(q, rel=0, abs=1e-12)
    assert client.getActualQd() == pytest.approx(qd, rel=0, abs=1e-12)
    assert client.getRobotMode() == 7  # RUNNING
    assert client.getSafetyMode() == 1  # NORMAL
    assert client.getSafetyStatusBits() == 1  # normal mode
    assert not client.isProtectiveStopped() and not client.isEmergencyStopped()
    assert client.getTargetQ() == [0.0] * 6
    assert client.getJointMode() == [253] * 6
    assert client.getPayloadCog() == [0.0] * 3  # a VECTOR3D in the recipe: offsets line up
    assert client.getOutputDoubleRegister(19) == 0.0  # the last variable of the recipe
    assert server.frequency == 125.0
    assert server.client_count == 1

    new_q = [-0.5, 0.25, 0.125, 3.0, -3.0, 1e-9]
    server.set_state(q=new_q, actual_TCP_pose=[0.4, -0.1, 0.3, 3.14, 0.0, 0.0])
    assert wait_for(lambda: client.getActualQ() == pytest.approx(new_q, rel=0, abs=1e-12))
    assert client.getActualTCPPose() == pytest.approx([0.4, -0.1, 0.3, 3.14, 0.0, 0.0])

    t0 = client.getTimestamp()
    assert wait_for(lambda: client.getTimestamp() > t0)
    assert client.isConnected()


def test_safety_status_bits(make_server, connect):
    server = make_server()
    client = connect(server.host)

    server.set_state(safety_status_bits=1 << 2, safety_mode=3)  # protective stop
    assert wait_for(lambda: client.getSafetyStatusBits() == 1 << 2)
    assert client.isProtectiveStopped()
    assert not client.isEmergencyStopped()
    assert client.getSafetyMode() == 3

    # ur_rtde's isEmergencyStopped() tests bit 7 (IS_EMERGENCY_STOPPED) only, not the system
    # (5) or robot (6) emergency stop bits.
    server.set_state(safety_status_bits=(1 << 5) | (1 << 6))
    assert wait_for(lambda: client.getSafetyStatusBits() == 0b1100000)
    assert not client.isEmergencyStopped() and not client.isProtectiveStopped()

    server.set_state(safety_status_bits=(1 << 7) | (1 << 6), safety_mode=7)
    assert wait_for(lambda: client.isEmergencyStopped())
    assert not client.isProtectiveStopped()

    server.set_state(safety_status_bits=1, safety_mode=1)
    assert wait_for(lambda: not client.isEmergencyStopped())


@pytest.mark.parametrize(("version", "hz"), [(CB3, 125.0), (E_SERIES, 500.0)], ids=["cb3", "e"])
def test_data_rate_follows_controller_version(make_server, connect, version, hz):
    server = make_server(controller_version=version)
    client = connect(server.host)
    assert server.frequency == hz

    seen = distinct_timestamps(client, 0.3)
    assert len(seen) > 5
    steps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    # Every change is a whole number of controller periods (the client may skip a package when
    # two arrive together), and consecutive packages differ by exactly one period.
    for step in steps:
        periods = step * hz
        assert periods == pytest.approx(round(periods), abs=1e-6) and round(periods) >= 1
    assert min(steps) == pytest.approx(1.0 / hz, rel=0, abs=1e-9)


# --------------------------------------------------------------------------- stalls and drops


def test_paused_stream_leaves_stale_values_without_error(make_server, connect):
    server = make_server()
    q_old, q_new = [0.1] * 6, [0.2] * 6
    server.set_state(q=q_old)
    client = connect(server.host)

    server.pause_stream()
    time.sleep(0.05)  # packages in flight land
    ts = client.getTimestamp()
    # the client holds the last package sent; the server clock stopped one period later
    assert ts == pytest.approx(server.timestamp - 1 / 125, rel=0, abs=1e-9)
    server.set_state(q=q_new)
    time.sleep(0.3)
    assert client.getTimestamp() == ts  # the controller clock looks frozen ...
    assert client.getActualQ() == q_old  # ... values are stale ...
    assert client.isConnected()  # ... and nothing says so

    server.resume_stream()
    assert wait_for(lambda: client.getActualQ() == q_new)
    assert client.getTimestamp() > ts
    assert client.isConnected()


def test_stall_longer_than_read_deadline_disconnects(make_server, connect):
    server = make_server()
    server.set_state(q=[0.3] * 6)
    client = connect(server.host)

    server.pause_stream()
    t0 = time.monotonic()
    assert wait_for(lambda: not client.isConnected(), timeout=STALL_TIMEOUT_S + 1.5)
    assert STALL_TIMEOUT_S - 0.5 < time.monotonic() - t0 < STALL_TIMEOUT_S + 1.5
    assert client.getActualQ() == [0.3] * 6  # stale, no exception
    assert wait_for(lambda: server.client_count == 0)  # the client closed its socket


@pytest.mark.parametrize("graceful", [False, True], ids=["rst", "fin"])
def test_dropped_connection_then_reconnect(make_server, connect, graceful):
    server = make_server()
    server.set_state(q=[1.0] * 6)
    client = connect(server.host)
    ts = client.getTimestamp()

    server.drop_clients(graceful=graceful)
    assert wait_for(lambda: not client.isConnected(), timeout=1.0)
    assert client.getActualQ() == [1.0] * 6  # stale values, no exception
    stale_ts = client.getTimestamp()
    assert stale_ts >= ts
    server.set_state(q=[2.0] * 6)
    time.sleep(0.05)
    assert client.getTimestamp() == stale_ts

    assert client.reconnect() is True  # the server still listens
    assert client.isConnected()
    assert client.getActualQ() == [2.0] * 6  # reconnect() waits for the first package
    assert wait_for(lambda: client.getTimestamp() > stale_ts)
    assert server.client_count == 1

    server.close()
    assert wait_for(lambda: not client.isConnected(), timeout=1.0)
    with pytest.raises(RuntimeError, match="Could not connect"):
        client.reconnect()


def test_reconnect_to_a_silent_controller_never_returns(make_server):
    server = make_server()
    code = textwrap.dedent(
        """
        import sys, time, rtde_receive
        client = rtde_receive.RTDEReceiveInterface(sys.argv[1])
        print("connected", flush=True)
        sys.stdin.readline()
        while client.isConnected():  # reconnect() only once the old receive thread ended
            time.sleep(0.001)
        print("reconnecting", flush=True)
        print("reconnected", client.reconnect(), flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, server.host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "connected"
        server.pause_stream()
        server.drop_clients()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "reconnecting"
        # The handshake succeeds, no data follows, the receive thread gives up after 2.5 s,
        # and reconnect() keeps waiting for a first package that can no longer arrive.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=STALL_TIMEOUT_S + 1.0)
        assert server.client_count == 0  # the client's socket is closed meanwhile
    finally:
        proc.kill()
        proc.wait()


def test_constructor_against_a_silent_controller_returns_disconnected(make_server, connect):
    server = make_server()
    server.pause_stream()
    t0 = time.monotonic()
    client = connect(server.host)  # no exception
    assert STALL_TIMEOUT_S - 0.5 < time.monotonic() - t0 < STALL_TIMEOUT_S + 1.5
    assert not client.isConnected()
    assert client.getActualQ() == []
    assert client.getTimestamp() == 0.0


def test_nothing_listening_raises_runtime_error():
    host = random_loopback()
    with pytest.raises(RuntimeError, match="Could not connect"):
        rtde_receive.RTDEReceiveInterface(host)


def test_client_process_exit_while_connected_does_not_hang(make_server):
    server = make_server()
    code = (
        "import sys, rtde_receive\n"
        "client = rtde_receive.RTDEReceiveInterface(sys.argv[1])\n"
        "print('connected', client.isConnected())\n"
    )  # exits without disconnect()
    proc = subprocess.run(
        [sys.executable, "-c", code, server.host], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "connected True"
    assert wait_for(lambda: server.client_count == 0)


# --------------------------------------------------------------------------- protocol edges


def test_unknown_variable_is_not_found(make_server, connect):
    server = make_server()
    with socket.create_connection((server.host, RTDE_PORT), timeout=2.0) as sock:
        sock.sendall(package("V", struct.pack(">H", 2)))
        assert read_package(sock) == ("V", b"\x01")
        sock.sendall(package("v"))
        assert read_package(sock) == ("v", struct.pack(">4I", *CB3))
        sock.sendall(package("O", struct.pack(">d", 125.0) + b"timestamp,no_such_variable,"))
        assert read_package(sock) == ("O", b"\x00DOUBLE,NOT_FOUND")
        sock.sendall(package("S"))  # no valid recipe: start refused
        assert read_package(sock) == ("S", b"\x00")
        sock.sendall(package("O", struct.pack(">d", 125.0) + b"timestamp,actual_q"))
        assert read_package(sock) == ("O", b"\x01DOUBLE,VECTOR6D")
        sock.sendall(package("S"))
        assert read_package(sock) == ("S", b"\x01")
        ptype, payload = read_package(sock)
        assert ptype == "U" and len(payload) == 1 + 8 + 48 and payload[0] == 1

    # ur_rtde 1.6 turns NOT_FOUND into an exception from the constructor
    with pytest.raises(RuntimeError, match="no_such_variable"):
        rtde_receive.RTDEReceiveInterface(server.host, -1.0, ["timestamp", "no_such_variable"])
    client = connect(server.host, variables=["timestamp", "actual_q"])
    assert client.getActualQ() == [0.0] * 6


def test_malformed_input_does_not_break_the_server(make_server, connect):
    server = make_server()
    with socket.create_connection((server.host, RTDE_PORT), timeout=2.0) as sock:
        sock.sendall(package("Z"))  # unknown type
        assert read_package(sock)[0] == "M"
        sock.sendall(package("V", b"\x02"))  # truncated
        assert read_package(sock)[0] == "M"
        sock.sendall(package("V", struct.pack(">H", 1)))  # unsupported protocol version
        assert read_package(sock) == ("V", b"\x00")
        sock.sendall(package("O", b"\x00" * 5))  # no room for the frequency
        assert read_package(sock)[0] == "M"
        sock.sendall(package("O", struct.pack(">d", 125.0) + b"\xff\xfe"))  # not ASCII
        ptype, payload = read_package(sock)
        assert ptype == "M" and b"ASCII" in payload
        huge = struct.pack(">d", 125.0) + b"actual_q," * 2000  # data would not fit a package
        sock.sendall(package("O", huge))
        assert read_package(sock)[0] == "M"
        sock.sendall(struct.pack(">HB", 1, ord("U")))  # size below the header: unrecoverable
        assert read_package(sock)[0] == "M"
        with pytest.raises(EOFError):
            read_package(sock)  # that connection is closed ...

    client = connect(server.host)  # ... and the server still serves
    assert client.isConnected() and client.getRobotMode() == 7


def test_set_state_validates():
    server = FakeRTDEServer(random_loopback())
    server.start()
    try:
        with pytest.raises(ValueError, match="unknown"):
            server.set_state(no_such_variable=1)
        with pytest.raises(ValueError, match="actual_q"):
            server.set_state(q=[0.0] * 5)
        with pytest.raises(ValueError, match="robot_mode"):
            server.set_state(robot_mode=2**31)
        server.set_state(q=range(6), timestamp=100.0, output_int_register_12=-5)
        assert server.get_state("actual_q") == (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
        assert server.get_state("output_int_register_12") == -5
        assert server.timestamp == 100.0  # no client: the clock does not run
        assert server.packages_sent == 0
    finally:
        server.close()
