"""Session logs: recording, reading back bit-exact, cut files, replay and reenactment.

Sessions are recorded by the real robot loop (RobotRunner) on the real sim rig in
lockstep, into real MCAP files in tmp_path.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import yaml
from mcap.reader import FOOTER_SIZE, make_reader
from mcap.records import Chunk, Message
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import Writer

from link.messages import Spaces, Step
from madi.cli import main
from robot.backends.base import ArmState
from robot.backends.sim import SimRig
from robot.config import config_from_dict
from robot.recorder import SessionRecorder
from robot.runner import RobotRunner, spaces_of
from robot.session_log import SessionLog, SessionLogError
from robot.session_replay import reenact, replay_backend
from robot.session_writer import ORPHANED

SPACES = Spaces((6, 8, 10), 15, 5)


def small_config(**task):
    return config_from_dict({
        "camera": {"subsample": 8},
        "task": {"episode_steps": 20, **task},
        "arm": {"reset_duration": 0.1},
        "sim": {"pace": "fast"},
        "agent": {"masker_filters": 4, "encoder_filters": 8, "mlp_hidden": [32, 32]},
    })


def record_session(tmp_path, cfg, steps=50):
    recorder = SessionRecorder(tmp_path / "rec" / "session.mcap", spaces_of(cfg),
                               {"config": yaml.safe_dump(cfg.model_dump(mode="json")),
                                "backend": cfg.backend})
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path / "rec", link=None, total_steps=steps,
                         realtime=False, recorder=recorder)
    runner.run()
    return recorder.path, runner


def obs(rng, k=2, h=8, w=10):
    return {"image": rng.integers(0, 256, (3 * k, h, w), dtype=np.uint8),
            "proprio": rng.standard_normal(15).astype(np.float32)}


def test_write_and_read_back_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    rec = SessionRecorder(tmp_path / "s.mcap", SPACES, {"config": "{}", "backend": "sim"})
    sent = []
    o = obs(rng)
    for step in range(30):
        nxt = {"image": np.concatenate([o["image"][3:], rng.integers(0, 256, (3, 8, 10),
                                                                         dtype=np.uint8)]),
               "proprio": rng.standard_normal(15).astype(np.float32)}
        action = rng.uniform(-1, 1, 5).astype(np.float32)
        rec.transition(Step(0, step, o, action, float(step) / 7, nxt, False, step == 29,
                       1000 + step, 2000 + step, 3))
        sent.append((o, action, nxt))
        o = nxt
    states = [ArmState(q=rng.standard_normal(6), qd=rng.standard_normal(6), t_ns=i,
                       protective_stopped=i == 3) for i in range(5)]
    for i, s in enumerate(states):
        rec.arm_state(0, i, s)
        rec.control_tick(0, i, 10 * i, s, np.full(6, 0.1 * i), stale=i == 2)
    rec.event("reset", episode=0, target_center=np.array([0.25, 0.5]))
    rec.close({"stop_reason": "steps done"})

    log = SessionLog(tmp_path / "s.mcap")
    assert not log.cut and log.end["stop_reason"] == "steps done"
    assert log.meta["backend"] == "sim" and log.meta["format_version"] == "2"
    got = list(log.transitions())
    assert len(got) == 30 and got[0].keyframe and not got[1].keyframe
    assert got[5].reward == 5 / 7 and got[29].truncated and got[3].policy_version == 3
    # Frames are lossless: the newest frame of every next_obs comes back bit-exact.
    for t, (_, action, nxt) in zip(got, sent, strict=True):
        np.testing.assert_array_equal(t.frames[-1], nxt["image"][3:])
        np.testing.assert_array_equal(t.action, action)
        np.testing.assert_array_equal(t.next_proprio, nxt["proprio"])
    arm = log.arm_states()
    np.testing.assert_array_equal(arm["q"], np.stack([s.q for s in states]))
    assert arm["protective_stopped"].tolist() == [0, 0, 0, 1, 0]
    ticks = log.control_ticks()
    np.testing.assert_array_equal(ticks["applied"][4], np.full(6, 0.4))
    assert ticks["stale"].tolist() == [0, 0, 1, 0, 0] and ticks["t_ns"][3] == 30
    assert log.events() == [{"kind": "reset", "episode": 0, "target_center": [0.25, 0.5]}]


def test_flush_makes_every_recorded_transition_readable_while_recording(tmp_path):
    """What a learner restarted mid-run reads: everything recorded before the flush."""
    rng = np.random.default_rng(0)
    rec = SessionRecorder(tmp_path / "s.mcap", SPACES, {"config": "{}", "backend": "sim"},
                          flush_every=3600.0)  # no timed flush: only the explicit one
    o = obs(rng)
    for step in range(12):
        nxt = {"image": np.concatenate([o["image"][3:], rng.integers(0, 256, (3, 8, 10),
                                                                         dtype=np.uint8)]),
               "proprio": rng.standard_normal(15).astype(np.float32)}
        rec.transition(Step(0, step, o, np.zeros(5, np.float32), 0.0, nxt, False, False, step,
                       step, 0))
        o = nxt
    assert rec.flush()
    log = SessionLog(tmp_path / "s.mcap")  # still being written: no footer yet
    assert log.cut and [t.step_index for t in log.transitions()] == list(range(12))
    rec.close()
    assert not rec.flush()  # closed: nothing to wait for


def test_a_robot_run_records_what_it_did(tmp_path):
    cfg = small_config()
    path, runner = record_session(tmp_path, cfg, steps=50)
    log = SessionLog(path)
    info = log.info()
    assert info.steps == 50 and info.episodes == 3 and not info.cut
    assert info.returns == pytest.approx(runner.returns)
    assert len(log.arm_states()) == 50 + 3  # every step read the arm, the last one too
    assert len(log.control_ticks()) == 50 * runner.ticks_per_step
    kinds = [e["kind"] for e in log.events()]
    assert kinds.count("reset") == 3 and kinds.count("episode_end") == 3


def test_truncated_files_open_and_say_where_they_were_cut(tmp_path):
    path, _ = record_session(tmp_path, small_config(), steps=60)
    whole = SessionLog(path)
    data = path.read_bytes()
    full = list(whole.messages())
    rng = np.random.default_rng(1)
    for cut_at in sorted(rng.integers(2000, len(data) - 1, 8)):
        cut = tmp_path / f"cut_{cut_at}.mcap"
        cut.write_bytes(data[:cut_at])
        log = SessionLog(cut)
        assert log.cut and "cut at byte" in log.cut_detail
        got = list(log.messages())
        assert len(got) <= len(full)
        assert got == full[:len(got)]  # a readable prefix, nothing invented
        info = log.info()
        assert info.cut and info.steps <= 60


@pytest.mark.parametrize("killed", ["robot process", "process group"])
def test_a_killed_robot_process_leaves_a_readable_file(tmp_path, killed):
    """SIGKILL of the robot process alone: its writer finishes the file and says why.
    SIGKILL of the writer too: a cut file whose flushed chunks read back."""
    script = textwrap.dedent(f"""
        import time, numpy as np
        from link.messages import Spaces
        from robot.backends.base import ArmState
        from robot.recorder import SessionRecorder
        rec = SessionRecorder({str(tmp_path / 'k.mcap')!r}, Spaces((6, 8, 10), 15, 5),
                              {{"config": "{{}}", "backend": "sim"}}, flush_every=0.1)
        s = ArmState(q=np.zeros(6), qd=np.zeros(6), t_ns=0)
        i = 0
        while True:
            rec.control_tick(0, i, i, s, np.zeros(6), False)
            i += 1
            if i % 100 == 0:
                print(i, flush=True)
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            cwd=os.getcwd(), text=True, start_new_session=True)
    for _ in range(5):  # >= 500 ticks queued, several chunks flushed
        proc.stdout.readline()
    if killed == "process group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log = SessionLog(tmp_path / "k.mcap")
    deadline = time.monotonic() + 30
    while killed == "robot process" and log.cut and time.monotonic() < deadline:
        time.sleep(0.1)  # the orphaned writer drains its pipe and finishes the file
        log = SessionLog(tmp_path / "k.mcap")
    if killed == "robot process":
        assert not log.cut and log.end["stop_reason"] == ORPHANED
    else:
        assert log.cut and log.end == {}
    ticks = log.control_ticks()
    assert len(ticks) > 100 and np.array_equal(ticks["tick"], np.arange(len(ticks)))


def test_a_dead_writer_is_reported_and_never_blocks_the_producers(tmp_path, caplog):
    rec = SessionRecorder(tmp_path / "s.mcap", SPACES, {"config": "{}", "backend": "sim"})
    state = ArmState(q=np.zeros(6), qd=np.zeros(6), t_ns=0)
    rec.control_tick(0, 0, 0, state, np.zeros(6), False)
    assert rec.flush() and rec.error is None
    rec._proc.kill()  # the writer process dies (out of memory, a bug)
    rec._proc.wait()
    with caplog.at_level(logging.ERROR, logger="robot.recorder"):
        for i in range(1, 200):
            rec.control_tick(0, i, i, state, np.zeros(6), False)
        assert not rec.flush(timeout=5.0)
        rec.close({"stop_reason": "steps done"}, timeout=5.0)
    assert "session writer process stopped" in rec.error
    assert sum("not recorded" in r.getMessage() for r in caplog.records) == 1
    assert rec.dropped > 0
    log = SessionLog(tmp_path / "s.mcap")  # what was flushed before the death reads back
    assert log.cut and log.control_ticks()["tick"].tolist() == [0]


def test_a_file_that_cannot_be_created_is_one_clear_error(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError, match="cannot record the session to .*taken: IsADirectoryError"):
        SessionRecorder(tmp_path / "taken", SPACES, {"config": "{}", "backend": "sim"})


def test_foreign_and_corrupt_files_get_clear_errors(tmp_path):
    with pytest.raises(SessionLogError, match="no session log"):
        SessionLog(tmp_path / "missing.mcap")
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"hello, not mcap at all" * 10)
    with pytest.raises(SessionLogError, match="not an MCAP file"):
        SessionLog(junk)
    foreign = tmp_path / "foreign.mcap"
    with open(foreign, "wb") as f:
        w = Writer(f)
        w.start(profile="ros2", library="other")
        w.finish()
    with pytest.raises(SessionLogError, match="not a madi session"):
        SessionLog(foreign)
    assert main(["sessions", "ls", str(tmp_path)]) == 0  # bad files are listed as bad


def small_session(path, steps=8):
    """A real session log of one chunk per message (the recorder flushes after each)."""
    rng = np.random.default_rng(0)
    rec = SessionRecorder(path, SPACES, {"config": "{}", "backend": "sim"}, flush_every=0.0)
    o = obs(rng)
    for step in range(steps):
        nxt = {"image": np.concatenate([o["image"][3:], rng.integers(0, 256, (3, 8, 10),
                                                                         dtype=np.uint8)]),
               "proprio": rng.standard_normal(15).astype(np.float32)}
        rec.transition(Step(0, step, o, rng.uniform(-1, 1, 5).astype(np.float32), 0.5, nxt, False,
                       step == steps - 1, step, step, 0))
        state = ArmState(q=rng.standard_normal(6), qd=rng.standard_normal(6), t_ns=step)
        rec.control_tick(0, step, step, state, np.zeros(6), stale=False)
        o = nxt
    rec.event("episode_end", episode=0)
    rec.close({"stop_reason": "steps done"})
    return rec.path


def chunks_of(data):
    """(first byte, end byte, messages) of each chunk of an intact file, by the mcap library."""
    summary = make_reader(io.BytesIO(data)).get_summary()
    out = []
    for index in summary.chunk_indexes:
        start, end = index.chunk_start_offset, index.chunk_start_offset + index.chunk_length
        chunk = next(StreamReader(io.BytesIO(data[start:end]), skip_magic=True,
                                  emit_chunks=True).records)
        assert isinstance(chunk, Chunk)
        out.append((start, end, [(summary.channels[r.channel_id].topic, r.log_time, r.data)
                                 for r in breakup_chunk(chunk, validate_crc=True)
                                 if isinstance(r, Message)]))
    return out


def assert_intact_chunks_read(log, chunks, damaged):
    """Every chunk not ``damaged(first, end)`` is read whole, in order; nothing is invented."""
    got = [(m.topic, m.log_time_ns, m.data) for m in log.messages()]
    pos = 0
    for start, end, messages in chunks:
        if got[pos:pos + len(messages)] == messages:
            pos += len(messages)
        else:
            assert damaged(start, end), f"the intact chunk at byte {start} was not read"
    assert pos == len(got), "messages that are in no chunk of the original"


def test_a_damaged_chunk_is_skipped_and_reported(tmp_path, caplog, capsys):
    path = small_session(tmp_path / "whole" / "session.mcap")
    data = path.read_bytes()
    chunks = chunks_of(data)
    assert len(chunks) == 17  # 8 transitions, 8 ticks, 1 event
    start, end, _ = chunks[3]
    bad = bytearray(data)
    bad[(start + end) // 2] ^= 0x10  # in the compressed data: zstd or the CRC fails
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "session.mcap").write_bytes(bad)
    log = SessionLog(tmp_path / "bad" / "session.mcap")
    assert not log.cut and [s.offset for s in log.skipped] == [start]
    assert_intact_chunks_read(log, chunks, lambda a, b: a == start)
    assert len(list(log.messages())) == sum(len(c[2]) for c in chunks) - 1
    assert f"skipped the damaged chunk at byte {start}" in caplog.text
    assert log.info().skipped == 1 and log.end["stop_reason"] == "steps done"
    # A damaged summary: the file is read in order, all of it.
    footer = next(StreamReader(io.BytesIO(data[-FOOTER_SIZE - 8:]), skip_magic=True).records)
    bad = bytearray(data)
    bad[footer.summary_start + 20] ^= 0x01
    (tmp_path / "bad" / "summary.mcap").write_bytes(bad)
    log = SessionLog(tmp_path / "bad" / "summary.mcap")
    assert not log.cut and not log.skipped and "summary is damaged" in caplog.text
    assert_intact_chunks_read(log, chunks, lambda a, b: False)
    assert main(["sessions", "ls", str(tmp_path / "bad" / "session.mcap")]) == 0
    out = capsys.readouterr().out
    assert "bad/session.mcap (1 damaged chunk skipped)" in out and "summary.mcap" not in out


def test_fuzzed_session_logs_never_crash_and_keep_every_intact_chunk(tmp_path):
    data = small_session(tmp_path / "session.mcap").read_bytes()
    chunks = chunks_of(data)
    rng = np.random.default_rng(9)
    variants = tmp_path / "variants"
    variants.mkdir()
    logging.disable(logging.WARNING)  # ~300 files' worth of skip and cut warnings
    try:
        for i in range(300):
            if i < 200:  # one flipped bit; only the chunk holding it may be lost
                at = int(rng.integers(len(data)))
                variant = bytearray(data)
                variant[at] ^= 1 << int(rng.integers(8))
                damaged = lambda a, b, at=at: a <= at < b  # noqa: E731
            else:  # cut: every chunk that ends before the cut is read
                at = int(rng.integers(len(data)))
                variant = data[:at]
                damaged = lambda a, b, at=at: b > at  # noqa: E731
            path = variants / f"v{i:03d}.mcap"
            path.write_bytes(variant)
            try:
                log = SessionLog(path)
                log.info()
            except SessionLogError:
                continue  # e.g. the magic or the 'session' metadata hit: a clear error
            assert_intact_chunks_read(log, chunks, damaged)
            assert {s.offset for s in log.skipped} <= {a for a, b, _ in chunks if damaged(a, b)}
            if i >= 200:
                assert log.cut and not log.skipped
        assert main(["sessions", "ls", str(variants)]) == 0  # no traceback, every file listed
    finally:
        logging.disable(logging.NOTSET)


def test_sessions_ls_takes_a_file_or_a_folder(tmp_path, capsys, caplog):
    path = small_session(tmp_path / "run" / "session.mcap")
    (tmp_path / "run" / "junk.mcap").write_bytes(b"not mcap")
    assert main(["sessions", "ls", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].endswith(f"whole  {path}") and " 8 " in out[1]
    assert main(["sessions", "ls", str(tmp_path)]) == 0  # the bad file does not stop the rest
    out = capsys.readouterr().out
    assert f"whole  {path}" in out and "bad    " in out and "not an MCAP file" in out
    assert main(["sessions", "ls", str(tmp_path / "nope")]) == 2
    assert "no file or folder" in caplog.text


def test_replay_backend_reproduces_rewards_and_actions(tmp_path):
    cfg = small_config()
    path, runner = record_session(tmp_path, cfg, steps=50)
    report = replay_backend(SessionLog(path), cfg, tmp_path / "replay")
    assert report["steps"] == 50 and report["skipped"] == []
    assert report["rewards_equal"] and report["reward_max_abs_diff"] == 0.0
    assert report["actions_equal_fraction"] == 1.0  # random actions, same seed


def test_replay_backend_with_weights_gives_the_same_actions(tmp_path):
    import torch

    from learner.policy import MadiPolicy

    cfg = small_config()
    s = spaces_of(cfg)

    def policy():
        torch.manual_seed(3)
        return MadiPolicy.from_config(cfg.agent, s.image_shape, s.proprio_dim, s.action_dim)

    recorder = SessionRecorder(tmp_path / "rec" / "session.mcap", s,
                               {"config": yaml.safe_dump(cfg.model_dump(mode="json")),
                                "backend": "sim"})
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path / "rec", link=None, total_steps=30,
                         realtime=False, policy=policy(), recorder=recorder)
    runner.policy_version = 1
    torch.manual_seed(7)
    runner.run()
    same_weights = policy()
    torch.manual_seed(7)  # the same sampling noise
    report = replay_backend(SessionLog(recorder.path), cfg, tmp_path / "replay",
                            policy=same_weights, policy_version=1)
    assert report["rewards_equal"] and report["actions_equal_fraction"] == 1.0


def test_reenact_a_sim_session_on_the_sim(tmp_path):
    cfg = small_config()
    path, _ = record_session(tmp_path, cfg, steps=40)
    with SimRig(cfg, realtime=False) as rig:
        report = reenact(SessionLog(path), cfg, rig, realtime=False)
    assert report["episodes"] == 2 and report["ticks"] == 40 * 5
    assert report["max_error_rad"] < 1e-9  # same commands, same start: the same path


def test_cli_replay_view_and_sessions_ls(tmp_path, capsys):
    cfg = small_config()
    path, _ = record_session(tmp_path, cfg, steps=25)
    assert main(["replay", str(path), "--view", str(tmp_path / "v.mp4")]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 1000
    assert main(["sessions", "ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sim" in out and "whole" in out and " 25 " in out
    assert main(["replay", str(tmp_path / "nope.mcap"), "--view", "x.mp4"]) == 2


def test_train_pretrains_from_recorded_sessions(tmp_path, caplog):
    cfg = small_config()
    path, _ = record_session(tmp_path, cfg, steps=40)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--steps", "20", "--out", str(out),
                 "--no-progress", "--pace", "fast", "--set", "agent.batch_size=8",
                 "--pretrain", str(path), "--pretrain-updates", "3"]) == 0
    assert "pretrained on 40 recorded transitions (3 updates" in (out / "learner.log").read_text()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**cfg.model_dump(mode="json"),
                                     "camera": {"subsample": 4}}))
    assert main(["train", "--config", str(other), "--steps", "20", "--out",
                 str(tmp_path / "run2"), "--pretrain", str(path)]) == 2
    assert "pretrain from sessions of the same task" in caplog.text
