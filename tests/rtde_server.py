"""A fake UR controller that speaks the real RTDE protocol, for tests of ur_rtde clients.

``FakeRTDEServer`` listens on ``(host, 30004)`` and answers the RTDE handshake the way a UR
controller does, so the real ``rtde_receive.RTDEReceiveInterface(host)`` from ur_rtde connects
to it over loopback and reads the values set with :meth:`FakeRTDEServer.set_state`.

Protocol (RTDE version 2; everything big-endian). Each package is a header ``uint16 size``
(header included) + ``uint8 type``, then the payload:

* ``V`` request protocol version: ``uint16 version`` -> ``uint8 accepted``. Only version 2 is
  accepted (ur_rtde asks for 2); all packages are read as version 2, requested or not.
* ``v`` get controller version: empty -> ``uint32 major, minor, bugfix, build``.
* ``O`` setup outputs: ``double frequency`` + comma-separated variable names ->
  ``uint8 recipe id`` + comma-separated type names (``DOUBLE``, ``VECTOR6D``, ``INT32``, ...).
  A name this server does not know is answered ``NOT_FOUND`` and the recipe id is 0, as a real
  controller does; ur_rtde 1.6 then raises ``RuntimeError`` from its constructor. Every output
  variable ``RTDEReceiveInterface`` asks for by default (for any controller version) is known.
* ``I`` setup inputs: comma-separated names -> ``uint8 recipe id`` + types (``NOT_FOUND`` for
  unknown names). Input data packages from the client are accepted and ignored.
* ``S`` start / ``P`` pause: empty -> ``uint8 accepted``. Start fails (0) without an output
  recipe.
* ``U`` data package, sent by the server after ``S`` at the recipe frequency:
  ``uint8 recipe id`` + the recipe's values packed in order.
* ``M`` text message: sent by the server instead of a reply when a package is malformed or of
  an unknown type (``uint8 len, message, uint8 len, source, uint8 warning level``).

Simplifications: all clients share one controller clock and one send rate, the frequency of
the most recent output recipe (clamped to the controller maximum: 125 Hz for major version
<= 3 (CB3), else 500 Hz). A header announcing a size below 3 bytes cannot be resynchronised, so
the server closes that one connection; any other bad input gets an ``M`` reply and the
connection stays up. No error in a client's input stops the server.

The endpoint runs in a child process (a fresh interpreter running this file), driven by
``FakeRTDEServer`` over a socket pair: ur_rtde's Python bindings hold the GIL in the
``RTDEReceiveInterface`` constructor (handshake and wait for the first data package) and in its
destructor, so server threads in the client's interpreter would deadlock the handshake.

Port 30004 is hard-coded in ur_rtde, so tests give every server its own loopback address
(all of 127.0.0.0/8 is loopback on Linux), e.g. ``127.23.5.9``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["INPUT_TYPES", "OUTPUT_TYPES", "RTDE_PORT", "FakeRTDEServer", "random_loopback"]

log = logging.getLogger(__name__)

RTDE_PORT = 30004
"""TCP port of the RTDE interface (hard-coded in ur_rtde)."""

_HEADER = struct.Struct(">HB")
_START_TIMEOUT_S = 30.0  # for the server process to import and bind
_PROTOCOL_VERSION = 2

# Package types (ASCII codes).
_REQUEST_PROTOCOL_VERSION = ord("V")
_GET_URCONTROL_VERSION = ord("v")
_TEXT_MESSAGE = ord("M")
_DATA_PACKAGE = ord("U")
_SETUP_OUTPUTS = ord("O")
_SETUP_INPUTS = ord("I")
_START = ord("S")
_PAUSE = ord("P")

_WARNING_ERROR = 1  # text message warning level (0 exception, 1 error, 2 warning, 3 info)

# struct format of each RTDE type name
_FORMATS = {
    "BOOL": "?",
    "UINT8": "B",
    "UINT32": "I",
    "UINT64": "Q",
    "INT32": "i",
    "DOUBLE": "d",
    "VECTOR3D": "3d",
    "VECTOR6D": "6d",
    "VECTOR6INT32": "6i",
    "VECTOR6UINT32": "6I",
}


def _output_types() -> dict[str, str]:
    """Output variable name -> RTDE type name (from the UR RTDE guide)."""
    types = dict.fromkeys(
        [
            "target_q", "target_qd", "target_qdd", "target_current", "target_moment",
            "actual_q", "actual_qd", "actual_current", "actual_current_window",
            "joint_control_output", "actual_TCP_pose", "actual_TCP_speed", "actual_TCP_force",
            "target_TCP_pose", "target_TCP_speed", "joint_temperatures", "actual_joint_voltage",
            "payload_inertia", "ft_raw_wrench",
        ],
        "VECTOR6D",
    )  # fmt: skip
    types.update(
        dict.fromkeys(
            ["actual_tool_accelerometer", "elbow_position", "elbow_velocity", "payload_cog"],
            "VECTOR3D",
        )
    )
    types.update(
        dict.fromkeys(
            [
                "timestamp", "actual_execution_time", "speed_scaling", "target_speed_fraction",
                "actual_momentum", "actual_main_voltage", "actual_robot_voltage",
                "actual_robot_current", "standard_analog_input0", "standard_analog_input1",
                "standard_analog_output0", "standard_analog_output1", "io_current",
                "euromap67_24V_voltage", "euromap67_24V_current", "tool_analog_input0",
                "tool_analog_input1", "tool_output_current", "tool_temperature",
                "tcp_force_scalar", "payload", "joint_position_deviation_ratio",
                "collision_detection_ratio",
            ],
            "DOUBLE",
        )
    )  # fmt: skip
    types.update(
        dict.fromkeys(
            [
                "runtime_state", "robot_status_bits", "safety_status_bits", "analog_io_types",
                "euromap67_input_bits", "euromap67_output_bits", "tool_mode",
                "tool_analog_input_types", "output_bit_registers0_to_31",
                "output_bit_registers32_to_63", "input_bit_registers0_to_31",
                "input_bit_registers32_to_63", "script_control_line", "time_scale_source",
            ],
            "UINT32",
        )
    )  # fmt: skip
    types.update(dict.fromkeys(["robot_mode", "safety_mode", "safety_status"], "INT32"))
    types["tool_output_voltage"] = "INT32"
    types.update(
        dict.fromkeys(["actual_digital_input_bits", "actual_digital_output_bits"], "UINT64")
    )
    types.update(
        dict.fromkeys(
            ["tool_output_mode", "tool_digital_output0_mode", "tool_digital_output1_mode"], "UINT8"
        )
    )
    types["joint_mode"] = "VECTOR6INT32"
    for i in range(48):
        for io in ("output", "input"):
            types[f"{io}_int_register_{i}"] = "INT32"
            types[f"{io}_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        types[f"output_bit_register_{i}"] = "BOOL"
        types[f"input_bit_register_{i}"] = "BOOL"
    return types


def _input_types() -> dict[str, str]:
    """Input variable name -> RTDE type name (the part of the UR RTDE guide ur_rtde uses)."""
    types = dict.fromkeys(
        [
            "standard_digital_output_mask", "standard_digital_output",
            "configurable_digital_output_mask", "configurable_digital_output",
            "tool_digital_output_mask", "tool_digital_output", "standard_analog_output_mask",
            "standard_analog_output_type",
        ],
        "UINT8",
    )  # fmt: skip
    types.update(
        {
            "speed_slider_mask": "UINT32",
            "speed_slider_fraction": "DOUBLE",
            "standard_analog_output_0": "DOUBLE",
            "standard_analog_output_1": "DOUBLE",
            "input_bit_registers0_to_31": "UINT32",
            "input_bit_registers32_to_63": "UINT32",
            "external_force_torque": "VECTOR6D",
        }
    )
    for i in range(48):
        types[f"input_int_register_{i}"] = "INT32"
        types[f"input_double_register_{i}"] = "DOUBLE"
    for i in range(64, 128):
        types[f"input_bit_register_{i}"] = "BOOL"
    return types


OUTPUT_TYPES: dict[str, str] = _output_types()
"""Every output variable the server can serve, with its RTDE type name."""

INPUT_TYPES: dict[str, str] = _input_types()
"""Input variables the server accepts in an input recipe, with their RTDE type names."""

_ZERO = {"BOOL": False, "UINT8": 0, "UINT32": 0, "UINT64": 0, "INT32": 0, "DOUBLE": 0.0}
_ZERO.update({"VECTOR3D": (0.0,) * 3, "VECTOR6D": (0.0,) * 6})
_ZERO.update({"VECTOR6INT32": (0,) * 6, "VECTOR6UINT32": (0,) * 6})

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


def _coerce(name: str, value: Any) -> Any:
    """Check ``value`` against the RTDE type of output variable ``name``; return it packable."""
    kind = OUTPUT_TYPES[name]
    fmt = _FORMATS[kind]
    try:
        if kind.startswith("VECTOR"):
            cast = float if kind.endswith("D") else int
            coerced: Any = tuple(cast(x) for x in value)
            struct.pack(">" + fmt, *coerced)
        else:
            coerced = {"DOUBLE": float, "BOOL": bool}.get(kind, int)(value)
            struct.pack(">" + fmt, coerced)
    except (TypeError, ValueError, struct.error) as e:
        raise ValueError(f"{name} ({kind}): cannot serve {value!r}: {e}") from None
    return coerced


class _Malformed(Exception):
    """A package the server cannot act on; answered with a text message."""


class _Recipe:
    """An output recipe: the variables of one data package, in order, and how to pack them."""

    def __init__(self, recipe_id: int, names: list[str]):
        self.id = recipe_id
        self.names = names
        self.struct = struct.Struct(">B" + "".join(_FORMATS[OUTPUT_TYPES[n]] for n in names))

    def pack(self, values: dict[str, Any]) -> bytes:
        flat: list[Any] = [self.id]
        for name in self.names:
            value = values[name]
            if isinstance(value, tuple):
                flat.extend(value)
            else:
                flat.append(value)
        return self.struct.pack(*flat)


class _Client:
    """One RTDE connection: its socket, negotiated state and serving thread."""

    def __init__(self, sock: socket.socket, addr: Any):
        self.sock = sock
        self.addr = addr
        self.send_lock = threading.Lock()
        self.closed = False
        self.next_recipe_id = 1
        self.recipe: _Recipe | None = None
        self.started = False
        self.thread: threading.Thread | None = None

    def send(self, ptype: int, payload: bytes = b"") -> bool:
        """Send one package; False (and the connection aborted) if it could not be sent."""
        data = _HEADER.pack(_HEADER.size + len(payload), ptype) + payload
        with self.send_lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError as e:
                log.debug("fake RTDE: send to %s failed: %s", self.addr, e)
                self.abort(reset=False)
                return False

    def abort(self, reset: bool) -> None:
        """Make the serving thread close this connection (with a TCP RST if ``reset``)."""
        self.closed = True
        try:
            if reset:  # linger 0: close() sends RST instead of FIN
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)  # wakes recv()
        except OSError:
            pass


class _Controller:
    """The RTDE endpoint itself; runs in the server process (see :class:`FakeRTDEServer`)."""

    def __init__(self, host: str, controller_version: tuple[int, int, int, int]):
        self.host = host
        self.controller_version = controller_version
        self.max_frequency = _max_frequency(controller_version)
        self._lock = threading.Lock()
        self._values = {name: _ZERO[kind] for name, kind in OUTPUT_TYPES.items()}
        self._values.update(_DEFAULTS)
        self._frequency = self.max_frequency
        self._clock_base = 0.0  # s, controller time at the last frequency change
        self._clock_ticks = 0  # packages ticks since the base
        self._packages_sent = 0
        self._paused = False
        self._clients: list[_Client] = []
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Bind and listen on ``(host, 30004)``; serve in background threads."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, RTDE_PORT))
            listener.listen(8)
            listener.settimeout(0.1)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        for target, name in ((self._accept_loop, "accept"), (self._tick_loop, "tick")):
            thread = threading.Thread(target=target, name=f"fake-rtde-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Close the client connections (FIN) and the listening socket; stop the threads."""
        self._stop.set()
        self.drop_clients(graceful=True)
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()

    def set_state(self, **named: Any) -> None:
        """Validate and set output variables; ``timestamp`` restarts the clock from its value."""
        unknown = sorted(set(named) - set(OUTPUT_TYPES))
        if unknown:
            raise ValueError(f"unknown RTDE output variables: {unknown}")
        updates = {name: _coerce(name, v) for name, v in named.items() if v is not None}
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
        """Stop (True) or resume (False) sending data packages."""
        with self._lock:
            self._paused = paused

    def drop_clients(self, graceful: bool) -> None:
        """Close every client connection, with FIN if ``graceful`` else RST; wait for it."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.abort(reset=not graceful)
        for client in clients:
            if client.thread is not None:
                client.thread.join(timeout=2.0)

    def stats(self) -> dict[str, Any]:
        """Frequency (Hz), timestamp (s), packages sent and open connections, at one instant."""
        with self._lock:
            return {
                "frequency": self._frequency,
                "timestamp": self._now_locked(),
                "packages_sent": self._packages_sent,
                "client_count": len(self._clients),
            }

    # ----------------------------------------------------------------- internals

    def _now_locked(self) -> float:
        return self._clock_base + self._clock_ticks / self._frequency

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if not self._stop.is_set():
                    log.warning("fake RTDE: accept failed: %s", e)
                    time.sleep(0.05)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(0.5)
            client = _Client(sock, addr)
            client.thread = threading.Thread(
                target=self._serve_client, args=(client,), name="fake-rtde-client", daemon=True
            )
            with self._lock:
                self._clients.append(client)
            client.thread.start()

    def _serve_client(self, client: _Client) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set() and not client.closed:
                try:
                    chunk = client.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= _HEADER.size:
                    size, ptype = _HEADER.unpack_from(buf)
                    if size < _HEADER.size:
                        log.warning("fake RTDE: bad package size %d from %s", size, client.addr)
                        client.send(_TEXT_MESSAGE, _text(f"bad package size {size}"))
                        return
                    if len(buf) < size:
                        break
                    payload = bytes(buf[_HEADER.size : size])
                    del buf[:size]
                    try:
                        self._handle(client, ptype, payload)
                    except _Malformed as e:
                        log.warning("fake RTDE: %s from %s", e, client.addr)
                        client.send(_TEXT_MESSAGE, _text(str(e)))
        except Exception:  # never let a client kill the server
            log.exception("fake RTDE: error serving %s", client.addr)
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            with client.send_lock:
                client.closed = True
                client.sock.close()

    def _handle(self, client: _Client, ptype: int, payload: bytes) -> None:
        if ptype != _DATA_PACKAGE:
            log.debug(
                "fake RTDE: %r package, %d bytes, from %s", chr(ptype), len(payload), client.addr
            )
        if ptype == _REQUEST_PROTOCOL_VERSION:
            if len(payload) != 2:
                raise _Malformed(f"protocol version request of {len(payload)} bytes")
            (version,) = struct.unpack(">H", payload)
            client.send(ptype, struct.pack(">B", version == _PROTOCOL_VERSION))
        elif ptype == _GET_URCONTROL_VERSION:
            client.send(ptype, struct.pack(">4I", *self.controller_version))
        elif ptype == _SETUP_OUTPUTS:
            if len(payload) < 8:
                raise _Malformed(f"output setup of {len(payload)} bytes")
            (frequency,) = struct.unpack_from(">d", payload)
            names = _names(payload[8:])
            log.debug("fake RTDE: output recipe at %s Hz: %s", frequency, ",".join(names))
            types = [OUTPUT_TYPES.get(n, "NOT_FOUND") for n in names]
            recipe_id = 0
            if names and "NOT_FOUND" not in types:
                recipe = _Recipe(client.next_recipe_id, names)
                if _HEADER.size + recipe.struct.size > 0xFFFF:
                    raise _Malformed(f"recipe of {recipe.struct.size} bytes exceeds a package")
                recipe_id = recipe.id
                client.next_recipe_id += 1
                client.recipe = recipe
                if not math.isfinite(frequency) or not 0 < frequency <= self.max_frequency:
                    frequency = self.max_frequency
                with self._lock:
                    if frequency != self._frequency:
                        self._clock_base = self._now_locked()
                        self._clock_ticks = 0
                        self._frequency = frequency
            client.send(ptype, struct.pack(">B", recipe_id) + ",".join(types).encode())
        elif ptype == _SETUP_INPUTS:
            names = _names(payload)
            types = [INPUT_TYPES.get(n, "NOT_FOUND") for n in names]
            recipe_id = 0
            if names and "NOT_FOUND" not in types:
                recipe_id = client.next_recipe_id
                client.next_recipe_id += 1
            client.send(ptype, struct.pack(">B", recipe_id) + ",".join(types).encode())
        elif ptype == _START:
            client.started = client.recipe is not None
            client.send(ptype, struct.pack(">B", client.started))
        elif ptype == _PAUSE:
            client.started = False
            client.send(ptype, struct.pack(">B", 1))
        elif ptype == _DATA_PACKAGE:
            pass  # inputs from the client: accepted and ignored
        elif ptype == _TEXT_MESSAGE:
            log.info("fake RTDE: text message from %s: %r", client.addr, payload)
        else:
            raise _Malformed(f"unknown package type {ptype}")

    def _tick_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                next_t += 1.0 / self._frequency
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -0.1:  # far behind (loaded machine): skip packages, do not burst
                next_t = time.monotonic()
            try:
                self._send_tick()
            except Exception:  # keep ticking whatever happened
                log.exception("fake RTDE: sending data packages failed")

    def _send_tick(self) -> None:
        with self._lock:
            if self._paused:
                return
            clients = [c for c in self._clients if c.started and c.recipe is not None]
            if not clients:
                return
            values = dict(self._values)
            values["timestamp"] = self._now_locked()
        sent = 0
        for client in clients:
            recipe = client.recipe
            if recipe is not None and client.send(_DATA_PACKAGE, recipe.pack(values)):
                sent += 1
        with self._lock:
            self._clock_ticks += 1
            self._packages_sent += sent


def _names(payload: bytes) -> list[str]:
    """Comma-separated variable names of a setup package (ur_rtde ends the list with a comma)."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise _Malformed("variable names are not ASCII") from None
    return [n.strip() for n in text.split(",") if n.strip()]


def _text(message: str, source: str = "FakeRTDEServer", level: int = _WARNING_ERROR) -> bytes:
    """Payload of a protocol-2 text message."""
    msg, src = message.encode()[:255], source.encode()[:255]
    return struct.pack(">B", len(msg)) + msg + struct.pack(">B", len(src)) + src + bytes([level])


def _max_frequency(controller_version: Sequence[int]) -> float:
    """Highest RTDE data rate of a controller, Hz: 125 for CB3 (major <= 3), else 500."""
    return 125.0 if controller_version[0] <= 3 else 500.0


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
        self.max_frequency = _max_frequency(version)
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
        """Rate at which data packages are sent, Hz (from the latest output recipe)."""
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
