"""LeRobotDataset v3.0 export of session logs (robot/lerobot_export.py).

Sessions are recorded by the real robot loop on the sim rig (fast pace) through a recorder
that also keeps what it was handed; the export is read back with pyarrow, json and the
bundled ffmpeg, and compared frame by frame with what the agent saw.
"""

from __future__ import annotations

import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from link.messages import Step
from madi.cli import main
from robot.backends.sim import SimRig
from robot.config import config_from_dict
from robot.lerobot_export import (
    CAMERA_KEY,
    TASK,
    LeRobotExportError,
    export_lerobot,
)
from robot.recorder import SessionRecorder
from robot.runner import RobotRunner, spaces_of
from robot.session_log import SessionLogError


class KeepingRecorder(SessionRecorder):
    """A recorder that also keeps every transition it was handed (the ground truth)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = []

    def transition(self, step):
        s = step
        self.sent.append({"episode": s.episode_id, "step": s.step_index,
                          "frame": s.obs["image"][-3:].transpose(1, 2, 0).copy(),
                          "state": s.obs["proprio"].copy(), "action": np.array(s.action),
                          "reward": s.reward, "done": s.terminated or s.truncated,
                          "terminated": s.terminated, "t_ns": s.frame_time_ns})
        super().transition(step)


def small_config(subsample=8, steps=12):
    return config_from_dict({
        "camera": {"subsample": subsample},
        "task": {"episode_steps": steps},
        "arm": {"reset_duration": 0.1},
        "sim": {"pace": "fast"},
        "agent": {"masker_filters": 4, "encoder_filters": 8, "mlp_hidden": [32, 32]},
    })


def record(path, cfg, steps, keyframe_every=250):
    recorder = KeepingRecorder(path, spaces_of(cfg),
                               {"config": yaml.safe_dump(cfg.model_dump(mode="json")),
                                "backend": cfg.backend}, keyframe_every=keyframe_every)
    RobotRunner(cfg, SimRig(cfg), path.parent, link=None, total_steps=steps,
                realtime=False, recorder=recorder).run()
    return path, recorder.sent


def episodes_of(sent):
    """The recorded transitions grouped by episode, in order."""
    out = []
    for s in sent:
        if not out or out[-1][0]["episode"] != s["episode"]:
            out.append([])
        out[-1].append(s)
    return out


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Two sessions of an 80x45 camera (odd height): 12+12+6 and 7 steps."""
    root = tmp_path_factory.mktemp("sessions")
    cfg = small_config()
    a = record(root / "a" / "session.mcap", cfg, 30, keyframe_every=5)
    b = record(root / "b" / "session.mcap", cfg, 7)
    return [a, b]


def decode(path):
    """All frames of an mp4, RGB uint8 (H, W, 3), and the size ffmpeg reports."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in reader]
    return frames, meta


def presentation_times(path):
    """Each video packet's presentation time, s (ffmpeg's framecrc, no decoding)."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path),
                          "-map", "0:v", "-c", "copy", "-f", "framecrc", "-"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    num, den = next(line for line in out if line.startswith("#tb 0:")).split()[-1].split("/")
    pts = [int(line.split(",")[1]) for line in out if not line.startswith("#")]
    return np.sort(np.array(pts)) * int(num) / int(den)


def check_dataset(root, expected, fps=25):
    """Everything a LeRobot v3.0 reader relies on, against the recorded transitions."""
    info = json.loads((root / "meta" / "info.json").read_text())
    n_frames = sum(len(e) for e in expected)
    assert info["codebase_version"] == "v3.0" and info["fps"] == fps
    assert info["total_episodes"] == len(expected) and info["total_frames"] == n_frames
    assert info["total_tasks"] == 1 and info["splits"] == {"train": f"0:{len(expected)}"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == ("videos/{video_key}/chunk-{chunk_index:03d}/"
                                  "file-{file_index:03d}.mp4")
    h, w = expected[0][0]["frame"].shape[:2]
    feats = info["features"]
    assert feats[CAMERA_KEY]["dtype"] == "video" and feats[CAMERA_KEY]["shape"] == [h, w, 3]
    assert feats[CAMERA_KEY]["names"] == ["height", "width", "channels"]
    assert feats[CAMERA_KEY]["info"]["video.codec"] == "av1"
    assert feats["observation.state"]["shape"] == [15]
    assert len(feats["observation.state"]["names"]) == 15
    assert feats["action"]["names"] == ["shoulder_pan.vel_frac", "shoulder_lift.vel_frac",
                                        "elbow.vel_frac", "wrist_1.vel_frac",
                                        "wrist_2.vel_frac"]
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index",
                "next.reward", "next.done"):
        assert feats[key]["shape"] == [1]

    tasks = pq.read_table(root / "meta" / "tasks.parquet")
    assert tasks.column("task").to_pylist() == [TASK]
    assert tasks.column("task_index").to_pylist() == [0]

    eps = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    eps = eps.to_pylist()
    assert [e["episode_index"] for e in eps] == list(range(len(expected)))

    data_cache, video_cache = {}, {}
    start = 0
    for e, (ep, want) in enumerate(zip(eps, expected, strict=True)):
        n = len(want)
        assert ep["length"] == n and ep["tasks"] == [TASK]
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (start, start + n)
        start += n
        data_file = root / info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                    file_index=ep["data/file_index"])
        if data_file not in data_cache:
            data_cache[data_file] = pq.read_table(data_file).to_pydict()
        table = data_cache[data_file]
        # the rows dataset_from_index..to_index of the data files (in file order)
        rows = [i for i, idx in enumerate(table["index"])
                if ep["dataset_from_index"] <= idx < ep["dataset_to_index"]]
        assert len(rows) == n and rows == list(range(rows[0], rows[0] + n))
        get = {k: [v[i] for i in rows] for k, v in table.items()}
        assert get["episode_index"] == [e] * n and get["frame_index"] == list(range(n))
        assert get["task_index"] == [0] * n
        np.testing.assert_array_equal(get["timestamp"],
                                      (np.arange(n) / fps).astype(np.float32))
        np.testing.assert_array_equal(np.array(get["observation.state"], np.float32),
                                      np.stack([s["state"] for s in want]))
        np.testing.assert_array_equal(np.array(get["action"], np.float32),
                                      np.stack([s["action"] for s in want]).astype(np.float32))
        np.testing.assert_array_equal(get["next.reward"],
                                      np.float32([s["reward"] for s in want]))
        assert get["next.done"] == [s["done"] for s in want]
        assert get["next.done"][-1] and not any(get["next.done"][:-1])
        assert get["next.terminated"] == [s["terminated"] for s in want]
        t_ns = np.array([s["t_ns"] for s in want])
        np.testing.assert_array_equal(get["session.frame_time"], (t_ns - t_ns[0]) / 1e9)
        assert get["session.episode"] == [want[0]["episode"]] * n

        # video: the episode's frames are from_timestamp..to_timestamp of its file
        key = f"videos/{CAMERA_KEY}"
        video = root / info["video_path"].format(video_key=CAMERA_KEY,
                                                 chunk_index=ep[f"{key}/chunk_index"],
                                                 file_index=ep[f"{key}/file_index"])
        if video not in video_cache:
            video_cache[video] = decode(video)
            # LeRobot's decoders take the frame whose time is from_timestamp + timestamp,
            # within 1e-4 s: the video is constant frame rate, frame j at j / fps
            np.testing.assert_allclose(presentation_times(video),
                                       np.arange(len(video_cache[video][0])) / fps,
                                       rtol=0, atol=1e-6)
        frames, meta = video_cache[video]
        assert tuple(meta["size"]) == (w, h) and meta["fps"] == fps
        first = round(ep[f"{key}/from_timestamp"] * fps)
        assert abs(ep[f"{key}/from_timestamp"] * fps - first) < 1e-6
        assert ep[f"{key}/to_timestamp"] == pytest.approx((first + n) / fps)
        got = frames[first:first + n]
        src = [s["frame"].astype(np.int16) for s in want]
        assert len(got) == n
        for i, frame in enumerate(got):
            own = np.abs(frame - src[i]).mean()
            assert own < 6.0, f"episode {e} frame {i}: mean abs error {own:.2f}"
            for j in (i - 1, i + 1):  # closer to its own frame than to its neighbours'
                if 0 <= j < n and np.abs(src[j] - src[i]).mean() > 2 * own:
                    assert own < np.abs(frame - src[j]).mean(), (e, i, j)
    assert start == n_frames
    for video, (frames, _) in video_cache.items():  # no frames beyond the episodes
        in_file = [ep["length"] for ep in eps
                   if root / info["video_path"].format(
                       video_key=CAMERA_KEY, chunk_index=ep[f"videos/{CAMERA_KEY}/chunk_index"],
                       file_index=ep[f"videos/{CAMERA_KEY}/file_index"]) == video]
        assert len(frames) == sum(in_file)
    return info, eps


def test_export_matches_the_sessions_frame_by_frame(sessions, tmp_path):
    paths = [p for p, _ in sessions]
    expected = [ep for _, sent in sessions for ep in episodes_of(sent)]
    assert [len(e) for e in expected] == [12, 12, 6, 7]
    summary = export_lerobot(paths, tmp_path / "ds")
    assert (summary.episodes, summary.frames, summary.fps) == (4, 37, 25)
    assert summary.image_size == (45, 80) and summary.dropped == summary.split == 0
    root = tmp_path / "ds"
    info, eps = check_dataset(root, expected)
    assert summary.data_files == ["data/chunk-000/file-000.parquet"]
    assert summary.video_files == [f"videos/{CAMERA_KEY}/chunk-000/file-000.mp4"]
    # stats.json: per feature, images per channel in [0, 1]
    stats = json.loads((root / "meta" / "stats.json").read_text())
    actions = np.concatenate([[s["action"] for s in ep] for ep in expected])
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(axis=0), rtol=1e-4)
    assert stats["action"]["count"] == [37] and set(stats["action"]) >= {"q01", "q99"}
    assert np.array(stats[CAMERA_KEY]["mean"]).shape == (3, 1, 1)
    assert 0 <= np.min(stats[CAMERA_KEY]["min"]) <= np.max(stats[CAMERA_KEY]["max"]) <= 1
    assert stats["index"]["max"] == [36]
    assert eps[0][f"stats/{CAMERA_KEY}/mean"] is not None
    pd = pytest.importorskip("pandas")
    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")  # as LeRobot's load_tasks
    assert tasks.index.name == "task" and int(tasks.loc[TASK].task_index) == 0


def test_new_files_start_at_the_size_limits(sessions, tmp_path):
    """Tiny limits: every episode opens new data and video files, offsets restart at 0."""
    path, sent = sessions[0]
    root = tmp_path / "ds"
    summary = export_lerobot([path], root, data_files_size_in_mb=1e-6,
                             video_files_size_in_mb=1e-6, chunks_size=2)
    assert len(summary.data_files) == len(summary.video_files) == 3
    assert summary.data_files[2] == "data/chunk-001/file-000.parquet"
    _, eps = check_dataset(root, episodes_of(sent))
    assert [e[f"videos/{CAMERA_KEY}/from_timestamp"] for e in eps] == [0.0, 0.0, 0.0]
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in eps] == \
        [(0, 0), (0, 1), (1, 0)]


def test_episodes_share_a_video_file_until_the_next_would_reach_the_limit(sessions, tmp_path):
    """LeRobot's rule on measured sizes: ep 0 + ep 1 fit under the limit, ep 2 would not."""
    path, sent = sessions[0]
    alone = export_lerobot([path], tmp_path / "alone", video_files_size_in_mb=1e-6)
    sizes = [(tmp_path / "alone" / f).stat().st_size / 2**20 for f in alone.video_files]
    limit = sizes[0] + sizes[1] + sizes[2] / 2
    summary = export_lerobot([path], tmp_path / "ds", video_files_size_in_mb=limit)
    assert summary.video_files == [f"videos/{CAMERA_KEY}/chunk-000/file-{i:03d}.mp4"
                                   for i in (0, 1)]
    assert summary.data_files == ["data/chunk-000/file-000.parquet"]
    _, eps = check_dataset(tmp_path / "ds", episodes_of(sent))
    assert [e[f"videos/{CAMERA_KEY}/file_index"] for e in eps] == [0, 0, 1]
    assert [e[f"videos/{CAMERA_KEY}/from_timestamp"] for e in eps] == \
        [0.0, eps[0]["length"] / summary.fps, 0.0]
    assert not list((tmp_path / "ds").glob(".episodes-*"))  # the per-episode mp4s are gone


def synthetic(path, steps, config="{}", episode=0, skip=()):
    """A session recorded directly (the default config: 160x90 camera, 5 joints)."""
    rng = np.random.default_rng(len(str(path)))
    rec = SessionRecorder(path, spaces_of(config_from_dict(yaml.safe_load(config) or {})),
                          {"config": config, "backend": "sim"})
    h, w = (90, 160) if config == "{}" else (45, 80)
    image = rng.integers(0, 256, (9, h, w), dtype=np.uint8)
    sent = []
    for step in range(steps):
        nxt = np.concatenate([image[3:], rng.integers(0, 256, (3, h, w), dtype=np.uint8)])
        if step not in skip:
            proprio = rng.standard_normal(15).astype(np.float32)
            action = rng.uniform(-1, 1, 5).astype(np.float32)
            rec.transition(Step(episode, step, {"image": image, "proprio": proprio}, action, 0.5,
                           {"image": nxt, "proprio": proprio}, False, step == steps - 1,
                           1000 * step, 1000 * step + 1, 0))
            sent.append({"episode": episode, "step": step,
                         "frame": image[-3:].transpose(1, 2, 0), "state": proprio,
                         "action": action, "reward": 0.5, "done": step == steps - 1,
                         "terminated": False, "t_ns": 1000 * step})
        image = nxt
    rec.close({"stop_reason": "test"})
    return path, sent


def test_an_episode_with_a_gap_is_split(tmp_path):
    path, sent = synthetic(tmp_path / "s.mcap", 10, skip=(4, 5))
    summary = export_lerobot([path], tmp_path / "ds")
    assert summary.split == 1 and summary.episodes == 2 and summary.frames == 8
    assert summary.image_size == (90, 160)
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())
    assert info["total_frames"] == 8
    data = pq.read_table(tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet")
    assert data.column("frame_index").to_pylist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert data.column("session.episode").to_pylist() == [0] * 8
    frames, _ = decode(tmp_path / "ds" / "videos" / CAMERA_KEY / "chunk-000" / "file-000.mp4")
    assert len(frames) == 8


def test_refusals(sessions, tmp_path, caplog):
    path = sessions[1][0]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    with pytest.raises(LeRobotExportError, match="not an empty folder"):
        export_lerobot([path], busy)
    with pytest.raises(LeRobotExportError, match="no session logs"):
        export_lerobot([], tmp_path / "out")
    with pytest.raises(SessionLogError, match="no session log at"):
        export_lerobot([tmp_path / "nope.mcap"], tmp_path / "out")
    empty = SessionRecorder(tmp_path / "empty.mcap", spaces_of(config_from_dict({})),
                            {"config": "{}", "backend": "sim"})
    empty.close({"stop_reason": "test"})
    with pytest.raises(LeRobotExportError, match="has no transitions"):
        export_lerobot([tmp_path / "empty.mcap"], tmp_path / "out")
    other, _ = synthetic(tmp_path / "other.mcap", 3)  # a 160x90 camera
    with pytest.raises(LeRobotExportError, match="of the same task and camera"):
        export_lerobot([path, other], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on a refusal
    with pytest.raises(LeRobotExportError, match="ffmpeg could not write"):
        export_lerobot([path], tmp_path / "out", crf=999)  # fails while writing
    assert not (tmp_path / "out").exists()  # no half dataset left
    assert issubclass(LeRobotExportError, ValueError)
    # the command line: a one-line error, exit code 2
    assert main(["sessions", "export", str(path), "--lerobot", str(busy)]) == 2
    assert "not an empty folder" in caplog.text
    assert main(["sessions", "export", str(path)]) == 2
    assert "needs --lerobot DIR" in caplog.text


def test_cli_export_and_ls_of_several(sessions, tmp_path, capsys):
    a, b = (p for p, _ in sessions)
    out = tmp_path / "ds"
    assert main(["sessions", "export", str(a.parent), str(b), "--lerobot", str(out)]) == 0
    assert "4 episodes, 37 frames at 25 fps from 2 session(s)" in capsys.readouterr().out
    assert json.loads((out / "meta" / "info.json").read_text())["total_frames"] == 37
    assert main(["sessions", "ls", str(a), str(b)]) == 0
    assert capsys.readouterr().out.count("session.mcap") == 2
