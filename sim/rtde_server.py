"""The RTDE endpoint of an emulated UR controller (TCP 30004, protocol version 2).

:class:`RTDEServer` answers the RTDE handshake the way a UR controller does, so ur_rtde's
unmodified ``RTDEReceiveInterface``, ``RTDEControlInterface`` and ``RTDEIOInterface`` connect
to it. Its owner (the emulated controller, or a test double) drives the clock: every
controller tick it calls :meth:`RTDEServer.publish` with the values of that tick, and it
receives the clients' inputs through the ``on_input`` callback.

Protocol (UR's RTDE guide; everything big-endian). Each package is a header ``uint16 size``
(header included) + ``uint8 type``, then the payload:

* ``V`` request protocol version: ``uint16 version`` -> ``uint8 accepted``. Only version 2 is
  accepted (ur_rtde asks for 2); all packages are read as version 2, requested or not.
* ``v`` get controller version: empty -> ``uint32 major, minor, bugfix, build``. ur_rtde takes
  major <= 3 as a CB3 (125 Hz), anything newer as an e-series (500 Hz).
* ``O`` setup outputs: ``double frequency`` + comma-separated variable names ->
  ``uint8 recipe id`` + comma-separated type names (``DOUBLE``, ``VECTOR6D``, ``INT32``, ...).
  An unknown name is answered ``NOT_FOUND`` and the recipe id is 0 (ur_rtde 1.6 then raises
  ``RuntimeError``). A frequency outside ``(0, controller rate]`` gets the controller rate;
  a lower one is served by sending on every n-th tick.
* ``I`` setup inputs: comma-separated names -> ``uint8 recipe id`` + types; ``NOT_FOUND`` for
  unknown names, ``IN_USE`` for a variable another connection's input recipe holds. Input
  and output recipes are numbered separately, from 1, per connection (ur_rtde's control
  interface relies on its 20 input recipes getting ids 1..20).
* ``S`` start / ``P`` pause: empty -> ``uint8 accepted``. Start fails (0) without an output
  recipe.
* ``U`` data package. From the server, after ``S``: ``uint8 recipe id`` + the recipe's values.
  From a client: ``uint8 input recipe id`` + the values, handed to ``on_input``.
* ``M`` text message: sent by the server instead of a reply when a package is malformed or of
  an unknown type (``uint8 len, message, uint8 len, source, uint8 warning level``).

A header announcing a size below 3 bytes cannot be resynchronised, so the server closes that
one connection; any other bad input gets an ``M`` reply and the connection stays up.

Port 30004 is fixed in ur_rtde, so several servers on one machine each take their own
loopback address (all of 127.0.0.0/8 is loopback on Linux), e.g. ``127.23.5.9``.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["INPUT_TYPES", "OUTPUT_TYPES", "RTDE_PORT", "RTDEServer", "coerce_output",
           "max_frequency", "zero_outputs"]

log = logging.getLogger(__name__)

RTDE_PORT = 30004
"""TCP port of the RTDE interface (fixed in ur_rtde)."""

_HEADER = struct.Struct(">HB")
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


def zero_outputs() -> dict[str, Any]:
    """Every output variable at zero (0, 0.0, False or a vector of zeros)."""
    return {name: _ZERO[kind] for name, kind in OUTPUT_TYPES.items()}


def max_frequency(controller_version: Sequence[int]) -> float:
    """Highest RTDE data rate of a controller, Hz: 125 for CB3 (major <= 3), else 500."""
    return 125.0 if controller_version[0] <= 3 else 500.0


def coerce_output(name: str, value: Any) -> Any:
    """Check ``value`` against the RTDE type of output variable ``name``; return it packable.

    Raises:
        ValueError: ``name`` is unknown or ``value`` does not fit its type.
    """
    if name not in OUTPUT_TYPES:
        raise ValueError(f"unknown RTDE output variable {name!r}: see sim.rtde_server.OUTPUT_TYPES")
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
    """A recipe: the variables of one data package, in order, and how to (un)pack them."""

    def __init__(self, recipe_id: int, names: list[str], types: dict[str, str]):
        self.id = recipe_id
        self.names = names
        self.kinds = [types[n] for n in names]
        self.struct = struct.Struct(">B" + "".join(_FORMATS[k] for k in self.kinds))

    def pack(self, values: dict[str, Any]) -> bytes:
        """One data package's payload: the recipe id and ``values`` of its variables."""
        flat: list[Any] = [self.id]
        for name in self.names:
            value = values[name]
            if isinstance(value, tuple):
                flat.extend(value)
            else:
                flat.append(value)
        return self.struct.pack(*flat)

    def unpack(self, payload: bytes) -> dict[str, Any]:
        """The variables of a client's data package (payload including the recipe id)."""
        if len(payload) != self.struct.size:
            raise _Malformed(f"data package of {len(payload)} bytes for input recipe {self.id} "
                             f"({self.struct.size} expected)")
        flat = iter(self.struct.unpack(payload)[1:])
        values: dict[str, Any] = {}
        for name, kind in zip(self.names, self.kinds, strict=True):
            n = int(_FORMATS[kind][0]) if _FORMATS[kind][0].isdigit() else 1
            items = tuple(next(flat) for _ in range(n))
            values[name] = items if n > 1 else items[0]
        return values


class _Client:
    """One RTDE connection: its socket, negotiated recipes and serving thread."""

    def __init__(self, sock: socket.socket, addr: Any):
        self.sock = sock
        self.addr = addr
        self.send_lock = threading.Lock()
        self.closed = False
        self.output: _Recipe | None = None
        self.divider = 1  # send on every divider-th tick (recipe frequency below the rate)
        self.next_output_id = 1
        self.inputs: dict[int, _Recipe] = {}
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
                log.debug("RTDE: send to %s failed: %s", self.addr, e)
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


class RTDEServer:
    """A UR controller's RTDE endpoint on ``(host, port)``, clocked by its owner.

    Args:
        host: IPv4 address to listen on.
        controller_version: ``(major, minor, bugfix, build)`` reported to clients.
        on_input: Called from a connection's thread with ``{variable: value}`` of every data
            package a client sends (e.g. ``{"input_int_register_0": 9, ...}``).
        port: TCP port; 30004 on a real controller.

    Attributes:
        max_frequency: The controller rate, Hz (125 CB3, 500 e-series).
    """

    def __init__(self, host: str, controller_version: Sequence[int],
                 on_input: Callable[[dict[str, Any]], None] | None = None,
                 port: int = RTDE_PORT):
        version = tuple(int(v) for v in controller_version)
        if len(version) != 4 or not all(0 <= v < 2**32 for v in version):
            raise ValueError(f"controller_version must be 4 uint32s, got {controller_version!r}")
        self.host = host
        self.port = port
        self.controller_version = version
        self.max_frequency = max_frequency(version)
        self._on_input = on_input
        self._lock = threading.Lock()
        self._clients: list[_Client] = []
        self._input_owner: dict[str, _Client] = {}
        self._packages_sent = 0
        self._tick = 0
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind and listen; serve connections in background threads.

        Raises:
            OSError: the address cannot be bound (e.g. ``EADDRINUSE``).
        """
        self._listener = listen(self.host, self.port)
        self._accept_thread = threading.Thread(target=self._accept_loop, name="rtde-accept",
                                               daemon=True)
        self._accept_thread.start()

    def close(self) -> None:
        """Close the client connections (FIN) and the listening socket."""
        self._stop.set()
        self.drop_clients(graceful=True)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()

    def drop_clients(self, graceful: bool) -> None:
        """Close every client connection, with FIN if ``graceful`` else RST; wait for it."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.abort(reset=not graceful)
        for client in clients:
            if client.thread is not None:
                client.thread.join(timeout=2.0)

    # ------------------------------------------------------------------ the clock
    @property
    def streaming(self) -> bool:
        """Whether any client has started its output stream."""
        with self._lock:
            return any(c.started and c.output is not None for c in self._clients)

    def publish(self, values: dict[str, Any]) -> None:
        """One controller tick: send each started client its recipe's ``values``.

        A client whose recipe asked for a lower frequency gets every n-th tick. Call at the
        controller rate; ``values`` must hold every variable of every output recipe (see
        :func:`zero_outputs`), in the types of :data:`OUTPUT_TYPES`.
        """
        with self._lock:
            tick = self._tick
            self._tick += 1
            clients = [c for c in self._clients if c.started and c.output is not None
                       and tick % c.divider == 0]
        sent = 0
        for client in clients:
            recipe = client.output
            if recipe is not None and client.send(_DATA_PACKAGE, recipe.pack(values)):
                sent += 1
        with self._lock:
            self._packages_sent += sent

    def stats(self) -> dict[str, Any]:
        """Packages sent and open connections, at one instant."""
        with self._lock:
            return {"packages_sent": self._packages_sent, "client_count": len(self._clients)}

    # ----------------------------------------------------------------- internals
    def _accept_loop(self) -> None:
        assert self._listener is not None
        for sock, addr in accept_loop(self._listener, self._stop, "RTDE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, addr)
            client.thread = threading.Thread(target=self._serve_client, args=(client,),
                                             name="rtde-client", daemon=True)
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
                if not self._handle_buffer(client, buf):
                    return
        except Exception:  # never let a client kill the server
            log.exception("RTDE: error serving %s", client.addr)
        finally:
            self._forget(client)

    def _handle_buffer(self, client: _Client, buf: bytearray) -> bool:
        """Handle the whole packages in ``buf``; False if the connection must close."""
        while len(buf) >= _HEADER.size:
            size, ptype = _HEADER.unpack_from(buf)
            if size < _HEADER.size:
                log.warning("RTDE: bad package size %d from %s", size, client.addr)
                client.send(_TEXT_MESSAGE, _text(f"bad package size {size}"))
                return False
            if len(buf) < size:
                break
            payload = bytes(buf[_HEADER.size : size])
            del buf[:size]
            try:
                self._handle(client, ptype, payload)
            except _Malformed as e:
                log.warning("RTDE: %s from %s", e, client.addr)
                client.send(_TEXT_MESSAGE, _text(str(e)))
        return True

    def _forget(self, client: _Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
            for name in [n for n, c in self._input_owner.items() if c is client]:
                del self._input_owner[name]
        with client.send_lock:
            client.closed = True
            client.sock.close()

    def _handle(self, client: _Client, ptype: int, payload: bytes) -> None:
        if ptype == _DATA_PACKAGE:
            self._handle_inputs(client, payload)
            return
        log.debug("RTDE: %r package, %d bytes, from %s", chr(ptype), len(payload), client.addr)
        if ptype == _REQUEST_PROTOCOL_VERSION:
            if len(payload) != 2:
                raise _Malformed(f"protocol version request of {len(payload)} bytes")
            (version,) = struct.unpack(">H", payload)
            client.send(ptype, struct.pack(">B", version == _PROTOCOL_VERSION))
        elif ptype == _GET_URCONTROL_VERSION:
            client.send(ptype, struct.pack(">4I", *self.controller_version))
        elif ptype == _SETUP_OUTPUTS:
            self._setup_outputs(client, payload)
        elif ptype == _SETUP_INPUTS:
            self._setup_inputs(client, payload)
        elif ptype == _START:
            client.started = client.output is not None
            client.send(ptype, struct.pack(">B", client.started))
        elif ptype == _PAUSE:
            client.started = False
            client.send(ptype, struct.pack(">B", 1))
        elif ptype == _TEXT_MESSAGE:
            log.info("RTDE: text message from %s: %r", client.addr, payload)
        else:
            raise _Malformed(f"unknown package type {ptype}")

    def _setup_outputs(self, client: _Client, payload: bytes) -> None:
        if len(payload) < 8:
            raise _Malformed(f"output setup of {len(payload)} bytes")
        (frequency,) = struct.unpack_from(">d", payload)
        names = _names(payload[8:])
        log.debug("RTDE: output recipe at %s Hz: %s", frequency, ",".join(names))
        types = [OUTPUT_TYPES.get(n, "NOT_FOUND") for n in names]
        recipe_id = 0
        if names and "NOT_FOUND" not in types:
            recipe = _Recipe(client.next_output_id, names, OUTPUT_TYPES)
            if _HEADER.size + recipe.struct.size > 0xFFFF:
                raise _Malformed(f"recipe of {recipe.struct.size} bytes exceeds a package")
            recipe_id = recipe.id
            client.next_output_id += 1
            client.output = recipe
            if not math.isfinite(frequency) or not 0 < frequency <= self.max_frequency:
                frequency = self.max_frequency
            client.divider = max(1, round(self.max_frequency / frequency))
        client.send(_SETUP_OUTPUTS, struct.pack(">B", recipe_id) + ",".join(types).encode())

    def _setup_inputs(self, client: _Client, payload: bytes) -> None:
        names = _names(payload)
        with self._lock:
            types = [self._input_type(client, n) for n in names]
            recipe_id = 0
            if names and not {"NOT_FOUND", "IN_USE"} & set(types):
                recipe_id = len(client.inputs) + 1
                client.inputs[recipe_id] = _Recipe(recipe_id, names, INPUT_TYPES)
                self._input_owner.update(dict.fromkeys(names, client))
        client.send(_SETUP_INPUTS, struct.pack(">B", recipe_id) + ",".join(types).encode())

    def _input_type(self, client: _Client, name: str) -> str:
        owner = self._input_owner.get(name)
        if owner is not None and owner is not client:
            return "IN_USE"
        return INPUT_TYPES.get(name, "NOT_FOUND")

    def _handle_inputs(self, client: _Client, payload: bytes) -> None:
        if not payload:
            raise _Malformed("empty data package")
        recipe = client.inputs.get(payload[0])
        if recipe is None:
            raise _Malformed(f"data package for unknown input recipe {payload[0]}")
        values = recipe.unpack(payload)
        if self._on_input is not None:
            self._on_input(values)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``(host, port)`` with a 0.1 s accept timeout.

    Raises:
        OSError: the address cannot be bound.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(8)
        listener.settimeout(0.1)
    except OSError:
        listener.close()
        raise
    return listener


def accept_loop(listener: socket.socket, stop: threading.Event, what: str):
    """Yield ``(socket, address)`` of each connection until ``stop`` is set.

    The accepted sockets have a 0.5 s timeout, so their readers can notice ``stop``.
    """
    while not stop.is_set():
        try:
            sock, addr = listener.accept()
        except TimeoutError:
            continue
        except OSError as e:
            if not stop.is_set():
                log.warning("%s: accept failed: %s", what, e)
                time.sleep(0.05)
            continue
        sock.settimeout(0.5)
        yield sock, addr


def _names(payload: bytes) -> list[str]:
    """Comma-separated variable names of a setup package (ur_rtde ends the list with a comma)."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise _Malformed("variable names are not ASCII") from None
    return [n.strip() for n in text.split(",") if n.strip()]


def _text(message: str, source: str = "RTDEServer", level: int = _WARNING_ERROR) -> bytes:
    """Payload of a protocol-2 text message."""
    msg, src = message.encode()[:255], source.encode()[:255]
    return struct.pack(">B", len(msg)) + msg + struct.pack(">B", len(src)) + src + bytes([level])
