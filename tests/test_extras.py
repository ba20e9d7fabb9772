"""Install extras: what runs without the [sim] and [real] extras, and the line a missing one gives.

Each check runs ``madi`` in a child interpreter where the extra's modules cannot be imported
(``sys.modules[name] = None`` makes ``import name`` raise ``ModuleNotFoundError``, as an
environment without the package does).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_session_log import record_session, small_config

from robot.backends.base import DeviceError

SIM_EXTRA = ("mujoco", "gymnasium")
REAL_EXTRA = ("rtde_control", "rtde_receive", "dashboard_client")


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


def test_sessions_are_listed_viewed_and_exported_without_the_sim_or_real_extras(
        session, tmp_path):
    base = SIM_EXTRA + REAL_EXTRA
    listed = madi_without(base, "sessions", "ls", str(session))
    assert listed.returncode == 0, listed.stderr
    assert " 25 " in listed.stdout
    viewed = madi_without(base, "replay", str(session), "--view", str(tmp_path / "v.mp4"))
    assert viewed.returncode == 0, viewed.stderr
    assert (tmp_path / "v.mp4").stat().st_size > 1000
    exported = madi_without(base, "sessions", "export", str(session), "--lerobot",
                            str(tmp_path / "lerobot"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "lerobot" / "meta" / "info.json").exists()


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
    done = madi_without(SIM_EXTRA, *argv, cwd=tmp_path)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "[sim] extra" in errors[0] and "pip install 'madi-robot[sim]'" in errors[0]


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
