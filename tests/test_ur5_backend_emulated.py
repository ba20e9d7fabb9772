"""The real-arm backend (robot/backends/ur5.py) with the installed ur_rtde, against the
emulated UR controller (sim/ur_controller.py) on its own 127.x.y.z address.

Everything here runs the unmodified ``rtde_receive``, ``rtde_control`` and
``dashboard_client`` against a controller that streams RTDE, runs ur_rtde's control script
and its watchdog, and enforces protective and emergency stops. Two things stay on the
test double (tests/test_ur5_backend.py): the ExternalControl URCap mode, which the
emulator does not run, and a link that stalls or resets under a connected arm: ur_rtde
1.6.5's control interface then reconnects on its own threads, and calls into it meanwhile
crash or hang the calling process (docs/real-robot.md, "Known limits"), so a test cannot
run them in its own process.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from polling import wait_for
from rtde_server import random_loopback

from robot.backends.base import DeviceError, ProtectiveStopError
from robot.backends.ur5 import UR5Arm
from robot.config import Q_HOME, config_from_dict

UNLOCK_DELAY = 0.3  # s, the emulators' wait before a protective stop unlocks (UR: 5)


def arm_config(host: str, **arm):
    return config_from_dict({
        "backend": "ur5",
        "arm": {"host": host, "reset_duration": 0.3, "watchdog_hz": 10.0, **arm},
        "camera": {"subsample": 8},
    }).arm


@pytest.fixture
def controller(make_controller):
    return make_controller("ur5", unlock_delay=UNLOCK_DELAY)


@pytest.fixture
def arm(controller):
    arm = UR5Arm(arm_config(controller.host))
    arm.connect()
    yield arm
    arm.disconnect()


def events(controller) -> str:
    return "\n".join(text for _, text in controller.status()["events"])


def still(controller) -> bool:
    return bool(np.allclose(controller.status()["qd"], 0.0, atol=1e-9))


def test_connects_reads_the_joint_state_and_arms_the_watchdog(arm, controller):
    assert arm.step_time == pytest.approx(0.008)
    status = controller.status()
    assert status["watchdog"] == ("input_int_register_0", 10.0)  # armed before any motion
    state = arm.read_state()
    np.testing.assert_allclose(state.q, Q_HOME, atol=1e-6)
    assert state.qd.shape == (6,) and not state.protective_stopped


def test_speedj_moves_the_arm_and_disconnect_stops_it_and_the_script(arm, controller):
    q0 = arm.read_state().q
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:
        arm.speedj(np.array([0.2, 0, 0, 0, 0, 0]), 1.4)
        time.sleep(0.008)
    assert arm.read_state().q[0] - q0[0] > 0.01
    arm.disconnect()
    assert wait_for(lambda: still(controller), 2.0)
    assert not controller.status()["program_running"]
    # stopped by the client, not by its watchdog (a blocking speedStop starved it)
    assert "RTDE watchdog" not in events(controller)


def test_unreachable_controller_is_a_clear_error():
    host = random_loopback()  # nothing listens there
    arm = UR5Arm(arm_config(host))
    with pytest.raises(DeviceError, match=f"cannot reach the UR controller at {host}"):
        arm.connect()
    assert not arm.is_connected


def test_missing_host_names_the_key():
    with pytest.raises(DeviceError, match="arm.host"):
        UR5Arm(arm_config(None)).connect()


def test_controller_generation_must_match_the_config(make_controller):
    controller = make_controller("ur5e")
    arm = UR5Arm(arm_config(controller.host))  # configured as a CB3
    with pytest.raises(DeviceError, match="500 Hz.*arm.model: ur5e"):
        arm.connect()
    assert not arm.is_connected
    assert wait_for(lambda: not controller.status()["program_running"], 2.0)


def test_eseries_in_local_control_refuses_the_upload_with_the_fix(make_controller):
    controller = make_controller("ur5e", remote_control=False)
    arm = UR5Arm(arm_config(controller.host, model="ur5e"))
    with pytest.raises(DeviceError, match="remote control"):
        arm.connect()
    assert not arm.is_connected


def test_a_controller_that_sends_no_state_fails_connect(controller):
    controller.pull_cable()
    arm = UR5Arm(arm_config(controller.host))
    with pytest.raises(DeviceError, match="sends no state|cannot reach"):
        arm.connect()  # ur_rtde's constructor gives up after 2.5 s
    assert not arm.is_connected


def test_watchdog_keeper_feeds_an_idle_connected_arm(arm, controller):
    time.sleep(0.5)  # no commands: the keeper kicks
    assert controller.status()["program_running"] and "RTDE watchdog" not in events(controller)
    arm.speedj(np.array([0.1, 0, 0, 0, 0, 0]), 1.4)
    arm.speed_stop(1.4)  # parked again: the keeper takes over
    time.sleep(0.5)
    assert controller.status()["program_running"] and "RTDE watchdog" not in events(controller)


def test_a_stop_from_speed_keeps_the_watchdog_fed_and_the_script_running(arm, controller):
    # ur_rtde's speedStop is a blocking stopj in the script, during which ur_rtde sends
    # nothing: a stop longer than the 0.1 s watchdog window ended the script.
    qd = np.array([0.8, 0, 0, 0, 0, 0])
    for _ in range(100):  # 0.8 s of speedJ ticks: up to speed (0.57 s at 1.4 rad/s^2)
        arm.speedj(qd, 1.4)
        time.sleep(arm.control_period)
    assert arm.read_state().qd[0] > 0.7
    t0 = time.monotonic()
    arm.speed_stop(1.4)  # about 0.57 s of braking
    assert time.monotonic() - t0 > 0.3  # it returns at rest, after the ramp
    assert np.max(np.abs(arm.read_state().qd)) < 1e-2
    time.sleep(0.3)
    assert controller.status()["program_running"] and "RTDE watchdog" not in events(controller)


def test_a_control_loop_with_the_watchdog_armed_gets_every_command_through(arm, controller):
    # ur_rtde writes each command's id to input_int_register_0, the watched register and
    # the script's command register: a kickWatchdog after each speedJ replaced it in the
    # same cycle, and the arm ran on old targets (in the rehearsal it overshot the base
    # limit by 16 deg while the safety layer commanded a brake).
    from robot.control import ControlLoop

    sent = [0.01 * (k + 1) for k in range(40)]
    with ControlLoop(arm, None, acceleration=1.4, deadline=0.2, watchdog_hz=10.0) as loop:
        for base in sent:  # a new target every 2-3 controller ticks
            loop.set_command(np.array([base, 0, 0, 0, 0, 0]))
            time.sleep(0.02)
    commanded = {round(qd[0], 6) for _, qd, _ in controller.trace()["commands"]}
    assert len(commanded & {round(v, 6) for v in sent}) >= 0.9 * len(sent)
    assert controller.status()["program_running"] and "RTDE watchdog" not in events(controller)


def test_a_caller_that_stalls_mid_motion_is_stopped_by_the_watchdog(arm, controller):
    # A hung control thread, reenact or calibration loop in a live process: the keeper
    # must not feed the watchdog for it while the arm moves.
    arm.speedj(np.array([0.2, 0, 0, 0, 0, 0]), 1.4)
    assert wait_for(lambda: "RTDE watchdog" in events(controller), 2.0)
    assert wait_for(lambda: still(controller), 2.0)
    assert not controller.status()["program_running"]
    home = np.array(Q_HOME) + np.array([0.05, 0, 0, 0, 0, 0])
    arm.move_home(home, 0.3)  # the reset re-uploads the script ...
    np.testing.assert_allclose(arm.read_state().q, home, atol=2e-3)
    assert controller.status()["watchdog"] == ("input_int_register_0", 10.0)  # ... re-armed


def test_a_killed_script_is_uploaded_again_by_the_reset(arm, controller):
    assert controller.kill_script()
    assert wait_for(lambda: not arm._ctrl.isProgramRunning(), 5.0)
    home = np.array(Q_HOME) + np.array([0.05, 0, 0, 0, 0, 0])
    arm.move_home(home, 0.3)
    np.testing.assert_allclose(arm.read_state().q, home, atol=2e-3)
    assert controller.status()["watchdog"] == ("input_int_register_0", 10.0)


def test_protective_stop_refuses_motion_until_the_operator_unlocks_it(controller):
    arm = UR5Arm(arm_config(controller.host, protective_stop_wait=10.0))
    with arm:
        controller.protective_stop()
        assert wait_for(lambda: arm.read_state().protective_stopped, 2.0)
        with pytest.raises(ProtectiveStopError):
            arm.speedj(np.zeros(6), 1.4)
        arm.speed_stop(1.4)  # always allowed
        time.sleep(UNLOCK_DELAY)
        assert controller.unlock_protective_stop()  # on the pendant
        home = np.array(Q_HOME) + np.array([0.05, 0, 0, 0, 0, 0])
        arm.move_home(home, 0.3)  # waits for the unlock, uploads the script again
        np.testing.assert_allclose(arm.read_state().q, home, atol=2e-3)
        arm.speedj(np.zeros(6), 1.4)


def test_protective_stop_not_cleared_ends_with_a_clear_error(controller):
    arm = UR5Arm(arm_config(controller.host, protective_stop_wait=0.3))
    with arm:
        controller.protective_stop()
        assert wait_for(lambda: arm.read_state().protective_stopped, 2.0)
        with pytest.raises(ProtectiveStopError, match="not cleared within"):
            arm.move_home(np.array(Q_HOME), 0.3)


def test_dashboard_recovery_waits_for_the_unlock_delay(controller):
    arm = UR5Arm(arm_config(controller.host, protective_stop_recovery="dashboard"))
    with arm:
        controller.protective_stop()
        assert wait_for(lambda: arm.read_state().protective_stopped, 2.0)
        t0 = time.monotonic()
        arm.move_home(np.array(Q_HOME), 0.3)
        assert time.monotonic() - t0 >= UNLOCK_DELAY
        assert controller.faults()["safety_mode"] == "NORMAL"
        assert controller.status()["program_running"]


def test_emergency_stop_needs_a_person(arm, controller):
    controller.press_emergency_stop()
    assert wait_for(lambda: arm.read_state().emergency_stopped, 2.0)
    with pytest.raises(ProtectiveStopError, match="emergency stop is pressed"):
        arm.move_home(np.array(Q_HOME), 0.3)
