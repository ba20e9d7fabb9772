"""A fake UR controller's RTDE endpoint with served values set by the test, for ur_rtde tests.

``FakeRTDEServer`` listens on ``(host, 30004)`` with the product's RTDE server
(:class:`sim.rtde_server.RTDEServer`, which documents the protocol), so the real
``rtde_receive.RTDEReceiveInterface(host)`` from ur_rtde connects to it over loopback and
reads the values set with :meth:`FakeRTDEServer.set_state`. Unlike the emulated controller
(:mod:`sim.ur_controller`) nothing moves: the served values are the test's, and faults are on
demand (a paused stream, dropped connections).

The clock runs at the controller rate (125 Hz for major version <= 3 (CB3), else 500 Hz)
while a client streams; it stops with :meth:`FakeRTDEServer.pause_stream`.

The endpoint runs in a child process (a fresh interpreter running this file), driven by
``FakeRTDEServer`` over a socket pair: ur_rtde's Python bindings hold the GIL in the
``RTDEReceiveInterface`` constructor (handshake and wait for the first data package) and in its
destructor, so server threads in the client's interpreter would deadlock the handshake.

Port 30004 is hard-coded in ur_rtde, so tests give every server its own loopback address
(all of 127.0.0.0/8 is loopback on Linux), e.g. ``127.23.5.9``.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from sim.rtde_server import RTDE_PORT, RTDEServer, coerce_output, max_frequency, zero_outputs

__all__ = ["RTDE_PORT", "FakeRTDEServer", "random_loopback"]

_START_TIMEOUT_S = 30.0  # for the server process to import and bind

_DEFAULTS: dict[str, Any] = {
    "robot_mode": 7,  # ROBOT_MODE_RUNNING
    "safety_mode": 1,  # SAFETY_MODE_NORMAL
    "safety_status": 1,  # NORMAL
    "safety_status_bits": 1,  # bit 0: is normal mode
    "robot_status_bits": 1,  # bit 0: is power on
    "runtime_state": 1,  # STOPPED (no program running)
    "joint_mode": (253,) * 6,  # JOINT_RUNNING_MODE
    "speed_scaling": 1.0,
    "target_speed_fraction": 1.0,
}


class _Controller:
    """Served values, the clock and the tick loop; runs in the server process."""

    def __init__(self, host: str, controller_version: tuple[int, int, int, int]):
        self.server = RTDEServer(host, controller_version)
        self.frequency = self.server.max_frequency
        self._lock = threading.Lock()
        self._values = zero_outputs()
        self._values.update(_DEFAULTS)
        self._clock_base = 0.0  # s, controller time at the last set timestamp
        self._clock_ticks = 0  # ticks since the base
        self._paused = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick_loop, name="fake-rtde-tick",
                                        daemon=True)

    def start(self) -> None:
        """Bind and listen on ``(host, 30004)``; tick in a background thread."""
        self.server.start()
        self._thread.start()

    def close(self) -> None:
        """Stop ticking; close the client connections (FIN) and the listening socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.server.close()

    def set_state(self, **named: Any) -> None:
        """Validate and set output variables; ``timestamp`` restarts the clock from its value."""
        updates = {name: coerce_output(name, v) for name, v in named.items() if v is not None}
        with self._lock:
            if "timestamp" in updates:
                self._clock_base = updates.pop("timestamp")
                self._clock_ticks = 0
            self._values.update(updates)

    def get_state(self, name: str) -> Any:
        """Value currently served for output variable ``name``."""
        with self._lock:
            return self._now_locked() if name == "timestamp" else self._values[name]

    def set_paused(self, paused: bool) -> None:
        """Stop (True) or resume (False) sending data packages and the clock."""
        with self._lock:
            self._paused = paused

    def drop_clients(self, graceful: bool) -> None:
        """Close every client connection, with FIN if ``graceful`` else RST; wait for it."""
        self.server.drop_clients(graceful)

    def stats(self) -> dict[str, Any]:
        """Frequency (Hz), timestamp (s), packages sent and open connections."""
        with self._lock:
            stats = {"frequency": self.frequency, "timestamp": self._now_locked()}
        return {**stats, **self.server.stats()}

    def _now_locked(self) -> float:
        return self._clock_base + self._clock_ticks / self.frequency

    def _tick_loop(self) -> None:
        period = 1.0 / self.frequency
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -0.1:  # far behind (loaded machine): skip packages, do not burst
                next_t = time.monotonic()
            with self._lock:
                if self._paused or not self.server.streaming:
                    continue
                values = dict(self._values)
                values["timestamp"] = self._now_locked()
            self.server.publish(values)
            with self._lock:
                self._clock_ticks += 1


def _serve(conn: Connection, host: str, controller_version: tuple[int, int, int, int]) -> None:
    """Server process: run a :class:`_Controller`, answering the parent's calls on ``conn``.

    Ends on the parent's "close", or when the parent process is gone (``conn`` at EOF).
    """
    controller = _Controller(host, controller_version)
    try:
        controller.start()
    except OSError as e:
        conn.send((False, e))
        return
    conn.send((True, None))
    try:
        while True:
            try:
                method, args, kwargs = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone: do not outlive it
            if method == "close":
                break
            try:
                conn.send((True, getattr(controller, method)(*args, **kwargs)))
            except Exception as e:  # e.g. ValueError from set_state: raised in the parent
                conn.send((False, e))
    finally:
        controller.close()
        try:
            conn.send((True, None))  # acknowledges "close"
        except OSError:
            pass
        conn.close()


_rng = random.SystemRandom()


def random_loopback() -> str:
    """A random address in 127/8 (loopback on Linux), so each server can have port 30004."""
    return f"127.{_rng.randint(1, 254)}.{_rng.randint(0, 255)}.{_rng.randint(1, 254)}"


class FakeRTDEServer:
    """A fake UR controller's RTDE endpoint on (host, 30004).

    The endpoint runs in a child process (started by :meth:`start`, ended by :meth:`close` or
    when this process exits): ur_rtde's Python bindings hold the GIL while
    ``RTDEReceiveInterface(...)`` and ``reconnect()`` do the handshake, so a server thread in
    the same interpreter could never answer it. Every method here is a quick call to that
    process.

    The server serves every output variable of the UR RTDE guide; by default doubles are
    0.0, vectors zeros, ``robot_mode`` 7 (RUNNING), ``safety_mode`` 1 (NORMAL),
    ``safety_status_bits`` 1 (normal mode), ``robot_status_bits`` 1 (power on),
    ``runtime_state`` 1 (STOPPED), ``joint_mode`` 253 (RUNNING), ``speed_scaling`` and
    ``target_speed_fraction`` 1.0; ``timestamp`` is the controller clock (:attr:`timestamp`).

    Example::

        with FakeRTDEServer("127.10.0.1") as server:
            server.set_state(q=[0.0, -1.57, 1.57, 0.0, 0.0, 0.0])
            rtde_r = rtde_receive.RTDEReceiveInterface("127.10.0.1")
            ...
            rtde_r.disconnect()

    Args:
        host: IPv4 address to listen on, port 30004.
        controller_version: ``(major, minor, bugfix, build)`` reported to clients. ur_rtde
            treats major <= 3 as CB3 (125 Hz) and larger as e-series (500 Hz), and picks the
            variables of its default recipe from the version.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        controller_version: Sequence[int] = (3, 15, 7, 0),
    ):
        version = tuple(int(v) for v in controller_version)
        if len(version) != 4 or not all(0 <= v < 2**32 for v in version):
            raise ValueError(f"controller_version must be 4 uint32s, got {controller_version!r}")
        self.host = host
        self.controller_version: tuple[int, int, int, int] = version  # type: ignore[assignment]
        self.max_frequency = max_frequency(version)
        """Highest data rate of the modelled controller, Hz (125 CB3, 500 e-series)."""
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._call_lock = threading.Lock()

    def start(self) -> None:
        """Bind and listen on ``(host, 30004)`` and serve, in a background process.

        Raises:
            OSError: the address cannot be bound (e.g. ``EADDRINUSE``).
            RuntimeError: already started, or the server process failed to start.
        """
        if self._process is not None:
            raise RuntimeError("FakeRTDEServer already started")
        # A fresh interpreter running this file: no fork of a threaded process, and unlike
        # multiprocessing's spawn, no re-import of the caller's __main__.
        ours, theirs = socket.socketpair()
        with ours, theirs:
            process = subprocess.Popen(
                [sys.executable, __file__, str(theirs.fileno()), self.host]
                + [str(v) for v in self.controller_version],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
            conn = Connection(os.dup(ours.fileno()))
        try:
            if not conn.poll(_START_TIMEOUT_S):
                raise RuntimeError(f"fake RTDE server process silent for {_START_TIMEOUT_S} s")
            ok, error = conn.recv()
        except BaseException as e:
            process.kill()
            process.wait()
            conn.close()
            if isinstance(e, EOFError):
                raise RuntimeError("fake RTDE server process died while starting") from None
            raise
        if not ok:
            process.wait()
            conn.close()
            raise error
        self._process, self._conn = process, conn

    def close(self) -> None:
        """Stop the server: close all its sockets (clients see FIN) and end its process."""
        process, conn = self._process, self._conn
        if process is None or conn is None:
            return
        with self._call_lock:
            try:
                conn.send(("close", (), {}))
                if conn.poll(5.0):
                    conn.recv()
            except (OSError, EOFError):
                pass
            conn.close()
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._process = self._conn = None

    def __enter__(self) -> FakeRTDEServer:
        """Start the server (if not started yet) and return it."""
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the server."""
        self.close()

    def set_state(
        self,
        q: Sequence[float] | None = None,
        qd: Sequence[float] | None = None,
        safety_status_bits: int | None = None,
        robot_mode: int | None = None,
        safety_mode: int | None = None,
        **variables: Any,
    ) -> None:
        """Set values served from the next data package on (thread-safe); None keeps a value.

        Args:
            q: ``actual_q``, joint positions, rad (6 values).
            qd: ``actual_qd``, joint velocities, rad/s (6 values).
            safety_status_bits: bit 0 normal mode, 1 reduced, 2 protective stopped,
                3 recovery, 4 safeguard stopped, 5 system e-stop, 6 robot e-stop,
                7 emergency stopped, 8 violation, 9 fault, 10 stopped due to safety.
            robot_mode: e.g. 3 POWER_OFF, 5 IDLE, 7 RUNNING.
            safety_mode: e.g. 1 NORMAL, 3 PROTECTIVE_STOP, 7 ROBOT_EMERGENCY_STOP.
            **variables: any other output variable by its RTDE name, in the units of the RTDE
                guide (e.g. ``actual_TCP_pose`` in m and rad, ``target_q`` in rad). A
                ``timestamp`` (s) restarts the controller clock from that value.

        Raises:
            ValueError: an unknown variable name, or a value that does not fit its type.
        """
        named = {
            "actual_q": q,
            "actual_qd": qd,
            "safety_status_bits": safety_status_bits,
            "robot_mode": robot_mode,
            "safety_mode": safety_mode,
        }
        named.update(variables)
        self._call("set_state", **{k: _plain(v) for k, v in named.items()})

    def get_state(self, name: str) -> Any:
        """Return the value now served for output variable ``name`` (vectors as tuples)."""
        return self._call("get_state", name)

    def pause_stream(self) -> None:
        """Stop sending data packages (and the controller clock); connections stay open.

        Models a controller that stops updating without closing the connection.
        """
        self._call("set_paused", True)

    def resume_stream(self) -> None:
        """Resume sending data packages after :meth:`pause_stream`."""
        self._call("set_paused", False)

    def drop_clients(self, graceful: bool = False) -> None:
        """Close all client connections at once and keep listening; returns once closed.

        Models a cable pull seen by the peer as a torn-down connection, or a controller
        reboot.

        Args:
            graceful: close with FIN (a peer closing its socket) instead of the default RST
                (connection reset).
        """
        self._call("drop_clients", graceful)

    @property
    def frequency(self) -> float:
        """The controller rate, Hz: packages go out at it (or every n-th tick of it)."""
        return self._call("stats")["frequency"]

    @property
    def timestamp(self) -> float:
        """Controller time served in ``timestamp``, s; advances 1/frequency per package."""
        return self._call("stats")["timestamp"]

    @property
    def packages_sent(self) -> int:
        """Number of data packages sent so far, over all clients."""
        return self._call("stats")["packages_sent"]

    @property
    def client_count(self) -> int:
        """Number of open client connections."""
        return self._call("stats")["client_count"]

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("FakeRTDEServer is not started")
        with self._call_lock:
            self._conn.send((method, args, kwargs))
            ok, result = self._conn.recv()
        if not ok:
            raise result
        return result


def _plain(value: Any) -> Any:
    """Turn array-likes (e.g. numpy arrays) into lists so they pickle without numpy."""
    return value.tolist() if hasattr(value, "tolist") else value


if __name__ == "__main__":  # the server process started by FakeRTDEServer.start()
    _fd, _host, *_version = sys.argv[1:]
    _serve(Connection(int(_fd)), _host, tuple(int(v) for v in _version))  # type: ignore[arg-type]
