"""ur_rtde's control script, as an emulated UR controller runs it: the register protocol.

ur_rtde's ``RTDEControlInterface`` uploads a URScript program (``rtde_control.script`` in
ur_rtde's source, 1.5 / 1.6) and then drives it through RTDE registers only:

* the client writes a command id to input int register 0 and its arguments to input double
  registers 0.. (and input int register 1 for ``async``), all shifted by 24 when it was
  built with ``FLAG_UPPER_RANGE_REGISTERS`` (the script reads the offset from the line
  ``global reg_offset_int = # int register offset`` followed by the injected ``0``/``24``);
* the script's main loop, once per controller tick (``sync()``), reads the command; it writes
  output int register 0 = 1 ("ready for a command") when idle and = 2 ("done with the
  command") when a command finished; results go to output double registers 0.. (e.g.
  ``getStepTime``); the client then clears the command (id 0) and waits for "ready" again;
* real-time commands (speedJ, servoJ, getStepTime, ...) are processed and answered "ready" in
  the same tick, the client does not wait for "done";
* command 255 (``stopScript``) ends the main loop, so the program stops;
* command 35 (``setWatchdog``) calls ``rtde_set_watchdog`` on input int register 0 (or 24)
  with action "stop": the program stops when that register gets no update for 1/f s. ur_rtde's
  ``kickWatchdog`` writes 0 to it; every other command writes it too.

:class:`ControlScript` is that main loop, one :meth:`ControlScript.step` per tick. It drives
the arm through a :class:`ScriptHost` (the emulated controller). Commands this project does
not use raise :class:`ScriptError`, which stops the program the way a URScript runtime error
does, so a client sees ``isProgramRunning()`` turn False rather than a silent success.
Lines that ur_rtde's script marks for newer controllers (``$5.4`` ...) are already removed
by ur_rtde before the upload, so e.g. ``get_steptime`` is answered only if the uploaded text
has it (not on a CB3: ``getStepTime`` then reads whatever output double register 0 holds).
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

#: Values of output int register 0 (ur_rtde's UR_CONTROLLER_RDY_FOR_CMD / _DONE_WITH_CMD).
READY, DONE = 1, 2

#: Command ids of ur_rtde's RTDE::RobotCommand::Type used by this project.
MOVEJ, SPEEDJ, SPEED_STOP, GET_STEPTIME = 1, 9, 15, 26
STOPJ, SET_WATCHDOG, STOP_SCRIPT = 34, 35, 255

#: Commands the script answers "ready" in the same tick (its main loop's real-time list).
REALTIME = frozenset({6, 9, 10, 11, 24, 25, 26, 27, 38, 58, 66, 67, 68, 69, 70, 71})

_MAIN = re.compile(r"^def\s+rtde_control\(\):", re.MULTILINE)
_OFFSET = re.compile(r"reg_offset_(float|int)\s*=\s*#[^\n]*\n\s*(\d+)")


class ScriptError(RuntimeError):
    """A URScript runtime error: the program stops."""


class Motion(Protocol):
    """A motion the controller runs; ``done`` once it finished."""

    done: bool


class ScriptHost(Protocol):
    """What the script needs of the controller (registers, motions, watchdog)."""

    step_time: float

    def read_int(self, register: int) -> int:
        """Input int register ``register``."""

    def read_double(self, register: int) -> float:
        """Input double register ``register``."""

    def write_int(self, register: int, value: int) -> None:
        """Set output int register ``register``."""

    def write_double(self, register: int, value: float) -> None:
        """Set output double register ``register``."""

    def speedj(self, qd: np.ndarray, acceleration: float) -> None:
        """Track joint velocities ``qd`` (rad/s), leading axis at ``acceleration`` (rad/s^2)."""

    def movej(self, q: np.ndarray, speed: float, acceleration: float) -> Motion:
        """Move to joint positions ``q`` (rad) at ``speed`` (rad/s), ``acceleration``."""

    def stopj(self, deceleration: float) -> Motion:
        """Decelerate every joint to rest at ``deceleration`` (rad/s^2)."""

    def set_watchdog(self, variable: str, min_frequency: float) -> None:
        """Stop the program when input ``variable`` gets no update for 1/min_frequency s."""


def is_control_script(text: str) -> bool:
    """Whether an uploaded program is ur_rtde's control script (``def rtde_control():``)."""
    return bool(_MAIN.search(text)) and "def rtde_cmd():" in text


class ControlScript:
    """The running control script: its main loop, one :meth:`step` per controller tick.

    Args:
        text: The uploaded program (ur_rtde's control script).
        host: The controller running it.

    Raises:
        ValueError: ``text`` is not ur_rtde's control script.
    """

    def __init__(self, text: str, host: ScriptHost):
        if not is_control_script(text):
            raise ValueError("not ur_rtde's control script (no `def rtde_control():`)")
        offsets = dict(_OFFSET.findall(text))
        self.int_offset = int(offsets.get("int", 0))
        self.float_offset = int(offsets.get("float", 0))
        self.has_steptime = "get_steptime()" in text
        self._host = host
        self._executing = False
        self._blocking: Motion | None = None
        self.running = True
        self._out_int(0, READY)  # signal_ready() before the loop

    def step(self) -> None:
        """One pass of the main loop (then ``sync()``).

        Raises:
            ScriptError: the command is not emulated; the program must stop.
        """
        if self._blocking is not None:  # process_cmd still inside a blocking motion
            if not self._blocking.done:
                return
            self._blocking = None
            self._out_int(0, DONE)
            return
        cmd = self._in_int(0)
        if cmd in REALTIME:
            self._process(cmd)
            self._out_int(0, READY)
        elif cmd == 0:
            self._executing = False
            self._out_int(0, READY)
        elif not self._executing:
            self._executing = True
            self._process(cmd)
            if cmd == STOP_SCRIPT:
                self.running = False
            elif self._blocking is None:
                self._out_int(0, DONE)

    # ------------------------------------------------------------------ commands
    def _process(self, cmd: int) -> None:
        handler = {
            MOVEJ: self._movej,
            SPEEDJ: self._speedj,
            SPEED_STOP: self._stop,
            STOPJ: self._stopj,
            GET_STEPTIME: self._get_steptime,
            SET_WATCHDOG: self._set_watchdog,
            STOP_SCRIPT: lambda: None,
        }.get(cmd)
        if handler is None:
            raise ScriptError(f"command {cmd} of ur_rtde's control script is not emulated")
        handler()

    def _movej(self) -> None:
        q = self._in_vector(0)
        speed, acceleration = self._in_double(6), self._in_double(7)
        motion = self._host.movej(q, speed, acceleration)
        if self._in_int(1) != 1:  # synchronous: the main loop waits for the move
            self._blocking = motion

    def _speedj(self) -> None:
        self._host.speedj(self._in_vector(0), self._in_double(6))

    def _stop(self) -> None:
        self._blocking = self._host.stopj(self._in_double(0))

    def _stopj(self) -> None:
        motion = self._host.stopj(self._in_double(0))
        if self._in_int(1) != 1:
            self._blocking = motion

    def _get_steptime(self) -> None:
        if self.has_steptime:
            self._out_double(0, self._host.step_time)

    def _set_watchdog(self) -> None:
        register = 24 if self.int_offset == 24 else 0
        self._host.set_watchdog(f"input_int_register_{register}", self._in_double(0))

    # ------------------------------------------------------------------ registers
    def _in_int(self, i: int) -> int:
        return self._host.read_int(i + self.int_offset)

    def _in_double(self, i: int) -> float:
        return self._host.read_double(i + self.float_offset)

    def _in_vector(self, first: int) -> np.ndarray:
        return np.array([self._in_double(first + j) for j in range(6)])

    def _out_int(self, i: int, value: int) -> None:
        self._host.write_int(i + self.int_offset, value)

    def _out_double(self, i: int, value: float) -> None:
        self._host.write_double(i + self.float_offset, value)
