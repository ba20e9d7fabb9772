"""The real-arm backend (robot/backends/ur5.py) against the ur_rtde test double.

The double (tests/fake_ur_rtde.py) has ur_rtde's class names and signatures and runs the
sim mirror's arm at the controller rate, in real time, with the real controller's faults.
"""

from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

import fake_ur_rtde
import numpy as np
import pytest
from fake_ur_rtde import running_controller
from polling import wait_for

from robot.backends.base import ArmLinkLostError, DeviceError, ProtectiveStopError
from robot.backends.ur5 import UR5Arm
from robot.config import config_from_dict


def ur5_config(**arm):
    return config_from_dict({
        "backend": "ur5",
        "arm": {"host": "ur-fake", "reset_duration": 0.2, "watchdog_hz": 10.0, **arm},
        "camera": {"subsample": 8},
    })



@pytest.fixture
def cfg():
    return ur5_config()


@pytest.fixture
def controller(cfg):
    with running_controller(cfg, "ur-fake", unlock_delay=0.3) as c:
        yield c


@pytest.fixture
def arm(cfg, controller):
    arm = UR5Arm(cfg.arm, rtde=fake_ur_rtde)
    arm.connect()
    yield arm
    arm.disconnect()


def test_reads_the_controllers_joint_state(arm, controller):
    state = arm.read_state()
    np.testing.assert_allclose(state.q, controller.q, atol=1e-3)
    assert state.qd.shape == (6,) and not state.protective_stopped
    assert arm.step_time == pytest.approx(0.008)


def test_speedj_moves_the_arm_and_disconnect_stops_it_and_the_script(arm, controller):
    q0 = arm.read_state().q
    qd = np.array([0.2, 0, 0, 0, 0, 0])
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:
        arm.speedj(qd, 1.4)
        time.sleep(0.008)
    assert arm.read_state().q[0] - q0[0] > 0.01
    arm.disconnect()
    assert controller.speed_stop_calls == 1 and controller.stop_script_calls == 1
    assert not controller.program_running
    np.testing.assert_array_equal(controller.target, 0.0)


def test_unreachable_controller_is_a_clear_error(cfg):
    arm = UR5Arm(cfg.arm.model_copy(update={"host": "nobody-here"}), rtde=fake_ur_rtde)
    with pytest.raises(DeviceError, match="cannot reach the UR controller at nobody-here"):
        arm.connect()
    assert not arm.is_connected


def test_missing_host_names_the_key(cfg):
    with pytest.raises(DeviceError, match="arm.host"):
        UR5Arm(cfg.arm.model_copy(update={"host": None}), rtde=fake_ur_rtde).connect()


def test_controller_generation_must_match_the_config(cfg):
    with running_controller(cfg, "ur-e", version=(5, 11, 0)) as controller:
        arm = UR5Arm(cfg.arm.model_copy(update={"host": "ur-e"}), rtde=fake_ur_rtde)
        with pytest.raises(DeviceError, match="500 Hz.*arm.model: ur5e"):
            arm.connect()
        assert not controller.program_running  # the script was stopped again


def test_eseries_upload_needs_remote_control_urcap_does_not():
    cfg = ur5_config(model="ur5e")
    with running_controller(cfg, "ur-e", version=(5, 11, 0), remote_control=False):
        arm = UR5Arm(cfg.arm.model_copy(update={"host": "ur-e"}), rtde=fake_ur_rtde)
        with pytest.raises(DeviceError, match="remote control"):
            arm.connect()
        urcap = UR5Arm(cfg.arm.model_copy(update={"host": "ur-e", "control_mode": "urcap"}),
                       rtde=fake_ur_rtde)
        urcap.connect()
        assert urcap.step_time == pytest.approx(0.002)
        urcap.disconnect()


def test_pulled_cable_is_caught_by_the_stale_timestamp_and_the_watchdog_halts_the_arm(
        arm, controller, cfg):
    arm.set_watchdog(10.0)
    arm.speedj(np.array([0.1, 0, 0, 0, 0, 0]), 1.4)
    controller.drop_link(cable=True)
    arm.read_state()  # within state_timeout the cached sample still passes ...
    arm.speedj(np.array([0.1, 0, 0, 0, 0, 0]), 1.4)  # ... and commands vanish silently
    time.sleep(cfg.arm.state_timeout + 0.05)
    assert arm._rx.isConnected()  # ur_rtde has not noticed (its deadline is 2.5 s) ...
    with pytest.raises(ArmLinkLostError, match="no new joint state"):
        arm.read_state()  # ... but the frozen timestamp gives it away
    # The script runs on with the last target (the ur_rtde pitfall) until the watchdog
    # sees no input for 1/10 s and halts it.
    assert wait_for(lambda: controller.watchdog_fired, 1.0)
    np.testing.assert_array_equal(controller.target, 0.0)
    controller.restore_link()
    arm.disconnect()
    arm.connect()  # a reconnect after the link is back works
    assert arm.read_state().q.shape == (6,)


def test_reset_connection_is_refused_at_once(arm, controller):
    controller.drop_link(cable=False)
    with pytest.raises(ArmLinkLostError, match="link .* is down"):
        arm.read_state()
    with pytest.raises(ArmLinkLostError):
        arm.speedj(np.zeros(6), 1.4)


def test_watchdog_keeper_feeds_an_idle_connected_arm(arm, controller):
    assert controller.watchdog_hz == 10.0  # armed at connect, before anything moved
    time.sleep(0.5)  # no commands: the keeper kicks
    assert not controller.watchdog_fired and controller.program_running
    arm.speedj(np.array([0.1, 0, 0, 0, 0, 0]), 1.4)
    arm.speed_stop(1.4)  # parked again: the keeper takes over
    time.sleep(0.5)
    assert not controller.watchdog_fired and controller.program_running


def test_a_caller_that_stalls_mid_motion_is_stopped_by_the_watchdog(arm, controller):
    # A hung control thread, reenact or calibration loop in a live process: the keeper
    # must not feed the watchdog for it while the arm moves.
    arm.speedj(np.array([0.2, 0, 0, 0, 0, 0]), 1.4)
    assert wait_for(lambda: controller.watchdog_fired, 1.0)  # fires 1/watchdog_hz after it
    np.testing.assert_array_equal(controller.target, 0.0)
    assert not controller.program_running
    arm.move_home(np.asarray(controller.q), 0.2)  # the reset re-uploads the script ...
    assert controller.program_running and controller.watchdog_hz == 10.0  # ... and re-arms


def test_protective_stop_refuses_motion_and_operator_clears_it(cfg, controller):
    arm = UR5Arm(cfg.arm.model_copy(update={"protective_stop_wait": 5.0}), rtde=fake_ur_rtde)
    with arm:
        controller.protective_stop()
        assert arm.read_state().protective_stopped
        with pytest.raises(ProtectiveStopError):
            arm.speedj(np.zeros(6), 1.4)
        arm.speed_stop(1.4)  # always allowed

        def operator():
            time.sleep(0.3)
            with controller.lock:
                controller.protective_stopped = False  # cleared on the pendant

        threading.Thread(target=operator, daemon=True).start()
        home = np.asarray(cfg.arm.q_home) + np.array([0.05, 0, 0, 0, 0, 0])
        arm.move_home(home, 0.2)
        np.testing.assert_allclose(arm.read_state().q, home, atol=3e-3)
        assert controller.program_running  # the script was uploaded again
        arm.speedj(np.zeros(6), 1.4)


def test_protective_stop_not_cleared_ends_with_a_clear_error(cfg, controller):
    arm = UR5Arm(cfg.arm.model_copy(update={"protective_stop_wait": 0.3}), rtde=fake_ur_rtde)
    with arm:
        controller.protective_stop()
        with pytest.raises(ProtectiveStopError, match="not cleared within"):
            arm.move_home(np.asarray(cfg.arm.q_home), 0.2)


def test_dashboard_recovery_waits_for_the_unlock_delay(cfg, controller):
    arm = UR5Arm(cfg.arm.model_copy(update={"protective_stop_recovery": "dashboard"}),
                 rtde=fake_ur_rtde)
    with arm:
        controller.protective_stop()
        t0 = time.monotonic()
        arm.move_home(np.asarray(cfg.arm.q_home), 0.2)
        assert time.monotonic() - t0 >= controller.unlock_delay
        assert not controller.protective_stopped and controller.program_running


def test_emergency_stop_needs_a_person(arm, controller, cfg):
    controller.press_emergency_stop()
    assert arm.read_state().emergency_stopped
    with pytest.raises(ProtectiveStopError, match="emergency stop is pressed"):
        arm.move_home(np.asarray(cfg.arm.q_home), 0.2)


def test_the_real_receive_interface_stale_and_dropped_streams_are_refused(make_server):
    """UR5Arm with ur_rtde's real RTDEReceiveInterface, against an RTDE server on loopback."""
    import rtde_receive

    server = make_server()
    cfg = ur5_config(host=server.host)
    rtde = SimpleNamespace(RTDEReceiveInterface=rtde_receive.RTDEReceiveInterface,
                           RTDEControlInterface=fake_ur_rtde.RTDEControlInterface,
                           DashboardClient=fake_ur_rtde.DashboardClient)
    q = [1.5, -2.0, 2.1, -3.0, -1.5, 3.1]
    server.set_state(q=q, qd=[0.1] * 6)
    with running_controller(cfg, server.host):  # behind the control interface
        arm = UR5Arm(cfg.arm, rtde=rtde)
        arm.connect()
        try:
            assert wait_for(lambda: np.allclose(arm.read_state().q, q))
            assert arm.read_state().qd == pytest.approx([0.1] * 6)
            server.set_state(safety_status_bits=1 | 1 << 2)
            assert wait_for(lambda: arm.read_state().protective_stopped)
            server.set_state(safety_status_bits=1)
            server.pause_stream()  # connected, but nothing new: ur_rtde serves its cache
            time.sleep(0.05)  # packages sent before the pause have arrived
            with contextlib.suppress(ArmLinkLostError):  # (already stale is fine too)
                arm.read_state()  # the last of them: the clock of staleness starts here
            time.sleep(cfg.arm.state_timeout + 0.1)
            assert arm._rx.isConnected()
            with pytest.raises(ArmLinkLostError, match="no new joint state"):
                arm.read_state()
            server.resume_stream()
            assert wait_for(lambda: _reads(arm))
            server.drop_clients()
            assert wait_for(lambda: not arm._rx.isConnected())
            with pytest.raises(ArmLinkLostError, match="link .* is down"):
                arm.read_state()
        finally:
            arm.disconnect()


def _reads(arm) -> bool:
    try:
        arm.read_state()
        return True
    except ArmLinkLostError:
        return False


def test_a_controller_that_sends_no_state_fails_connect(make_server):
    import rtde_receive

    server = make_server()
    server.pause_stream()
    cfg = ur5_config(host=server.host)
    rtde = SimpleNamespace(RTDEReceiveInterface=rtde_receive.RTDEReceiveInterface,
                           RTDEControlInterface=fake_ur_rtde.RTDEControlInterface,
                           DashboardClient=fake_ur_rtde.DashboardClient)
    arm = UR5Arm(cfg.arm, rtde=rtde)
    with pytest.raises(DeviceError, match="sends no state"):
        arm.connect()  # ur_rtde's constructor gives up after 2.5 s
    assert not arm.is_connected
