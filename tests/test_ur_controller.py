"""The emulated UR controller (sim/ur_controller.py) driven by the unmodified ur_rtde.

Every test talks to a controller in a child process over real sockets on its own 127.x.y.z
address. Timing claims are checked in controller ticks (the controller's clock), so a loaded
machine that starves a process makes a test slower, not wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import dashboard_client
import numpy as np
import pytest
import rtde_control
from polling import wait_for

from robot.config import CONTROL_PERIOD, Q_HOME
from sim.ur_controller import STOP_DECELERATION, build_mirror

HZ = {"ur5": 125.0, "ur5e": 500.0}


def replay(trace, model):
    """The arm's joint positions after running the controller's mirror commands in-process."""
    mirror = build_mirror(model)
    mirror.reset(np.array(trace["q0"]))
    tick = 0
    for at, qd, acceleration in trace["commands"]:
        mirror.advance((at - tick) * mirror.control_period)
        mirror.command(np.array(qd), acceleration)
        tick = at
    mirror.advance((trace["tick"] - tick) * mirror.control_period)
    return mirror.q


def stream_speedj(ctrl, velocities, period):
    for qd in velocities:
        t = ctrl.initPeriod()
        assert ctrl.speedJ(list(qd), 1.4, period)
        ctrl.waitPeriod(t)


# --------------------------------------------------------------------------- connect


@pytest.mark.parametrize("model", ["ur5", "ur5e"])
def test_ur_rtde_clients_connect(make_controller, clients, model):
    controller = make_controller(model)
    host = controller.host
    dashboard = clients("dashboard", host)
    assert dashboard.polyscopeVersion() == ("5.11.2.108319" if model == "ur5e"
                                            else "3.15.7.106331")
    assert dashboard.robotmode() == "Robotmode: RUNNING"
    assert dashboard.safetystatus() == "Safetystatus: NORMAL"
    assert not dashboard.running()
    assert dashboard.isInRemoteControl() == (model == "ur5e")  # not a CB3 command

    receive = clients("receive", host)
    assert receive.getActualQ() == pytest.approx(Q_HOME, abs=1e-9)
    assert receive.getRobotMode() == 7 and receive.getSafetyMode() == 1
    t0 = receive.getTimestamp()
    assert wait_for(lambda: receive.getTimestamp() > t0)
    steps = (receive.getTimestamp() - t0) * HZ[model]
    assert steps == pytest.approx(round(steps), abs=1e-6)  # whole ticks

    control = clients("control", host)
    assert control.isProgramRunning()
    assert dashboard.running() and dashboard.programState().startswith("PLAYING")
    # getStepTime is a real-time command: ur_rtde reads the register before the script
    # answers, and on a CB3 ur_rtde strips the script's get_steptime() altogether.
    assert control.getStepTime() == 0.0
    time.sleep(0.05)
    assert control.getStepTime() == (0.002 if model == "ur5e" else 0.0)
    control.stopScript()
    assert not control.isProgramRunning()
    assert controller.status()["events"][-1][1] == "program stopped: stopScript"


def test_eseries_in_local_control_refuses_the_script_and_state_changes(make_controller):
    controller = make_controller("ur5e", remote_control=False)
    with pytest.raises(RuntimeError, match="remote control"):
        rtde_control.RTDEControlInterface(controller.host)
    dashboard = dashboard_client.DashboardClient(controller.host)
    dashboard.connect()
    try:
        assert not dashboard.isInRemoteControl()
        dashboard.send("power off\n")
        assert dashboard.receive() == "Not in remote control"
        assert dashboard.robotmode() == "Robotmode: RUNNING"
        dashboard.send("no such command\n")
        assert dashboard.receive() == "could not understand: 'no such command'"
    finally:
        dashboard.disconnect()
    controller.set_remote_control(True)
    control = rtde_control.RTDEControlInterface(controller.host)
    assert control.isProgramRunning()
    control.stopScript()
    control.disconnect()


# --------------------------------------------------------------------------- motion


@pytest.mark.parametrize("model", ["ur5", "ur5e"])
def test_speedj_moves_the_mirror_and_speedstop_decelerates(make_controller, clients, model):
    controller = make_controller(model)
    control = clients("control", controller.host)
    period = CONTROL_PERIOD[model]
    n = round(0.4 / period)
    sent = [(0.3 * np.sin(np.pi * k / n), -0.2 * k / n, 0.0, 0.1, 0.0, -0.1) for k in range(n)]
    stream_speedj(control, sent, period)
    assert controller.status()["qd"][1] < -0.1  # moving

    lead = max(map(abs, sent[-1]))  # rad/s, the leading axis at the stop
    t0 = time.monotonic()
    assert control.speedStop(2.0)  # returns once the arm is at rest ...
    assert time.monotonic() - t0 > 0.9 * lead / 2.0  # ... after braking at 2 rad/s^2
    status = controller.status()
    assert np.max(np.abs(status["qd"])) < 1e-6
    assert status["script_running"]

    trace = controller.trace()
    # The controller commanded what was sent, in order (a command that lands in the same
    # tick as the next one is overwritten, as on the real controller) ...
    speeds = [c[1] for c in trace["commands"] if c[2] == 1.4]
    assert len(speeds) > 0.8 * n
    indices = [sent.index(qd) for qd in speeds]
    assert indices == sorted(indices)
    assert trace["commands"][-1][1:] == ((0.0,) * 6, 2.0)  # speedStop's deceleration
    # ... and an in-process mirror given the same commands lands on the same joints.
    np.testing.assert_allclose(replay(trace, model), trace["q"], atol=1e-3)
    assert np.max(np.abs(np.array(trace["q"]) - Q_HOME)) > 0.02


def test_movej_reaches_the_goal(make_controller, clients):
    controller = make_controller("ur5e")
    control = clients("control", controller.host)
    goal = list(Q_HOME)
    goal[0] += 0.15
    goal[2] -= 0.05
    assert control.moveJ(goal, 0.5, 1.4)  # synchronous: returns at the goal
    np.testing.assert_allclose(controller.status()["q"], goal, atol=1e-4)


# --------------------------------------------------------------------------- watchdog


CHILD = textwrap.dedent(
    """
    import sys, rtde_control
    control = rtde_control.RTDEControlInterface(sys.argv[1])
    control.setWatchdog(float(sys.argv[2]))
    k = 0
    while True:
        t = control.initPeriod()
        control.speedJ([0.2, 0, 0, 0, 0, 0], 1.4, 0.008)
        k += 1
        if k == 30:
            print("moving", flush=True)
        control.waitPeriod(t)
    """
)


def test_a_killed_client_process_is_stopped_by_the_watchdog(make_controller):
    controller = make_controller("ur5")
    hz = 5.0
    child = subprocess.Popen([sys.executable, "-c", CHILD, controller.host, str(hz)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "moving"
        assert wait_for(lambda: controller.status()["qd"][0] > 0.19)
        kill_tick = controller.status()["tick"]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert wait_for(lambda: not controller.status()["program_running"])
    assert wait_for(lambda: max(map(abs, controller.status()["qd"])) < 1e-9)

    ticks_per_s = HZ["ur5"]
    fired = [t for t, text in controller.status()["events"] if "RTDE watchdog" in text]
    assert len(fired) == 1
    assert fired[0] - kill_tick <= ticks_per_s / hz + 2  # within the watchdog period
    stop = controller.trace()["commands"][-1]
    assert stop[1:] == ((0.0,) * 6, STOP_DECELERATION)
    assert stop[0] - fired[0] <= 1  # the arm brakes at once


# --------------------------------------------------------------------------- safety


def test_protective_stop_refuses_motion_and_unlocks_after_5_s(make_controller, clients):
    controller = make_controller("ur5")
    host = controller.host
    receive = clients("receive", host)
    control = clients("control", host)
    dashboard = clients("dashboard", host)
    controller.protective_stop("test")
    assert wait_for(receive.isProtectiveStopped)
    stopped_at = time.monotonic()
    assert dashboard.safetystatus() == "Safetystatus: PROTECTIVE_STOP"
    assert not control.speedJ([0.1, 0, 0, 0, 0, 0], 1.4, 0.008)
    assert not control.isProgramRunning()
    with pytest.raises(RuntimeError, match="Cannot unlock protective stop until 5s"):
        dashboard.unlockProtectiveStop()
    time.sleep(max(0.0, 5.0 - (time.monotonic() - stopped_at)) + 0.05)
    dashboard.closeSafetyPopup()
    dashboard.unlockProtectiveStop()
    assert wait_for(lambda: not receive.isProtectiveStopped())
    assert control.reuploadScript()
    assert wait_for(control.isProgramRunning)
    assert control.speedJ([0.0] * 6, 1.4, 0.008)


def test_joint_limit_is_a_protective_stop(make_controller, clients):
    controller = make_controller("ur5e")
    control = clients("control", controller.host)
    goal = list(Q_HOME)
    goal[5] = 6.4  # past +2 pi
    assert control.moveJ(goal, 3.0, 20.0, True)  # asynchronous
    assert wait_for(lambda: controller.status()["safety_mode"] == 3, timeout=20)
    assert controller.status()["q"][5] > 2 * np.pi - 0.05
    assert "joint position limit" in controller.status()["events"][-1][1]
    assert wait_for(lambda: max(map(abs, controller.status()["qd"])) < 1e-9)


def test_emergency_stop_powers_off_until_power_on_and_brake_release(make_controller, clients):
    controller = make_controller("ur5")
    host = controller.host
    receive = clients("receive", host)
    control = clients("control", host)
    dashboard = clients("dashboard", host)
    controller.press_emergency_stop()
    assert wait_for(receive.isEmergencyStopped)
    assert dashboard.robotmode() == "Robotmode: POWER_OFF"
    assert not control.isProgramRunning()
    dashboard.powerOn()  # refused while pressed
    assert dashboard.robotmode() == "Robotmode: POWER_OFF"
    controller.release_emergency_stop()
    dashboard.powerOn()
    assert dashboard.robotmode() == "Robotmode: IDLE"
    assert control.reuploadScript()
    time.sleep(0.1)
    assert not control.isProgramRunning()  # brakes still on: the program does not start
    dashboard.brakeRelease()
    assert wait_for(lambda: receive.getRobotMode() == 7)
    assert control.reuploadScript()
    assert wait_for(control.isProgramRunning)


# --------------------------------------------------------------------------- the project


def test_madi_sim_controller_serves_until_interrupted():
    from rtde_server import random_loopback

    host = random_loopback()
    proc = subprocess.Popen([sys.executable, "-m", "madi.cli", "sim", "controller",
                             "--model", "ur5e", "--host", host],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        dashboard = dashboard_client.DashboardClient(host)

        def connected():
            try:
                dashboard.connect()
                return True
            except RuntimeError:
                return False

        assert wait_for(connected, timeout=60, interval=0.1)
        assert dashboard.polyscopeVersion() == "5.11.2.108319"
        dashboard.disconnect()
        # The camera, screen and fault endpoints (sim/emulator_io.py) on port 8080.
        with urllib.request.urlopen(f"http://{host}:8080/status", timeout=30) as reply:
            assert json.load(reply)["faults"]["cable_pulled"] is False
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
