"""The sim camera's child process renders what the in-process mirror renders."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from robot.config import config_from_dict
from robot.task import draw_target
from sim.mirror import Mirror
from sim.render_process import RenderProcess


@pytest.fixture(scope="module")
def cfg():
    return config_from_dict({"camera": {"subsample": 8}})


def test_child_frames_equal_in_process_frames(cfg):
    rng = np.random.default_rng(0)
    w, h = cfg.sim.texture_px
    screen = draw_target((w, h), np.array([0.3, 0.6]), cfg.target)
    q_home = np.asarray(cfg.arm.q_home)
    qs = [q_home + rng.uniform(-0.2, 0.2, 6) for _ in range(3)]
    renderer = RenderProcess(cfg)
    try:
        renderer.set_screen(screen)
        child = [renderer.render(q) for q in qs]
    finally:
        renderer.close()
    with Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim) as mirror:
        mirror.set_screen(screen)
        local = [mirror.render(q=q) for q in qs]
    for a, b in zip(child, local, strict=True):
        assert a.shape == (45, 80, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)
    assert not np.array_equal(child[0], child[1])  # the pose changes the picture


def test_a_dead_child_is_a_clear_error(cfg):
    renderer = RenderProcess(cfg)
    renderer._proc.kill()
    renderer._proc.wait()
    with pytest.raises(RuntimeError, match="render process died"):
        renderer.render(np.asarray(cfg.arm.q_home))
    renderer.close()


def test_a_bad_screen_is_refused_and_the_child_keeps_serving(cfg):
    renderer = RenderProcess(cfg)
    try:
        with pytest.raises(ValueError, match="screen image"):
            renderer.set_screen(np.zeros((10, 10), np.uint8))
        assert renderer.render(np.asarray(cfg.arm.q_home)).shape == (45, 80, 3)
    finally:
        renderer.close()


def test_a_rebuilt_child_renders_the_new_rig_with_the_same_screen(cfg):
    w, h = cfg.sim.texture_px
    screen = draw_target((w, h), np.array([0.5, 0.5]), cfg.target)
    q_home = np.asarray(cfg.arm.q_home)
    moved = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(
        update={"position": [p + 0.05 for p in cfg.monitor.position]})})
    renderer = RenderProcess(cfg)
    try:
        renderer.set_screen(screen)
        before = renderer.render(q_home)
        renderer.rebuild(moved)
        after = renderer.render(q_home)
        with pytest.raises(ValueError, match="observation size"):
            renderer.rebuild(config_from_dict({"camera": {"subsample": 4}}))
    finally:
        renderer.close()
    with Mirror(moved.arm, moved.camera, moved.monitor, moved.sim) as mirror:
        mirror.set_screen(screen)
        np.testing.assert_array_equal(after, mirror.render(q=q_home))
    assert not np.array_equal(before, after)
