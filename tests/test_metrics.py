"""Metrics sinks: TensorBoard and W&B get the rows of metrics.csv, under the same keys."""

from __future__ import annotations

import csv
import importlib.machinery
import sys
import types
from pathlib import Path

import pytest

from learner.metrics import MetricsSinkError, MetricsWriter, SinkConfig
from learner.plots import eval_curve
from robot.runner import EVAL_FIELDS

ROWS = [
    {"global_step": 10, "time_s": 1.5, "charts/episode_return": -3.25,
     "charts/episode_length": 10},
    {"global_step": 20, "time_s": 2.0, "losses/critic": 0.5, "charts/updates": 4},
    {"global_step": 30, "time_s": 3.0, "charts/episode_return": -1.0,
     "charts/episode_length": 10, "charts/eval_return": 2.5},
]


def _write(path: Path, sinks: SinkConfig) -> None:
    writer = MetricsWriter(path, sinks)
    for row in ROWS:
        writer.write(row)
    writer.close()


def _csv_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Key -> (global_step, value) of every non-empty cell but global_step's."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and key != "global_step":
                    series.setdefault(key, []).append((int(row["global_step"]), float(value)))
    return series


def test_tensorboard_events_hold_the_csv_keys_and_steps(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write(tmp_path / "metrics.csv", SinkConfig(tensorboard=True))
    expected = _csv_series(tmp_path / "metrics.csv")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for key, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(step, pytest.approx(value)) for step, value in points], key


def test_a_sink_whose_package_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard: ImportError
    monkeypatch.setitem(sys.modules, "wandb", None)
    _write(tmp_path / "metrics.csv", SinkConfig(tensorboard="auto"))
    assert (tmp_path / "metrics.csv").is_file() and not (tmp_path / "tb").exists()
    for sinks, fix in [(SinkConfig(tensorboard=True), "pip install tensorboard"),
                       (SinkConfig(tensorboard=False, wandb="offline"), "pip install wandb")]:
        with pytest.raises(MetricsSinkError, match=fix) as err:
            MetricsWriter(tmp_path / "other.csv", sinks)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "other.csv").exists()


class _FakeWandb(types.ModuleType):
    """The part of the wandb API the sink uses, recording its calls."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.init_kwargs: dict = {}
        self.calls: list[tuple] = []

    def Settings(self, **kwargs):  # noqa: N802 - wandb's name
        return kwargs

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        self.id = kwargs["id"] or f"run{len(self.calls)}"  # wandb makes an id when given none
        return self

    def define_metric(self, *args, **kwargs):
        self.calls.append(("define_metric", args, kwargs))

    def log(self, row):
        self.calls.append(("log", dict(row)))

    def finish(self):
        self.calls.append(("finish",))


def test_wandb_sink_logs_the_csv_rows_against_global_step(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_dir = tmp_path / "2026-01-01_sim_seed0"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 3\ntrain:\n  total_steps: 30\n")
    _write(run_dir / "metrics.csv", SinkConfig(tensorboard=False, wandb="offline",
                                               wandb_project="reacher"))
    kw = fake.init_kwargs
    assert (kw["mode"], kw["project"], kw["name"]) == ("offline", "reacher", run_dir.name)
    assert kw["dir"] == str(run_dir) and kw["config"] == {"seed": 3, "train": {"total_steps": 30}}
    assert fake.calls[0] == ("define_metric", ("*",), {"step_metric": "global_step"})
    assert fake.calls[1:] == [("log", row) for row in ROWS] + [("finish",)]
    assert (kw["id"], kw["resume"]) == (None, "allow")
    assert (run_dir / "wandb_run_id").read_text() == "run0"


def test_a_second_writer_in_the_run_dir_resumes_its_wandb_run(tmp_path, monkeypatch):
    """madi train's final evaluation (and --resume) log to the learner's W&B run."""
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sinks = SinkConfig(tensorboard=False, wandb="online")
    _write(tmp_path / "metrics.csv", sinks)
    first = fake.init_kwargs["id"], fake.id
    MetricsWriter(tmp_path / "metrics.csv", sinks).close()
    assert first == (None, "run0")
    assert (fake.init_kwargs["id"], fake.init_kwargs["resume"]) == ("run0", "allow")
    assert (tmp_path / "wandb_run_id").read_text() == "run0"


def test_wandb_offline_run_without_network(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _write(tmp_path / "metrics.csv", SinkConfig(tensorboard=False, wandb="offline"))
    run_id = (tmp_path / "wandb_run_id").read_text()
    again = MetricsWriter(tmp_path / "metrics.csv", SinkConfig(False, "offline"))
    again.write({"global_step": 40, "charts/final_eval_return": 7.0})
    again.close()
    wandb.teardown()  # the service writes the run's file out when it stops
    logs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert logs and {log.name for log in logs} == {f"run-{run_id}.wandb"}  # one W&B run
    data = b"".join(log.read_bytes() for log in logs)
    assert all(key.encode() in data for key in ("global_step", "charts/eval_return",
                                                "charts/final_eval_return"))


def test_train_config_chooses_the_sinks():
    from madi.cli import QUICK_CONFIG
    from robot.config import load_config

    assert load_config(QUICK_CONFIG).train.sinks() == SinkConfig()  # auto, no W&B
    cfg = load_config(QUICK_CONFIG, ["train.tensorboard=false", "train.wandb=offline",
                                     "train.wandb_project=reacher"])
    assert cfg.train.sinks() == SinkConfig(False, "offline", "reacher")


def test_madi_train_names_the_missing_package(tmp_path, monkeypatch, caplog):
    from madi.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["train", "--sync", "--steps", "5", "--out", str(tmp_path / "run"),
                 "--set", "train.wandb=offline", "--no-progress"]) == 2
    assert "pip install wandb" in caplog.text


def test_eval_curve_reads_the_sync_metrics_or_the_robot_processes_eval_csv(tmp_path):
    sync_run, async_run = tmp_path / "sync", tmp_path / "async"
    for run in (sync_run, async_run):
        run.mkdir()
    _write(sync_run / "metrics.csv", SinkConfig())
    # madi train: the learner's metrics have no evaluation; the robot process's eval.csv does
    writer = MetricsWriter(async_run / "metrics.csv", SinkConfig())
    writer.write(ROWS[0])
    writer.close()
    with open(async_run / "eval.csv", "w", newline="") as f:
        rows = csv.DictWriter(f, fieldnames=EVAL_FIELDS)
        rows.writeheader()
        for step, ret in ((4050, 10.0), (4050, 30.0), (8100, 100.0), (8100, 300.0)):
            rows.writerow({"env_steps": step, "distractions": "none", "episode": 0,
                           "return": ret, "success": 0, "policy_version": 1})
    assert eval_curve(sync_run) == eval_curve(sync_run / "metrics.csv") == ([30], [2.5])
    assert eval_curve(async_run) == ([4050, 8100], [20.0, 200.0])
    (async_run / "eval.csv").unlink()
    assert eval_curve(async_run) == ([], [])
