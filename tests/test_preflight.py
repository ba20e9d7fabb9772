"""``madi robot check``: the real rig's preflight, against the emulated UR controller
(sim/ur_controller.py) with the installed ur_rtde, and a video file as the camera."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from test_real_rig import rig_config, write_video

from madi.cli import main
from robot.preflight import Preflight, format_table


def statuses(checks):
    return {c.name: c.status for c in checks}


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / "cam.avi", 6)


def test_everything_passes_on_a_healthy_rig_and_nothing_moves(tmp_path, video,
                                                              make_controller):
    controller = make_controller("ur5")
    cfg = rig_config(video, host=controller.host)
    q0 = np.array(controller.status()["q"])
    checks = Preflight(cfg, tmp_path / "pf").run()
    np.testing.assert_allclose(controller.status()["q"], q0, atol=1e-6)  # moved nothing
    assert not controller.status()["program_running"]  # the script was stopped again
    got = statuses(checks)
    assert got["controller"] == "pass" and got["robot mode"] == "pass"
    assert got["safety status"] == "pass" and got["remote control"] == "skip"  # CB3
    assert got["RTDE stream"] == "pass" and got["joint state"] == "pass"
    assert got["control script"] == "pass" and got["target display"] == "pass"
    assert got["camera"] == "pass", [c.detail for c in checks if c.name == "camera"]
    camera = next(c for c in checks if c.name == "camera")
    assert "fps measured" in camera.detail and "red target covers" in camera.detail
    assert (tmp_path / "pf" / "camera_frame.png").exists()
    saved = json.loads((tmp_path / "pf" / "preflight.json").read_text())
    assert saved["passed"] and len(saved["checks"]) == len(checks)
    table = format_table(checks)
    assert table.splitlines()[2].startswith("controller") and "PASS" in table


def test_a_protective_stop_and_a_wrong_model_fail_with_the_fix(tmp_path, video,
                                                               make_controller):
    controller = make_controller("ur5")
    cfg = rig_config(video, host=controller.host, model="ur5e")
    controller.protective_stop()
    checks = Preflight(cfg, tmp_path / "pf").run()
    got = {c.name: c for c in checks}
    assert got["controller"].status == "fail" and "arm.model: ur5" in got["controller"].detail
    assert got["safety status"].status == "fail"
    assert "PROTECTIVE_STOP" in got["safety status"].detail
    assert got["control script"].status == "skip"
    assert got["camera"].status == "pass"  # the other devices are still checked


def test_move_jogs_each_active_joint_and_returns(tmp_path, video, make_controller):
    controller = make_controller("ur5")
    cfg = rig_config(video, host=controller.host)
    q0 = np.array(controller.status()["q"])
    checks = Preflight(cfg, tmp_path / "pf", move=True).run()
    np.testing.assert_allclose(controller.status()["q"], q0, atol=3e-3)
    jogs = [c for c in checks if c.name.startswith("jog joint")]
    assert [c.name for c in jogs] == [f"jog joint {j}" for j in cfg.arm.active_joints]
    assert all(c.status == "pass" for c in jogs), [c.detail for c in jogs]


def test_cli_check_without_a_robot_prints_the_table_and_fails(tmp_path, capsys):
    cfg_file = tmp_path / "rig.yaml"
    cfg_file.write_text(yaml.safe_dump({"backend": "ur5", "monitor": {"output": "offscreen"},
                                        "camera": {"device": str(tmp_path / "none.avi")}}))
    code = main(["robot", "check", "--config", str(cfg_file), "--host", "127.0.0.9",
                 "--out", str(tmp_path / "pf")])
    out = capsys.readouterr().out
    assert code == 1
    assert "controller" in out and "FAIL" in out and "127.0.0.9" in out
    assert "target display  PASS" in out
    assert "camera.device" in out  # the camera line names the key to fix


def test_joint_state_warns_when_the_camera_is_inside_the_screen_clearance(tmp_path):
    from robot.config import Config
    from robot.kinematics import flange_jacobian

    check = Preflight(Config(), tmp_path)
    q = np.array(Config().arm.q_home)
    check._joint_state(q)
    assert check.checks[-1].status == "pass"
    lim = check.safety
    while lim.screen_violation(q) > -0.01:  # 1 cm into the clearance, lens first
        q = q + np.linalg.pinv(flange_jacobian(q, "ur5", lim.lens)) @ (-lim.screen_normal * 0.005)
    check._joint_state(q)
    assert check.checks[-1].status == "warn"
    assert "inside safety.screen_clearance" in check.checks[-1].detail
