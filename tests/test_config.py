import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from robot.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, Config)


def test_sim_and_real_configs_pose_the_same_task():
    sim = load_config(CONFIGS / "sim_ur5_visual_reacher.yaml")
    real = load_config(CONFIGS / "ur5_visual_reacher.yaml")
    assert sim.backend == "sim" and real.backend == "ur5"
    for section in ("task", "safety", "target", "camera", "agent"):
        assert getattr(sim, section) == getattr(real, section), section
    desktop = {"window_xy", "output"}  # where the real window opens: not part of the task
    assert sim.monitor.model_dump(exclude=desktop) == real.monitor.model_dump(exclude=desktop)
    assert sim.arm.model_copy(update={"host": None}) == real.arm.model_copy(update={"host": None})


def test_defaults_follow_the_paper():
    cfg = Config()
    assert cfg.camera.obs_size == (90, 160)
    assert cfg.arm.control_period == 0.008
    assert Config(arm={"model": "ur5e"}).arm.control_period == 0.002
    assert cfg.task.episode_steps == 150 and cfg.task.agent_period == 0.04


def write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def test_bad_value_names_key_value_and_allowed(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "arm:\n  model: ur10\n"))
    msg = str(e.value)
    assert "bad.yaml" in msg and "arm.model" in msg and "'ur10'" in msg
    assert "'ur5'" in msg and "'ur5e'" in msg


def test_out_of_range_and_unknown_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "task:\n  episode_steps: -3\n  frame_stak: 3\n"))
    msg = str(e.value)
    assert "task.episode_steps = -3" in msg and "greater than or equal to 1" in msg
    assert "task.frame_stak: unknown key" in msg


def test_inconsistent_limits_rejected(tmp_path):
    with pytest.raises(ConfigError, match="box low must be < high"):
        load_config(write(tmp_path, "safety:\n  box_low: [0, 0, 0]\n  box_high: [1, -1, 1]\n"))


def test_missing_file_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "arm: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_dates_non_utf8_and_bad_override_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^invalid config .*bad\.yaml: seed = "
                       r"datetime\.date\(2024, 1, 1\) is a YAML date; .*quote dates"):
        load_config(write(tmp_path, "seed: 2024-01-01\n"))
    with pytest.raises(ConfigError, match=r"sim\.texture_px\[1\] = datetime\.datetime"):
        load_config(write(tmp_path, "sim:\n  texture_px: [64, 2024-01-01 10:00:00]\n"))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("seed: 1  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^invalid config .*latin\.yaml: not UTF-8 text "
                       r"\(byte 14: .*\); save it as UTF-8$"):
        load_config(latin)
    with pytest.raises(ConfigError, match="the value is not valid YAML"):
        load_config(write(tmp_path, "seed: 1\n"), ["seed=[1"])


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "seed: 1\n"), ["task.reward=sparse", "arm.speed_max=0.5"])
    assert cfg.task.reward == "sparse" and cfg.arm.speed_max == 0.5 and cfg.seed == 1
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, "seed: 1\n"), ["task.reward"])
    with pytest.raises(ConfigError, match="task.reward"):
        load_config(write(tmp_path, "seed: 1\n"), ["task.reward=medium"])


def digest(cfg: Config) -> str:
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def test_digest_changes_with_content():
    assert digest(Config()) == digest(Config())
    assert digest(Config()) != digest(Config(seed=1))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("safety:\n  box_low: [.nan, 0.17, 0.37]\n", "safety.box_low.0"),
        ("safety:\n  joint_high_deg: [125, -30, 135, -135, -45, .inf]\n",
         "safety.joint_high_deg.5"),
        ("safety:\n  box_high: [0.15, 0.7, 30.0]\n", "safety.box_high.2"),
        ("safety:\n  joint_low_deg: [55, -120, 0, -215, -1000, 50]\n", "safety.joint_low_deg.4"),
        ("agent:\n  actor_lr: .nan\n", "agent.actor_lr"),
        ("arm:\n  speed_max: .inf\n", "arm.speed_max"),
    ],
)
def test_non_finite_and_out_of_reach_limits_refused(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_real_arm_requires_the_watchdog(tmp_path):
    assert load_config(write(tmp_path, "arm:\n  watchdog_hz: null\n")).arm.watchdog_hz is None
    with pytest.raises(ConfigError, match="watchdog"):
        load_config(write(tmp_path, "backend: ur5\narm:\n  host: 10.0.0.2\n  watchdog_hz: null\n"))


def test_fuzzed_configs_load_or_raise_config_error(tmp_path):
    # 100 mutations of a shipped config (bit flips, deleted or repeated spans, swapped
    # lines, odd YAML values): each one loads or raises ConfigError, nothing else.
    rng = np.random.default_rng(0)
    original = (CONFIGS / "sim_quick.yaml").read_bytes()
    odd_values = [b"[]", b"{}", b"null", b".nan", b"-.inf", b"2024-01-01", b"!!binary aGk=",
                  b"&a [*a]", b"'", b"1e999", b"0x10", b"yes", b"\xff\xfe"]
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(100):
        data = bytearray(original)
        kind = i % 4
        if kind == 0:
            for pos in rng.integers(0, len(data), 3):
                data[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            a = int(rng.integers(0, len(data) - 40))
            data[a:a + int(rng.integers(1, 40))] = b"" if i % 8 == 1 else data[a:a + 60]
        elif kind == 2:
            lines = data.split(b"\n")
            a, b = rng.integers(0, len(lines), 2)
            lines[a], lines[b] = lines[b], lines[a]
            data = bytearray(b"\n".join(lines))
        else:
            lines = [ln for ln in data.split(b"\n") if b": " in ln and not ln.startswith(b"#")]
            line = lines[int(rng.integers(0, len(lines)))]
            key = line.split(b": ")[0]
            value = odd_values[int(rng.integers(0, len(odd_values)))]
            data = bytearray(bytes(data).replace(line, key + b": " + value, 1))
        path = tmp_path / f"fuzz{i}.yaml"
        path.write_bytes(bytes(data))
        try:
            load_config(path)
            outcomes["loaded"] += 1
        except ConfigError as err:
            assert f"fuzz{i}.yaml" in str(err)  # names the file
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50, outcomes  # most mutations break something
