"""Export session logs as a LeRobotDataset (format v3.0), for LeRobot and the HF Hub.

``madi sessions export SESSION... --lerobot DIR`` writes, without the ``lerobot`` package
(it pins an older torch), the documented v3.0 layout
(https://huggingface.co/docs/lerobot/lerobot-dataset-v3; the reader is
``src/lerobot/datasets/`` of https://github.com/huggingface/lerobot)::

    DIR/meta/info.json                         schema, fps, totals, path templates
    DIR/meta/stats.json                        per-feature min/max/mean/std/count/q01..q99
    DIR/meta/tasks.parquet                     the task string (index "task") -> task_index
    DIR/meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks,
                                               data and video file + offsets, stats/...
    DIR/data/chunk-000/file-000.parquet        one row per frame (many episodes per file)
    DIR/videos/observation.images.wrist/chunk-000/file-000.mp4   the frames, concatenated

One LeRobot frame is one agent step ``t`` of a session (one recorded transition): the
observation the policy acted on, the action it chose, and what followed. Per-frame
columns (``N`` frames, ``n`` active joints, ``H x W`` the recorded camera size):

=========================  =========  ========  ===========================================
column                     dtype      shape     meaning
=========================  =========  ========  ===========================================
observation.images.wrist   video      H, W, 3   the newest wrist-camera frame of obs_t, RGB
                                                (in the mp4, not in the parquet)
observation.state          float32    3n        the proprio the agent saw: q (rad),
                                                qd / speed_max, the previous action
action                     float32    n         the action the policy chose, in [-1, 1]
                                                (joint speed as a fraction of speed_max)
next.reward                float32    1         reward of the step
next.done                  bool       1         the episode ended here (terminated or
                                                truncated)
next.terminated            bool       1         ended at a terminal state (no bootstrap)
session.frame_time         float64    1         capture time of the frame on the robot's
                                                monotonic clock, s after the episode's
                                                first frame (the measured times)
session.episode            int64      1         episode id in its session log
session.policy_version     int64      1         weights version that chose the action
timestamp                  float32    1         frame_index / fps, s (see below)
frame_index                int64      1         step in the episode, 0 first
episode_index              int64      1         episode in the dataset, 0 first
index                      int64      1         frame in the dataset, 0 first
task_index                 int64      1         0 (one task)
=========================  =========  ========  ===========================================

``timestamp`` is the nominal time ``frame_index / fps`` (fps from the sessions'
``task.agent_period``), as LeRobot's own recorder writes it: its readers fetch the video
frame whose presentation time equals ``from_timestamp + timestamp`` within 1e-4 s, and the
mp4 is constant frame rate. The measured capture times are in ``session.frame_time``.

Each recorded episode becomes one LeRobot episode; an episode with a gap (a damaged
chunk, a cut file) is split at the gap, and transitions whose camera frame cannot be
rebuilt (a delta message after a gap, before the next keyframe) are left out and counted.
Several sessions make one dataset; they must share the camera size, spaces and fps.

Video: AV1 by SVT-AV1 (``libsvtav1``, pix_fmt yuv420p, GOP 2, CRF 30, preset 12): the
encoder and settings of LeRobot's default ``VideoEncoderConfig``; the ffmpeg that
imageio-ffmpeg bundles has it, and AV1 in yuv420p also takes odd frame sizes (libx264
refuses them). The frames are lossy (mean absolute error of a few 8-bit levels).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from robot.session_log import TRANSITION, SessionLog, SessionLogError

logger = logging.getLogger(__name__)

#: Format version of the layout written (LeRobot's ``CODEBASE_VERSION``).
CODEBASE_VERSION = "v3.0"
#: The one camera: the UR5's wrist webcam.
CAMERA_KEY = "observation.images.wrist"
#: The task string of every frame.
TASK = ("Reach the red circle shown on the monitor: move the UR5 so its wrist camera sees "
        "the target large and centred.")
#: UR5 joint names, base to wrist 3 (index = joint number).
JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
#: Quantiles in the stats (LeRobot's ``DEFAULT_QUANTILES``).
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"

_SCALARS = ("next.reward", "next.done", "next.terminated", "session.frame_time",
            "session.episode", "session.policy_version", "timestamp", "frame_index",
            "episode_index", "index", "task_index")
_DTYPES = {"next.reward": "float32", "next.done": "bool", "next.terminated": "bool",
           "session.frame_time": "float64", "session.episode": "int64",
           "session.policy_version": "int64", "timestamp": "float32", "frame_index": "int64",
           "episode_index": "int64", "index": "int64", "task_index": "int64"}


class LeRobotExportError(SessionLogError):
    """The sessions cannot be exported as asked; the message says why and what to do."""


@dataclass
class ExportSummary:
    """What :func:`export_lerobot` wrote.

    Attributes:
        out_dir: The dataset folder.
        sessions: Session logs read.
        episodes: LeRobot episodes written.
        frames: Frames (agent steps) written.
        fps: Frames per second (1 / agent period).
        image_size: (height, width) of the camera frames, px.
        codec: The video encoder used.
        dropped: Transitions left out (frame not rebuildable after a gap).
        split: Recorded episodes split at a gap.
        data_files / video_files: Files written under ``data/`` and ``videos/``.
    """

    out_dir: Path
    sessions: int = 0
    episodes: int = 0
    frames: int = 0
    fps: int = 0
    image_size: tuple[int, int] = (0, 0)
    codec: str = ""
    dropped: int = 0
    split: int = 0
    data_files: list[str] = field(default_factory=list)
    video_files: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = ""
        if self.dropped or self.split:
            extra = (f"; {self.dropped} transitions left out after gaps, {self.split} "
                     "episodes split at a gap")
        return (f"LeRobotDataset {CODEBASE_VERSION} at {self.out_dir}: {self.episodes} episodes,"
                f" {self.frames} frames at {self.fps} fps from {self.sessions} session(s), "
                f"{self.image_size[1]}x{self.image_size[0]} {self.codec} video{extra}")


@dataclass
class _Episode:
    """One exported episode, gathered from a session's transitions."""

    session: Path
    episode_id: int
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8
    state: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    frame_time_ns: list[int] = field(default_factory=list)
    policy_version: list[int] = field(default_factory=list)
    last_step: int = -1


@dataclass(frozen=True)
class _Spec:
    """What every exported session must share."""

    fps: int
    image_hw: tuple[int, int]
    active_joints: tuple[int, ...]

    def __str__(self) -> str:
        return (f"{self.image_hw[1]}x{self.image_hw[0]} frames at {self.fps} fps, active "
                f"joints {list(self.active_joints)}")


def export_lerobot(sessions: list[Path], out_dir: Path, *, task: str = TASK,
                   crf: int = 30, gop: int = 2, preset: int = 12,
                   data_files_size_in_mb: float = 100, video_files_size_in_mb: float = 200,
                   chunks_size: int = 1000) -> ExportSummary:
    """Write session logs as one LeRobotDataset v3.0 (see the module docstring).

    Args:
        sessions: Session logs (``session.mcap``), in the order their episodes get
            indices.
        out_dir: Dataset folder; must not exist or be empty.
        task: The task string of every frame.
        crf: AV1 quality (lower: better, bigger; LeRobot's default 30).
        gop: Keyframe interval of the video, frames (LeRobot's default 2: fast seeking).
        preset: SVT-AV1 speed preset (LeRobot's default 12).
        data_files_size_in_mb: A new ``data/`` file starts (at an episode boundary) once
            one reaches this size.
        video_files_size_in_mb: An episode goes to a new mp4 file when it would bring the
            current one to this size (LeRobot's rule: each episode is encoded on its own,
            its mp4 measured, then joined to the file without re-encoding).
        chunks_size: Files per ``chunk-NNN`` folder.

    Returns:
        What was written.

    Raises:
        LeRobotExportError: If ``out_dir`` exists and is not an empty folder, no session is
            given, a session has no transitions (no camera frames) or a config this madi
            cannot read, or the sessions differ in camera size, joints or fps.
        SessionLogError: If a session log cannot be read.
    """
    out_dir = Path(out_dir)
    if not sessions:
        raise LeRobotExportError("no session logs to export: pass one or more session.mcap")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise LeRobotExportError(f"{out_dir} exists and is not an empty folder: pass a new "
                                 "folder for the dataset")
    spec: _Spec | None = None
    for path in sessions:  # check them all before writing anything
        log = SessionLog(path)
        this = _spec_of(log)
        if spec is not None and this != spec:
            raise LeRobotExportError(f"{path} records {this}, the sessions before it {spec}: "
                                     "export sessions of the same task and camera together")
        spec = this
        if next(log.messages(TRANSITION), None) is None:
            raise LeRobotExportError(f"{path} has no transitions (no camera frames) to export;"
                                     " leave it out")
        del log
    assert spec is not None
    summary = ExportSummary(out_dir=out_dir, sessions=len(sessions), codec="libsvtav1",
                            fps=spec.fps, image_size=spec.image_hw)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out_dir, spec, task, summary, crf=crf, gop=gop, preset=preset,
                     data_mb=data_files_size_in_mb, video_mb=video_files_size_in_mb,
                     chunks_size=chunks_size)
    try:
        for path in sessions:  # one session in memory at a time, one episode at a time
            for episode in _episodes_of(SessionLog(path), spec, summary):
                writer.add(episode)
        writer.finish()
    except BaseException:
        try:
            writer.abort()
        except LeRobotExportError:
            pass  # the first error is the one to report
        for child in out_dir.iterdir():  # it was empty: leave no half dataset
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        if created:
            out_dir.rmdir()
        raise
    return summary


def export_command(paths: list[Path], out_dir: Path | None) -> int:
    """``madi sessions export SESSION... --lerobot DIR``: export, print what was written.

    Args:
        paths: Session logs, or folders searched for ``*.mcap`` (in path order).
        out_dir: The ``--lerobot`` folder (None: not given).

    Returns:
        The exit code (0; 2 when ``--lerobot`` is missing).

    Raises:
        LeRobotExportError, SessionLogError: See :func:`export_lerobot`.
    """
    if out_dir is None:
        logger.error("sessions export needs --lerobot DIR: the folder for the dataset")
        return 2
    sessions: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob("*.mcap"))
            if not found:
                raise LeRobotExportError(f"no session logs (*.mcap) under {path}")
            sessions.extend(found)
        else:
            sessions.append(path)
    print(export_lerobot(sessions, out_dir))
    return 0


# ---------------------------------------------------------------------------- reading
def _spec_of(log: SessionLog) -> _Spec:
    """fps, camera size and active joints of a session, from the config it recorded."""
    from robot.config import ConfigError, config_from_dict

    try:
        data = yaml.safe_load(log.config_yaml()) or {}
        if not isinstance(data, dict):
            raise ConfigError("the recorded config is not a mapping")
        data.pop("calibration", None)  # camera intrinsics are not exported
        cfg = config_from_dict(data, str(log.path))
    except (yaml.YAMLError, ConfigError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LeRobotExportError(f"{log.path}: cannot read the config it recorded ({first})")\
            from None
    rate = 1.0 / cfg.task.agent_period
    if abs(rate - round(rate)) > 1e-6:
        raise LeRobotExportError(f"{log.path}: agent period {cfg.task.agent_period} s is not "
                                 "a whole number of steps per second; LeRobot's fps is an "
                                 "integer")
    return _Spec(int(round(rate)), tuple(cfg.camera.obs_size), tuple(cfg.arm.active_joints))


def _episodes_of(log: SessionLog, spec: _Spec, summary: ExportSummary) -> Iterator[_Episode]:
    """The session's episodes, each frame rebuilt from keyframes and deltas."""
    current: _Episode | None = None
    last_key: tuple[int, int] | None = None
    last_next_frame: np.ndarray | None = None
    n = len(spec.active_joints)
    for t in log.transitions():
        if t.frames.shape[2:] != spec.image_hw or t.action.shape != (n,) \
                or t.proprio.shape != (3 * n,):
            raise LeRobotExportError(f"{log.path}: a transition of shape frames "
                                     f"{t.frames.shape}, action {t.action.shape} does not "
                                     "fit the config the session recorded")
        key = (t.episode_id, t.step_index)
        follows = last_key is not None and key == (last_key[0], last_key[1] + 1)
        if t.keyframe:
            # frames[:k] is obs, frames[1:] next_obs: the newest frame of obs is frames[-2]
            obs_frame = t.frames[-2]
        elif follows and last_next_frame is not None:
            obs_frame = last_next_frame
        else:  # a delta whose predecessor is missing: the frame cannot be rebuilt
            summary.dropped += 1
            last_key, last_next_frame = None, None
            continue
        last_key, last_next_frame = key, t.frames[-1]
        if current is None or current.episode_id != t.episode_id \
                or t.step_index != current.last_step + 1:
            if current is not None:
                if current.episode_id == t.episode_id:
                    summary.split += 1
                yield current
            current = _Episode(log.path, t.episode_id)
        current.last_step = t.step_index
        current.frames.append(np.ascontiguousarray(obs_frame.transpose(1, 2, 0)))
        current.state.append(t.proprio)
        current.action.append(t.action)
        current.reward.append(t.reward)
        current.done.append(t.terminated or t.truncated)
        current.terminated.append(t.terminated)
        current.frame_time_ns.append(t.frame_time_ns)
        current.policy_version.append(t.policy_version)
    if current is not None:
        yield current


# ---------------------------------------------------------------------------- writing
def _features(spec: _Spec) -> dict[str, dict]:
    """The ``features`` of info.json (video info added once the first video is written)."""
    joints = [JOINT_NAMES[j] for j in spec.active_joints]
    h, w = spec.image_hw
    features: dict[str, dict] = {
        CAMERA_KEY: {"dtype": "video", "shape": [h, w, 3],
                     "names": ["height", "width", "channels"]},
        "observation.state": {
            "dtype": "float32", "shape": [3 * len(joints)],
            "names": ([f"{j}.pos" for j in joints] + [f"{j}.vel_frac" for j in joints]
                      + [f"{j}.prev_action" for j in joints])},
        "action": {"dtype": "float32", "shape": [len(joints)],
                   "names": [f"{j}.vel_frac" for j in joints]},
    }
    for key in _SCALARS:
        features[key] = {"dtype": _DTYPES[key], "shape": [1], "names": None}
    return features


def _arrow_type(ft: dict) -> pa.DataType:
    """The parquet column type LeRobot's ``get_hf_features_from_features`` reads back."""
    value = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
    return value if ft["shape"] == [1] else pa.list_(value, ft["shape"][0])


def _stats(values: np.ndarray, axis: int | tuple[int, ...]) -> dict[str, np.ndarray]:
    """min/max/mean/std/count/quantiles over ``axis`` (LeRobot's ``get_feature_stats``)."""
    values = values.astype(np.float64)
    out = {"min": values.min(axis=axis), "max": values.max(axis=axis),
           "mean": values.mean(axis=axis), "std": values.std(axis=axis),
           "count": np.array([values.shape[0]])}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(values, q, axis=axis)
    return out


def _aggregate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset stats from episode stats (LeRobot's ``aggregate_feature_stats``)."""
    counts = np.array([p["count"][0] for p in parts], np.float64)
    means = np.stack([p["mean"] for p in parts])
    shape = (-1,) + (1,) * (means.ndim - 1)
    total = counts.sum()
    mean = (means * counts.reshape(shape)).sum(axis=0) / total
    var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)
           * counts.reshape(shape)).sum(axis=0) / total
    out = {"min": np.min([p["min"] for p in parts], axis=0),
           "max": np.max([p["max"] for p in parts], axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    for q in QUANTILES:  # a bound across episodes, as LeRobot aggregates them
        key = f"q{round(q * 100):02d}"
        pick = np.min if q <= 0.5 else np.max
        out[key] = pick([p[key] for p in parts], axis=0)
    return out


def _json_stats(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


class _VideoFile:
    """One episode's mp4, written by the ffmpeg that imageio-ffmpeg bundles (frames on stdin)."""

    def __init__(self, path: Path, size_hw: tuple[int, int], fps: int, crf: int, gop: int,
                 preset: int):
        import imageio_ffmpeg

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        h, w = size_hw
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
               "-i", "-", "-an", "-c:v", "libsvtav1", "-pix_fmt", "yuv420p",
               "-g", str(gop), "-crf", str(crf), "-preset", str(preset), str(path)]
        self._log = tempfile.TemporaryFile()
        # SVT_LOG=1: SVT-AV1 prints errors only (else its banner goes to the terminal)
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._log, env={**os.environ, "SVT_LOG": "1"})

    def write(self, frame: np.ndarray) -> None:
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        except BrokenPipeError:
            self.close()  # raises with ffmpeg's message

    def close(self) -> None:
        if self._log.closed:
            return
        if self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        code = self._proc.wait()
        _raise_for_ffmpeg(code, self._log, self.path)


def _raise_for_ffmpeg(code: int, log: Any, path: Path) -> None:
    """Close ffmpeg's stderr file; raise LeRobotExportError with its last line if code != 0."""
    log.seek(0)
    err = log.read().decode(errors="replace").strip().splitlines()
    log.close()
    if code != 0:
        raise LeRobotExportError(f"ffmpeg could not write {path} (exit {code}): "
                                 f"{err[-1] if err else 'no message'}")


def _concat_mp4(parts: list[Path], out: Path) -> None:
    """Join mp4s of one codec into ``out`` without re-encoding (ffmpeg's concat demuxer).

    Raises:
        LeRobotExportError: If ffmpeg fails (its last error line is in the message).
    """
    import imageio_ffmpeg

    out.parent.mkdir(parents=True, exist_ok=True)
    if len(parts) == 1:
        shutil.move(parts[0], out)
        return
    listing = parts[0].parent / "concat.txt"
    # names only: ffmpeg reads them relative to the listing (no quoting of the user's path)
    listing.write_text("".join(f"file '{p.name}'\n" for p in parts))
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error",
           "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(out)]
    with tempfile.TemporaryFile() as log:
        code = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log).returncode
        _raise_for_ffmpeg(code, log, out)
    for part in parts:
        part.unlink()


class _Writer:
    """Writes the tables, videos and meta files of the dataset."""

    def __init__(self, root: Path, spec: _Spec, task: str, summary: ExportSummary, *,
                 crf: int, gop: int, preset: int, data_mb: float, video_mb: float,
                 chunks_size: int):
        self.root, self.spec, self.task, self.summary = root, spec, task, summary
        self.crf, self.gop, self.preset = crf, gop, preset
        self.data_mb, self.video_mb, self.chunks_size = data_mb, video_mb, chunks_size
        self.features = _features(spec)
        self.schema = pa.schema([(k, _arrow_type(ft)) for k, ft in self.features.items()
                                 if ft["dtype"] != "video"])
        self.rows: list[dict[str, Any]] = []
        self.stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.index = 0  # frames written
        self.data: pq.ParquetWriter | None = None
        self.data_path = root
        self.data_no = 0
        self.parts_dir = Path(tempfile.mkdtemp(prefix=".episodes-", dir=root))
        self.parts: list[Path] = []  # the episodes' mp4s of the video file being filled
        self.parts_mb, self.parts_frames = 0.0, 0
        self.video_no = 0

    def _file(self, number: int) -> tuple[int, int]:
        return number // self.chunks_size, number % self.chunks_size

    def add(self, ep: _Episode) -> None:
        """Append one episode: its rows, its video frames, its metadata row."""
        fps, e, n = self.spec.fps, len(self.rows), len(ep.frames)
        table = self._table(ep, e, self.index)
        if self.data is not None and self.data_path.stat().st_size / 2**20 >= self.data_mb:
            self.data.close()
            self.data, self.data_no = None, self.data_no + 1
        if self.data is None:
            chunk, file = self._file(self.data_no)
            self.data_path = self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
            self.data_path.parent.mkdir(parents=True, exist_ok=True)
            self.data = pq.ParquetWriter(self.data_path, self.schema, compression="snappy")
            self.summary.data_files.append(str(self.data_path.relative_to(self.root)))
        self.data.write_table(table)  # one row group per episode
        part = _VideoFile(self.parts_dir / f"episode-{e:06d}.mp4", self.spec.image_hw, fps,
                          self.crf, self.gop, self.preset)
        try:
            for frame in ep.frames:
                part.write(frame)
        finally:
            part.close()  # the episode's mp4 is complete: its size is final
        part_mb = part.path.stat().st_size / 2**20
        if self.parts and self.parts_mb + part_mb >= self.video_mb:  # LeRobot's rule
            self._close_video()
            self.video_no += 1
        start = self.parts_frames
        self.parts.append(part.path)
        self.parts_mb, self.parts_frames = self.parts_mb + part_mb, start + n
        d_chunk, d_file = self._file(self.data_no)
        v_chunk, v_file = self._file(self.video_no)
        ep_stats = self._episode_stats(ep, table)
        self.stats.append(ep_stats)
        row: dict[str, Any] = {
            "episode_index": e, "tasks": [self.task], "length": n,
            "data/chunk_index": d_chunk, "data/file_index": d_file,
            "dataset_from_index": self.index, "dataset_to_index": self.index + n,
            f"videos/{CAMERA_KEY}/chunk_index": v_chunk,
            f"videos/{CAMERA_KEY}/file_index": v_file,
            f"videos/{CAMERA_KEY}/from_timestamp": start / fps,
            f"videos/{CAMERA_KEY}/to_timestamp": (start + n) / fps,
        }
        for key, st in ep_stats.items():
            for name, value in st.items():
                row[f"stats/{key}/{name}"] = np.asarray(value).tolist()
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self.rows.append(row)
        self.index += n
        self.summary.episodes, self.summary.frames = len(self.rows), self.index

    def finish(self) -> None:
        """Close the data and video files; write the meta files."""
        if self.parts:
            self._close_video()
        self.abort()
        if not self.rows:
            raise LeRobotExportError("no frame of the sessions could be rebuilt (every "
                                     "transition follows a gap): nothing to export")
        self._write_meta(self.rows, self.stats, self.index)

    def _close_video(self) -> None:
        """Join the episodes' mp4s into the video file they belong to."""
        chunk, file = self._file(self.video_no)
        path = self.root / VIDEO_PATH.format(video_key=CAMERA_KEY, chunk_index=chunk,
                                             file_index=file)
        parts, self.parts, self.parts_mb, self.parts_frames = self.parts, [], 0.0, 0
        _concat_mp4(parts, path)
        self.summary.video_files.append(str(path.relative_to(self.root)))

    def abort(self) -> None:
        """Close the data file being written; delete the episodes' mp4s not yet joined."""
        data, self.data = self.data, None
        try:
            if data is not None:
                data.close()
        finally:
            shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _table(self, ep: _Episode, e: int, index: int) -> pa.Table:
        n, fps = len(ep.frames), self.spec.fps
        t_ns = np.asarray(ep.frame_time_ns, np.int64)
        cols = {
            "observation.state": np.stack(ep.state).astype(np.float32),
            "action": np.stack(ep.action).astype(np.float32),
            "next.reward": np.asarray(ep.reward, np.float32),
            "next.done": np.asarray(ep.done, bool),
            "next.terminated": np.asarray(ep.terminated, bool),
            "session.frame_time": (t_ns - t_ns[0]) / 1e9,
            "session.episode": np.full(n, ep.episode_id, np.int64),
            "session.policy_version": np.asarray(ep.policy_version, np.int64),
            "timestamp": (np.arange(n) / fps).astype(np.float32),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, e, np.int64),
            "index": np.arange(index, index + n, dtype=np.int64),
            "task_index": np.zeros(n, np.int64),
        }
        arrays = []
        for name in self.schema.names:
            value = cols[name]
            if value.ndim == 2:
                arrays.append(pa.FixedSizeListArray.from_arrays(
                    pa.array(value.reshape(-1)), value.shape[1]))
            else:
                arrays.append(pa.array(value))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _episode_stats(self, ep: _Episode, table: pa.Table) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        # images: per channel, in [0, 1], shape (3, 1, 1); up to 100 frames sampled evenly
        pick = np.unique(np.linspace(0, len(ep.frames) - 1, min(100, len(ep.frames)))
                         .round().astype(int))
        images = np.stack([ep.frames[i] for i in pick]).transpose(0, 3, 1, 2) / 255.0
        st = _stats(images, axis=(0, 2, 3))
        out[CAMERA_KEY] = {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in st.items()}
        for name in self.schema.names:
            column = table.column(name)
            if pa.types.is_fixed_size_list(column.type):
                values = np.stack(column.to_pylist())
            else:
                values = column.to_numpy(zero_copy_only=False).reshape(-1, 1)
            out[name] = _stats(values, axis=0)
        return out

    def _write_meta(self, rows: list[dict[str, Any]], stats: list[dict], total: int) -> None:
        meta = self.root / "meta"
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
        # tasks: pandas' layout (LeRobot reads it with pd.read_parquet, index named "task")
        tasks = pa.table({"task_index": pa.array([0], pa.int64()),
                          "task": pa.array([self.task])})
        tasks = tasks.replace_schema_metadata({b"pandas": json.dumps(_pandas_meta()).encode()})
        pq.write_table(tasks, meta / "tasks.parquet")
        keys = list(stats[0])
        (meta / "stats.json").write_text(json.dumps(
            {k: _json_stats(_aggregate([s[k] for s in stats])) for k in keys}, indent=4))
        features = self.features
        features[CAMERA_KEY]["info"] = {
            "video.height": self.spec.image_hw[0], "video.width": self.spec.image_hw[1],
            "video.codec": "av1", "video.pix_fmt": "yuv420p", "video.fps": self.spec.fps,
            "video.channels": 3, "video.g": self.gop, "video.crf": self.crf,
            "video.preset": self.preset, "video.fast_decode": 0,
            "video.video_backend": "pyav", "video.extra_options": {},
            "has_audio": False, "is_depth_map": False}
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": "ur5",
            "total_episodes": len(rows), "total_frames": total, "total_tasks": 1,
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": _mb(self.data_mb),
            "video_files_size_in_mb": _mb(self.video_mb), "fps": self.spec.fps,
            "splits": {"train": f"0:{len(rows)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features}
        (meta / "info.json").write_text(json.dumps(info, indent=4))


def _mb(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _pandas_meta() -> dict[str, Any]:
    """The ``pandas`` schema metadata of a frame with index "task" and column task_index."""
    return {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                            "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }


__all__ = ["CAMERA_KEY", "CODEBASE_VERSION", "TASK", "ExportSummary", "LeRobotExportError",
           "export_command", "export_lerobot"]
