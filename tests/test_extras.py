"""Install extras: what runs with none of them, and the line a missing one gives.

Each check runs ``madi`` in a child interpreter where the extra's modules cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ``ModuleNotFoundError``, as an
environment without the package does). PyTorch comes with the [learner] extra, which [sim]
and [real] include; a laptop that only looks at sessions installs no extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from test_session_log import record_session, small_config

from robot.backends.base import DeviceError

SIM_EXTRA = ("mujoco", "gymnasium")
REAL_EXTRA = ("rtde_control", "rtde_receive", "dashboard_client")
TORCH = ("torch",)
VIZ_EXTRA = ("rerun",)
NO_EXTRA = SIM_EXTRA + REAL_EXTRA + TORCH + VIZ_EXTRA  # `pip install madi-robot`


def madi_without(modules: tuple[str, ...], *argv: str, cwd=None) -> subprocess.CompletedProcess:
    """Run ``madi ARGV`` in ``cwd`` with ``modules`` unimportable; the finished process."""
    code = ("import sys\n"
            f"for name in {modules!r}:\n"
            "    sys.modules[name] = None\n"
            "from madi.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path, _ = record_session(tmp_path_factory.mktemp("extras"), small_config(), steps=25)
    return path


def requirements(extras: str) -> set[str]:
    """The distributions ``pip install 'madi-robot[EXTRAS]'`` asks for (pyproject.toml)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    names, todo = set(), [*project["dependencies"], f"madi-robot[{extras}]"]
    while todo:
        req = Requirement(todo.pop())
        if req.name != project["name"]:
            names.add(req.name)
        for extra in req.extras:
            todo += project["optional-dependencies"][extra]
    return names


def test_torch_comes_with_the_extras_that_train_or_run_a_policy():
    assert "torch" not in requirements("")
    for extras in ("learner", "sim", "real", "dev"):
        assert "torch" in requirements(extras), extras
    assert not requirements("learner") & {"mujoco", "gymnasium", "ur-rtde"}
    assert requirements("dev") >= requirements("sim,real,learner,bench,tensorboard,viz")


def test_sessions_are_listed_viewed_and_exported_with_no_extra(session, tmp_path):
    listed = madi_without(NO_EXTRA, "sessions", "ls", str(session))
    assert listed.returncode == 0, listed.stderr
    assert " 25 " in listed.stdout
    viewed = madi_without(NO_EXTRA, "replay", str(session), "--view",
                          str(tmp_path / "v.mp4"))
    assert viewed.returncode == 0, viewed.stderr
    assert (tmp_path / "v.mp4").stat().st_size > 1000
    exported = madi_without(NO_EXTRA, "sessions", "export", str(session), "--lerobot",
                            str(tmp_path / "lerobot"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "lerobot" / "meta" / "info.json").exists()


@pytest.mark.parametrize("argv", [["--help"], ["replay", "--help"], ["sessions", "--help"]])
def test_help_needs_no_extra(argv):
    done = madi_without(NO_EXTRA, *argv)
    assert done.returncode == 0, done.stderr
    assert "usage: madi" in done.stdout


def test_the_session_commands_import_no_extra(session):
    # not only working without them: not importing them where they are installed either
    code = ("import sys\n"
            "from madi.cli import build_parser, main\n"
            "for command in ('sessions', 'replay', 'keys'):\n"
            "    build_parser(command)\n"
            f"assert main(['sessions', 'ls', {str(session)!r}]) == 0\n"
            f"loaded = sorted(set(sys.modules) & set({NO_EXTRA!r}))\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_learner_process_imports_without_the_sim_or_real_extras():
    code = ("import sys\n"
            f"for name in {SIM_EXTRA + REAL_EXTRA!r}:\n"
            "    sys.modules[name] = None\n"
            "import madi.learner_cmd, learner.process\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("argv", [["sim", "--episodes", "1"],
                                  ["train", "--sync", "--steps", "10"],
                                  ["eval", "--checkpoint", "nope.pt"]])
def test_a_missing_sim_extra_is_one_line_naming_it(argv, tmp_path):
    assert_one_line_naming("sim", madi_without(SIM_EXTRA, *argv, cwd=tmp_path))


@pytest.mark.parametrize(("argv", "extra"), [
    (["train", "--sync", "--steps", "10"], "sim"),
    (["eval", "--checkpoint", "nope.pt"], "sim"),
    (["learner", "--bind", "ipc:///nowhere"], "learner"),
    (["robot", "--learner", "ipc:///nowhere"], "real"),
    (["replay", "SESSION", "--checkpoint", "policy.pt", "--view", "v.mp4"], "learner"),
])
def test_a_command_that_needs_torch_names_the_extra_that_brings_it(argv, extra, session,
                                                                   tmp_path):
    argv = [str(session) if arg == "SESSION" else arg for arg in argv]
    assert_one_line_naming(extra, madi_without(NO_EXTRA, *argv, cwd=tmp_path))


def assert_one_line_naming(extra: str, done: subprocess.CompletedProcess) -> None:
    """``done`` failed with one error line, no traceback, naming ``extra`` and its install."""
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"[{extra}] extra" in errors[0], errors[0]
    assert f"pip install 'madi-robot[{extra}]'" in errors[0], errors[0]


def test_a_missing_real_extra_names_it():
    code = ("import sys\n"
            f"for name in {REAL_EXTRA!r}:\n"
            "    sys.modules[name] = None\n"
            "from robot.backends.ur5 import load_ur_rtde\n"
            "load_ur_rtde()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert DeviceError.__name__ in done.stderr
    assert "[real] extra" in done.stderr and "pip install 'madi-robot[real]'" in done.stderr
