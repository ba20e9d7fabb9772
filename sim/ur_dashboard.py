"""The dashboard server of an emulated UR controller (TCP 29999, one text line per command).

Replies are the controller's own words (UR's "Dashboard Server" manuals for CB3 and e-Series,
and what ur_rtde's ``DashboardClient`` checks for): e.g. ``stop`` -> ``Stopped``, ``unlock
protective stop`` -> ``Protective stop releasing`` (or the "Cannot unlock protective stop
until 5s after occurrence. ..." refusal), ``running`` -> ``Program running: true``. A new
connection is greeted with ``Connected: Universal Robots Dashboard Server``; an unknown
command is answered ``could not understand: '<command>'``. On an e-series not in remote
control the commands that change the robot's state are refused with ``Not in remote
control``.

What each command does is the controller's business (:class:`Dashboard`); this module only
speaks the protocol.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from sim.rtde_server import accept_loop, listen

log = logging.getLogger(__name__)

DASHBOARD_PORT = 29999
"""TCP port of the dashboard server."""

GREETING = "Connected: Universal Robots Dashboard Server"
UNLOCK_REFUSED = ("Cannot unlock protective stop until 5s after occurrence. Always inspect "
                  "cause of protective stop before unlocking")
NOT_REMOTE = "Not in remote control"


class Dashboard(Protocol):
    """What the dashboard server asks of the controller."""

    e_series: bool
    remote_control: bool

    def describe(self) -> dict[str, str]:
        """Robot mode, safety mode/status, program state, loaded program, version, model."""

    def power(self, on: bool) -> None:
        """Power the arm on (to IDLE, brakes held) or off."""

    def brake_release(self) -> None:
        """Release the brakes of a powered arm (to RUNNING)."""

    def unlock_protective_stop(self) -> bool:
        """Clear a protective stop; False while UR's 5 s wait has not passed."""

    def stop_program(self) -> None:
        """Stop the running program."""

    def play(self) -> bool:
        """Start the loaded program; False if there is none or the robot is not ready."""

    def load(self, name: str) -> bool:
        """Load program ``name`` (a ``.urp``); False if it cannot exist."""

    def restart_safety(self) -> None:
        """Clear a safety fault; the arm ends powered off."""


def _replies(robot: Dashboard) -> dict[str, tuple[bool, Callable[[str], str]]]:
    """Command (lower case) -> (needs remote control on e-series, handler of the argument)."""
    def info(key: str, fmt: str = "{}") -> Callable[[str], str]:
        return lambda _: fmt.format(robot.describe()[key])

    def running(_: str) -> str:
        playing = robot.describe()["program_state"] == "PLAYING"
        word = str(playing) if not robot.e_series else str(playing).lower()
        return f"Program running: {word}"

    def program_state(_: str) -> str:
        state = robot.describe()
        return f"{state['program_state']} {state['loaded_program'] or '<unnamed>'}"

    def loaded(_: str) -> str:
        name = robot.describe()["loaded_program"]
        return f"Loaded program: {name}" if name else "No program loaded"

    def act(action: Callable[[], object], reply: str) -> Callable[[str], str]:
        def run(_: str) -> str:
            action()
            return reply
        return run

    table: dict[str, tuple[bool, Callable[[str], str]]] = {
        "robotmode": (False, info("robot_mode", "Robotmode: {}")),
        "safetymode": (False, info("safety_mode", "Safetymode: {}")),
        "safetystatus": (False, info("safety_status", "Safetystatus: {}")),
        "running": (False, running),
        "programstate": (False, program_state),
        "get loaded program": (False, loaded),
        "polyscopeversion": (False, info("polyscope_version")),
        "get robot model": (False, info("robot_model")),
        "power on": (True, act(lambda: robot.power(True), "Powering on")),
        "power off": (True, act(lambda: robot.power(False), "Powering off")),
        "brake release": (True, act(robot.brake_release, "Brake releasing")),
        "unlock protective stop": (True, lambda _: "Protective stop releasing"
                                   if robot.unlock_protective_stop() else UNLOCK_REFUSED),
        "close safety popup": (False, lambda _: "closing safety popup"),
        "close popup": (False, lambda _: "closing popup"),
        "popup": (False, lambda _: "showing popup"),
        "addtolog": (False, lambda _: "Added log message"),
        "restart safety": (True, act(robot.restart_safety, "Restarting safety")),
        "stop": (True, act(robot.stop_program, "Stopped")),
        "play": (True, lambda _: "Starting program" if robot.play() else "Failed to execute: play"),
        "load": (True, lambda name: f"Loading program: {name}" if robot.load(name)
                 else f"File not found: {name}"),
        "quit": (False, lambda _: "Disconnected"),
    }
    if robot.e_series:
        table["is in remote control"] = (False, lambda _: str(robot.remote_control).lower())
        table["get serial number"] = (False, info("serial_number"))
        table["version"] = (False, info("version"))
    return table


def answer(robot: Dashboard, line: str) -> str:
    """The controller's reply to one command line (without the newline)."""
    text = line.strip()
    table = _replies(robot)
    lowered = text.lower()
    for command in sorted(table, key=len, reverse=True):  # "close safety popup" before "popup"
        if lowered == command or lowered.startswith(command + " "):
            needs_remote, handler = table[command]
            if needs_remote and robot.e_series and not robot.remote_control:
                return NOT_REMOTE
            return handler(text[len(command):].strip())
    return f"could not understand: '{text}'"


class DashboardServer:
    """The dashboard server on ``(host, port)``, answering for ``robot``.

    Args:
        host: IPv4 address to listen on.
        robot: The controller.
        port: TCP port; 29999 on a real controller.
    """

    def __init__(self, host: str, robot: Dashboard, port: int = DASHBOARD_PORT):
        self.host, self.port = host, port
        self._robot = robot
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind, listen and serve in background threads.

        Raises:
            OSError: the address cannot be bound.
        """
        self._listener = listen(self.host, self.port)
        self._thread = threading.Thread(target=self._accept, name="dashboard-accept",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and close the listening socket (open sessions end on their own)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        for sock, addr in accept_loop(self._listener, self._stop, "dashboard"):
            threading.Thread(target=self._session, args=(sock, addr), name="dashboard-session",
                             daemon=True).start()

    def _session(self, sock: socket.socket, addr: object) -> None:
        with sock:
            try:
                sock.sendall((GREETING + "\n").encode())
                for line in _lines(sock, self._stop):
                    reply = answer(self._robot, line)
                    log.debug("dashboard %s: %r -> %r", addr, line, reply)
                    sock.sendall((reply + "\n").encode())
                    if reply == "Disconnected":
                        return
            except OSError as e:
                log.debug("dashboard %s: %s", addr, e)


def _lines(sock: socket.socket, stop: threading.Event):
    """Yield the newline-terminated lines read from ``sock`` until EOF or ``stop``."""
    buf = b""
    while not stop.is_set():
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("utf-8", "replace").rstrip("\r")
