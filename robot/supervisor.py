"""The learner child of ``madi train``: started, watched from the robot loop, restarted.

A learner that exits non-zero or is killed by a signal has crashed (a clean exit, code 0,
ends the run as before). :class:`LearnerSupervisor` then, from the robot's ``progress``
callback (the agent thread, about once a second):

1. asks the runner to hold the arm (:meth:`robot.runner.RobotRunner.replace_learner`):
   the episode ends at the next agent step and no transition is made until a new learner
   session is accepted;
2. once the runner holds, flushes the session log (every transition the robot made is
   then in the file) and starts a new learner: ``madi learner --resume RUN --refill
   SESSION...`` (the run's session logs, this robot's last) when the run has a
   checkpoint, a fresh learner with ``--refill`` otherwise.
   The new learner adds the transitions recorded since the checkpoint to its replay
   buffer before it answers the robot's hello, so its buffer and counters hold every
   transition the robot made (:meth:`learner.process.LearnerProcess.refill`);
3. after ``train.learner_restarts`` restarts, one more crash stops the run instead:
   :attr:`LearnerSupervisor.failure` holds the one-line error, the checkpoint and the
   session log stay for ``madi train --resume``.

Every learner runs at nice 10 on the CPUs the robot process had before it pinned itself,
under normal scheduling: a restart is forked from the agent thread, which may run under
``SCHED_FIFO``, and must not take that priority along.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from learner.process import read_progress

if TYPE_CHECKING:
    from robot.runner import RobotRunner

logger = logging.getLogger(__name__)


def exit_reason(code: int) -> str:
    """How a child ended, from its ``returncode``: ``exit code N`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LearnerSupervisor:
    """Starts the learner child of ``madi train`` and restarts it after a crash.

    Args:
        command: The learner's command line, ``command(restart, refill)``: ``restart``
            False for the first learner; ``refill`` the session log a restarted learner
            refills from (None: no session log, ``robot.record: false``).
        run_dir: The run directory (its ``checkpoints/`` tell where a restart begins).
        restarts: Restarts allowed (``train.learner_restarts``).

    Attributes:
        process: The current learner process (None before :meth:`start`).
        restarts_done: Restarts so far.
        failure: The one-line error once the restarts are used up (else None).
    """

    def __init__(self, command: Callable[[bool, Path | None], list[str]], run_dir: Path,
                 restarts: int):
        self._command = command
        self.run_dir = Path(run_dir)
        self.max_restarts = int(restarts)
        self.restarts_done = 0
        self.failure: str | None = None
        self.process: subprocess.Popen | None = None
        self._crash: str | None = None  # why the learner died, while a restart is pending
        self._cpus = os.sched_getaffinity(0)  # before the robot pins itself

    def start(self, restart: bool = False, refill: Path | None = None) -> None:
        """Start the first learner, or (``restart``) the next one, refilling from ``refill``."""
        cpus = self._cpus

        def child() -> None:  # the learner leaves the robot's CPUs and real-time policy
            if os.sched_getscheduler(0) != os.SCHED_OTHER:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            os.sched_setaffinity(0, cpus)
            os.nice(10)

        self.process = subprocess.Popen(self._command(restart, refill), preexec_fn=child)
        logger.info("learner process %d started (log: %s)", self.process.pid,
                    self.run_dir / "learner.log")

    def check(self, runner: RobotRunner) -> None:
        """Watch the learner from the runner's ``progress`` callback (the agent thread).

        A clean exit stops the run; a crash holds the arm and, once the runner holds,
        restarts the learner; a crash with no restart left stops the run and sets
        :attr:`failure`. Nothing happens once the run is stopping.

        Args:
            runner: The :class:`~robot.runner.RobotRunner`.
        """
        if runner.stopping:
            return
        if self._crash is None:
            code = self.process.poll()
            if code is None:
                return
            if code == 0:
                logger.error("the learner process exited (code 0) while the robot runs")
                runner.request_stop("learner process exited")
                return
            self._crash = exit_reason(code)
            if self.restarts_done >= self.max_restarts:
                self.failure = self._give_up(self._crash)
                runner.request_stop("learner crashed")
                return
            logger.warning("learner process %d crashed (%s); holding the arm to restart it",
                           self.process.pid, self._crash)
            runner.replace_learner()
        if runner.waiting_for_learner:  # no transition until the new learner says hello
            self._restart(runner)

    def _restart(self, runner: RobotRunner) -> None:
        """Flush the session log and start the next learner, refilling from it."""
        recorder = runner.recorder
        if recorder is not None and not recorder.flush():
            logger.warning("the session log %s did not flush in time; the restarted learner "
                           "may miss the last transitions", recorder.path)
        self.restarts_done += 1
        start, since = self._checkpoint()
        refill = recorder.path if recorder is not None else None
        if recorder is not None:
            recorder.event("learner_restart", reason=self._crash, restart=self.restarts_done,
                           checkpoint_env_steps=start)
        self.start(restart=True, refill=refill)
        what = (f"refilling the {runner.env_steps - start} transitions since from {refill.name}"
                if refill is not None else
                f"the {runner.env_steps - start} transitions since are lost (robot.record is "
                "false)")
        logger.warning("learner restart %d/%d after it crashed (%s): process %d from %s; %s",
                       self.restarts_done, self.max_restarts, self._crash, self.process.pid,
                       since, what)
        self._crash = None

    def _checkpoint(self) -> tuple[int, str]:
        """Env steps of the run's checkpoint (0 without one) and a phrase naming it."""
        try:
            progress = read_progress(self.run_dir)
        except (FileNotFoundError, ValueError):
            return 0, "no checkpoint yet (a fresh learner)"
        return progress["env_steps"], (f"checkpoints/learner.pt (env step "
                                       f"{progress['env_steps']}, update {progress['updates']})")

    def _give_up(self, reason: str) -> str:
        """The one-line error of a crash with no restart left."""
        if (self.run_dir / "checkpoints" / "learner.pt").is_file():
            fix = (f"the last checkpoint and the session log are kept: see "
                   f"{self.run_dir / 'learner.log'}, then continue with madi train --resume "
                   f"{self.run_dir}")
        else:
            fix = (f"there is no checkpoint yet: see {self.run_dir / 'learner.log'}, then start "
                   f"again (--pretrain {self.run_dir}/session*.mcap reuses what was recorded)")
        return (f"the learner crashed ({reason}) and no restart is left ({self.restarts_done} "
                f"done, train.learner_restarts: {self.max_restarts}); {fix}")

    def terminate(self) -> None:
        """Ask the learner to checkpoint and exit (SIGTERM); no robot is coming."""
        self.process.terminate()

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the learner to exit after the robot's shutdown; terminate it if late.

        Args:
            timeout: Longest wait before SIGTERM, s.

        Returns:
            The learner's exit code (logged with its reason when non-zero, unless
            :attr:`failure` already says it).
        """
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.error("learner did not exit within %.0f s of the robot's shutdown; "
                         "terminating", timeout)
            self.process.terminate()
            code = self.process.wait(timeout=10)
        if code != 0 and self.failure is None:
            logger.error("learner exited (%s); see %s", exit_reason(code),
                         self.run_dir / "learner.log")
        return code
