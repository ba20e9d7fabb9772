"""The asynchronous stack with real processes: `madi train`, `madi learner`, `madi robot`.

Every test starts the real CLI in subprocesses (ipc sockets under tmp_path, the MuJoCo
mirror in real-time pace) and kills, interrupts or pokes them from outside. Short
episodes and small learner settings keep each test within tens of seconds on 2 cores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from learner.policy import MadiPolicy
from link.endpoints import LinkAddresses
from link.messages import Hello, Spaces, encode
from robot.config import load_config
from robot.session_log import SessionLog
from sim.evaluate import evaluate

SMALL = ["--set", "task.episode_steps=25", "--set", "arm.reset_duration=0.2",
         "--set", "agent.init_random_steps=50", "--set", "agent.batch_size=16",
         "--set", "agent.updates_per_step=1", "--set", "train.publish_every=5",
         "--set", "train.log_every=50", "--set", "train.checkpoint_every=null",
         "--set", "robot.learner_wait=30", "--set", "train.final_eval_episodes=0",
         # these tests are about the link, not the update ratio: the robot keeps its pace
         "--set", "robot.hold_for_learner=false"]
QUICK = str(Path(__file__).resolve().parent.parent / "configs" / "sim_quick.yaml")


def madi(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    kwargs.setdefault("start_new_session", True)  # its own group, for finish()'s kill
    return subprocess.Popen([sys.executable, "-m", "madi.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited ({p.returncode}) while waiting for "
                                     f"{what}:\n{p.stdout.read()[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def timing(run: Path) -> dict:
    try:
        return json.loads((run / "timing.json").read_text())
    except (OSError, ValueError):
        return {}


def learner_pid(train: subprocess.Popen) -> int:
    """The pid of the `madi learner` child of a `madi train` process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == train.pid and b"learner" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"madi train (pid {train.pid}) has no learner child")


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:  # the whole group: a learner child would keep the output pipe open
            os.killpg(proc.pid, signal.SIGKILL)
        except (PermissionError, ProcessLookupError):
            proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"process did not exit in {timeout} s:\n{out[-4000:]}") from None
    return out


def test_train_600_steps_learns_and_acts_with_received_weights(tmp_path):
    out = tmp_path / "run"
    proc = madi("train", "--steps", "600", "--out", str(out), "--no-progress",
                "--set", "agent.init_random_steps=100", "--set", "arm.reset_duration=0.5",
                "--set", "train.final_eval_episodes=2", "--set", "agent.batch_size=16",
                "--set", "train.eval_every=300", "--set", "train.eval_episodes=1")
    # a hang guard only: the robot holds for the learner (nice 10), slow on a loaded machine
    log = finish(proc, timeout=900)
    assert proc.returncode == 0, log[-4000:]
    # the final evaluation: --sync's and madi eval's fixed episodes, the learner's last policy
    final = json.loads((out / "final_eval.json").read_text())
    cfg = load_config(out / "config.yaml")
    again = evaluate(cfg, MadiPolicy.from_checkpoint(out / "checkpoints" / "policy.pt"),
                     cfg.train.eval_distractions, 2, seed=cfg.train.eval_seed)
    assert final["env_steps"] == 600 and final["seed"] == cfg.train.eval_seed
    assert final["returns"] == again.returns and "final eval" in log
    for name in ("config.yaml", "checkpoints/learner.pt", "checkpoints/policy.pt",
                 "checkpoints/progress.json", "metrics.csv", "episodes.csv", "timing.json",
                 "robot.log", "learner.log", "learning_curve.png"):
        assert (out / name).is_file(), name
    metrics = rows(out / "metrics.csv")
    assert any(r["losses/critic"] for r in metrics), "the learner made no update"
    # the robot's evaluation (eval.csv) and the final one reach the learner's metrics
    evals = rows(out / "eval.csv")
    logged = [r for r in metrics if r["charts/eval_return"]]
    # due at the first episode end at or past 300 env steps (a loaded host can end an
    # episode early: a control stall)
    due = next(int(r["env_steps"]) for r in rows(out / "episodes.csv")
               if int(r["env_steps"]) >= 300)
    assert len(evals) == 1 and [int(r["global_step"]) for r in logged] == [due]
    assert float(logged[0]["charts/eval_return"]) == pytest.approx(float(evals[0]["return"]),
                                                                   abs=1e-4)  # eval.csv: 4 dp
    assert [float(r["charts/final_eval_return"]) for r in metrics
            if r["charts/final_eval_return"]] == [pytest.approx(final["mean"])]
    updates = max(int(float(r["charts/updates"])) for r in metrics if r["charts/updates"])
    assert updates > 0
    # The robot acted with weights it received: later episodes (and transitions) carry a
    # policy version > 0, and the learner saw it in the transitions.
    episodes = rows(out / "episodes.csv")
    assert sum(int(e["steps"]) for e in episodes) == 600
    assert int(episodes[0]["policy_version_first"]) == 0
    assert int(episodes[-1]["policy_version_last"]) > 0
    assert max(int(r["charts/policy_version"] or 0) for r in metrics) > 0
    t = timing(out)
    assert t["pace"] == "realtime" and t["agent_step"]["samples"] >= 590
    assert t["control_tick"]["samples"] > 5 * 590
    # one latency sample per action: every env step's, plus the last action of an episode
    # whose next observation never came (the loop stalled under load: no transition)
    unsent = sum(e["end"] in ("control_stalled", "arm_link_lost") for e in episodes)
    assert t["obs_to_action"]["samples"] == 600 + unsent
    progress = json.loads((out / "checkpoints" / "progress.json").read_text())
    assert progress["env_steps"] == 600 and progress["updates"] == updates
    # robot.hold_for_learner (sim): before the last 150-step episode the robot waited until
    # the learner had made 0.5 updates per env step after the 100 random ones (less one
    # publication interval of slack), as --sync would have
    assert t["updates_per_env_step"]["configured"] == 0.5
    assert t["learner_updates"] >= (600 - 150 - 100) * 0.5 - 10
    assert int(episodes[-1]["safety_ticks"]) >= 0 and "safety_share" in episodes[-1]


def test_learner_killed_robot_keeps_acting_and_reconnects(tmp_path):
    """Kill -9 the learner mid-run: the robot keeps its loop and takes a new learner;
    kill -9 the robot: the learner keeps its state, checkpoints and keeps serving."""
    base = f"ipc://{tmp_path}/link"
    learner1 = madi("learner", "--config", QUICK, "--bind", base, "--out",
                    str(tmp_path / "l1"), *SMALL)
    robot_dir = tmp_path / "robot"
    robot = madi("robot", "--config", QUICK, "--learner", base, "--out", str(robot_dir),
                 "--steps", "100000", "--pace", "realtime", "--no-progress", *SMALL)
    procs = [learner1, robot]
    try:
        wait_for(lambda: timing(robot_dir).get("link", {}).get("weights_version", 0) > 0,
                 300, "the robot to receive weights", procs)
        learner1.kill()
        learner1.wait()
        steps_at_kill = timing(robot_dir)["env_steps"]
        # The robot goes on (on_learner_lost: continue): episodes keep ending, transitions
        # are dropped and counted, the loop is never late.
        wait_for(lambda: timing(robot_dir).get("env_steps", 0) >= steps_at_kill + 50, 30,
                 "the robot to keep stepping without a learner", [robot])
        dropped = timing(robot_dir)["link"]
        assert dropped.get("dropped_no_peer", 0) + dropped.get("dropped_full", 0) > 0
        learner2 = madi("learner", "--config", QUICK, "--bind", base, "--out",
                        str(tmp_path / "l2"), *SMALL)
        procs.append(learner2)
        wait_for(lambda: timing(robot_dir).get("link", {}).get("handshakes", 0) >= 2, 180,
                 "the robot to shake hands with the new learner", [robot, learner2])
        wait_for(lambda: any(r["link/received"] and int(r["link/received"]) > 0
                             for r in rows(tmp_path / "l2" / "metrics.csv")),
                 180, "the new learner to receive transitions", [robot, learner2])
        # Now kill the robot: the learner stays up and checkpoints.
        robot.kill()
        robot.wait()
        progress = tmp_path / "l2" / "checkpoints" / "progress.json"
        wait_for(progress.exists, 20, "the learner's checkpoint after losing the robot",
                 [learner2])
        assert json.loads(progress.read_text())["env_steps"] > 0
        assert learner2.poll() is None, "the learner must keep serving after the robot died"
        learner2.send_signal(signal.SIGINT)
        out = finish(learner2, timeout=20)
        assert learner2.returncode == 0, out[-3000:]
        assert "robot lost; checkpointing" in (tmp_path / "l2" / "learner.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def test_ctrl_c_stops_both_processes_with_files_flushed(tmp_path):
    out = tmp_path / "run"
    proc = madi("train", "--steps", "100000", "--out", str(out), "--no-progress", *SMALL,
                start_new_session=True)
    try:
        wait_for(lambda: len(rows(out / "episodes.csv")) >= 2, 120, "two episodes", [proc])
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        log = finish(proc, timeout=30)  # a hang guard; the exit time is in BENCHMARKS.md
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-3000:]
    learner_log = (out / "learner.log").read_text()
    assert "SIGINT received" in learner_log and "learner done" in learner_log
    assert "SIGINT received" in (out / "robot.log").read_text()
    progress = json.loads((out / "checkpoints" / "progress.json").read_text())
    episodes = rows(out / "episodes.csv")
    assert progress["env_steps"] >= sum(int(e["steps"]) for e in episodes[:-1])
    assert timing(out)["env_steps"] == sum(int(e["steps"]) for e in episodes)
    assert episodes[-1]["end"] in ("stop_requested", "time_limit")


def test_garbage_and_wrong_hash_to_the_learner_leave_the_run_unharmed(tmp_path):
    base = f"ipc://{tmp_path}/link"
    learner = madi("learner", "--config", QUICK, "--bind", base, "--out", str(tmp_path / "l"),
                   *SMALL)
    robot_dir = tmp_path / "robot"
    robot = madi("robot", "--config", QUICK, "--learner", base, "--out", str(robot_dir),
                 "--steps", "200", "--pace", "realtime", "--no-progress", *SMALL)
    addrs = LinkAddresses.from_base(base)
    ctx = zmq.Context()
    try:
        wait_for(lambda: timing(robot_dir).get("env_steps", 0) >= 25, 120,
                 "the first episode", [learner, robot])
        push = ctx.socket(zmq.PUSH)
        push.connect(addrs.transitions)
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(addrs.control)
        for _ in range(20):
            push.send_multipart([b"\x00garbage", os.urandom(100)])
            dealer.send(b'{"type": "hello", "protocol": 1}')
        spaces = Spaces((9, 45, 80), 15, 5)
        dealer.send_multipart(encode(Hello("robot", "not-the-hash", "x", "intruder", spaces)))
        robot_out = finish(robot, timeout=120)
        assert robot.returncode == 0, robot_out[-3000:]
        learner.send_signal(signal.SIGINT)
        learner_out = finish(learner, timeout=20)
        assert learner.returncode == 0, learner_out[-3000:]
    finally:
        for p in (learner, robot):
            if p.poll() is None:
                p.kill()
                p.communicate()
        ctx.destroy(linger=0)
    log = (tmp_path / "l" / "learner.log").read_text()
    assert "config_hash" in log  # the intruder's hello was rejected and logged
    done = [line for line in log.splitlines() if "learner done" in line][-1]
    assert "'rejected': 0" not in done
    # The robot's 200 steps all reached the learner despite the garbage.
    assert "200 env steps" in done


@pytest.mark.parametrize("cmd", [["robot", "--learner", "bogus://x", "--steps", "5"],
                                 ["learner", "--bind", "tcp://127.0.0.1:99999"]])
def test_bad_addresses_fail_with_a_clear_message(tmp_path, cmd):
    proc = madi(*cmd, "--config", QUICK, "--out", str(tmp_path / "r"))
    out = finish(proc, timeout=60)
    assert proc.returncode == 2, out[-2000:]
    assert "ipc:///dir or tcp://host:port" in out or "port must be in" in out


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    first = madi("train", "--config", QUICK, "--steps", "75", "--out", str(out),
                 "--no-progress", *SMALL)
    log = finish(first, timeout=180)
    assert first.returncode == 0, log[-3000:]
    progress = json.loads((out / "checkpoints" / "progress.json").read_text())
    assert progress["env_steps"] == 75 and progress["episodes"] == 3
    again = madi("train", "--resume", str(out), "--steps", "125", "--no-progress")
    log = finish(again, timeout=180)
    assert again.returncode == 0, log[-3000:]
    progress = json.loads((out / "checkpoints" / "progress.json").read_text())
    assert progress["env_steps"] == 125 and progress["episodes"] == 5
    episodes = rows(out / "episodes.csv")
    assert [int(e["episode"]) for e in episodes] == [0, 1, 2, 3, 4]
    assert int(episodes[-1]["env_steps"]) == 125
    learner_log = (out / "learner.log").read_text()
    assert "resumed from" in learner_log
    # the replay buffer (not in the checkpoint: train.save_replay false) is refilled from
    # the first run's session log, none of it counted again
    assert "refilled 75 recorded transitions from 1 session log(s), 0 of them since" in \
        learner_log, learner_log[-3000:]
    done = [line for line in learner_log.splitlines() if "learner done" in line][-1]
    assert "125 env steps" in done and "125 transitions in the replay buffer" in done, done


def test_killed_learner_restarts_from_its_checkpoint_and_gets_every_transition(tmp_path):
    """kill -9 of the learner mid-run: the arm is held, a new learner continues from the
    checkpoint refilled from session.mcap, and the run reaches its steps with the learner
    holding every transition the robot made."""
    out = tmp_path / "run"
    progress = out / "checkpoints" / "progress.json"
    proc = madi("train", "--config", QUICK, "--steps", "300", "--out", str(out),
                "--no-progress", *SMALL, "--set", "train.checkpoint_every=100",
                # the robot holds between episodes for the learner's updates (few of them)
                "--set", "robot.hold_for_learner=true", "--set", "agent.updates_per_step=0.2",
                "--set", "robot.learner_wait=300")

    def robot_past_the_checkpoint() -> bool:  # so that there is something to refill
        return progress.exists() and (timing(out).get("env_steps", 0)
                                      >= json.loads(progress.read_text())["env_steps"] + 25)

    try:
        wait_for(robot_past_the_checkpoint, 300, "a checkpoint and an episode after it", [proc])
        os.kill(learner_pid(proc), signal.SIGKILL)
        log = finish(proc, timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-4000:]
    robot_log = (out / "robot.log").read_text()
    assert re.search(r"learner restart 1/3 after it crashed \(killed by SIGKILL\): process \d+ "
                     r"from checkpoints/learner.pt \(env step [12]\d\d, update \d+\); "
                     r"refilling the \d+ transitions since from session.mcap", robot_log), \
        robot_log[-3000:]
    learner_log = (out / "learner.log").read_text()
    refill = re.search(r"refilled (\d+) recorded transitions from 1 session log\(s\), (\d+) "
                       r"of them since", learner_log)
    assert refill is not None and int(refill[2]) > 0, learner_log[-3000:]
    # The robot held the arm: the episode the crash cut ended as learner_lost.
    episodes = rows(out / "episodes.csv")
    assert "learner_lost" in {e["end"] for e in episodes}
    assert sum(int(e["steps"]) for e in episodes) == 300
    # Every transition the robot made is in the session log and in the learner's buffer,
    # each counted once.
    assert SessionLog(out / "session.mcap").info().steps == 300
    done = [line for line in learner_log.splitlines() if "learner done" in line][-1]
    assert "300 env steps" in done and "300 transitions in the replay buffer" in done, done
    assert json.loads(progress.read_text())["env_steps"] == 300


def test_learner_crash_with_no_restart_left_ends_the_run_with_one_error(tmp_path):
    out = tmp_path / "run"
    progress = out / "checkpoints" / "progress.json"
    proc = madi("train", "--config", QUICK, "--steps", "100000", "--out", str(out),
                "--no-progress", *SMALL, "--set", "train.checkpoint_every=50",
                "--set", "train.learner_restarts=0", "--set", "robot.learner_wait=300")
    try:
        wait_for(progress.exists, 300, "the learner's first checkpoint", [proc])
        os.kill(learner_pid(proc), signal.SIGKILL)
        log = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, log[-4000:]
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert ("the learner crashed (killed by SIGKILL) and no restart is left (0 done, "
            "train.learner_restarts: 0)") in errors[0]
    assert f"continue with madi train --resume {out}" in errors[0]
    # The last good checkpoint and the session log stay for --resume.
    assert (out / "checkpoints" / "learner.pt").is_file()
    kept = json.loads(progress.read_text())["env_steps"]
    assert SessionLog(out / "session.mcap").info().steps >= kept >= 50
