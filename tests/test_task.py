import numpy as np
import pytest

from robot.config import TargetConfig, TaskConfig
from robot.task import RedTargetReward, draw_target, sample_target_center

H, W = 90, 160
RED = (255, 0, 0)


def white():
    return np.full((H, W, 3), 255, np.uint8)


def disc(image, row, col, radius, color=RED):
    rr, cc = np.mgrid[:H, :W]
    image[(rr - row) ** 2 + (cc - col) ** 2 <= radius**2] = color
    return image


def reference_dense(image, scale=800.0, clip=4.0):
    """The paper's formula, written as plainly as possible (BGR thresholds)."""
    total = 0.0
    for row in range(H):
        for col in range(W):
            r, g, b = (int(v) for v in image[row, col])
            if 0 <= b <= 50 and 0 <= g <= 50 and 120 <= r <= 255:
                total += (0.5 - abs(row - H / 2) / H) * (0.5 - abs(col - W / 2) / W)
    return min(max(scale * total / (W * H), 0.0), clip)


def test_no_red_gives_zero():
    info = RedTargetReward(TaskConfig())(white())
    assert info.reward == 0.0 and info.red_fraction == 0.0 and not info.success


def test_centred_dot_matches_formula_and_beats_offcentre_dot():
    fn = RedTargetReward(TaskConfig())
    centred = disc(white(), 45, 80, 8)
    offcentre = disc(white(), 20, 30, 8)
    r_c, r_o = fn(centred), fn(offcentre)
    assert r_c.reward == pytest.approx(reference_dense(centred), rel=1e-9)
    assert r_o.reward == pytest.approx(reference_dense(offcentre), rel=1e-9)
    assert r_c.reward > r_o.reward > 0
    assert r_c.red_fraction == pytest.approx(r_o.red_fraction)


def test_bigger_dot_more_reward_and_clip():
    fn = RedTargetReward(TaskConfig())
    small, big = fn(disc(white(), 45, 80, 5)), fn(disc(white(), 45, 80, 12))
    assert big.reward > small.reward
    full = np.zeros((H, W, 3), np.uint8)
    full[..., 0] = 200
    assert fn(full).reward == 4.0  # unclipped value would be ~50
    assert reference_dense(full, clip=np.inf) > 40


def test_threshold_edges_and_channel_order():
    fn = RedTargetReward(TaskConfig())
    img = white()
    img[0, 0] = (120, 50, 50)  # RGB; BGR (50, 50, 120): inside, edge
    img[0, 1] = (119, 0, 0)  # too dark
    img[0, 2] = (255, 51, 0)  # too much green
    img[0, 3] = (0, 0, 255)  # pure blue must not count as red
    mask = fn.red_mask(img)
    assert mask[0, 0] and not mask[0, 1:4].any()
    assert mask.sum() == 1


def test_sparse_variant_and_success_threshold():
    fn = RedTargetReward(TaskConfig(reward="sparse"))
    needed = int(np.ceil(0.015 * H * W))
    img = white()
    img.reshape(-1, 3)[: needed - 1] = RED
    below = fn(img)
    img.reshape(-1, 3)[: needed] = RED
    above = fn(img)
    assert below.reward == above.reward == -1.0
    assert not below.success and above.success


def test_rejects_bad_frames():
    fn = RedTargetReward(TaskConfig())
    with pytest.raises(ValueError, match="uint8"):
        fn(np.zeros((H, W, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        fn(np.zeros((3, H, W), np.uint8))


def test_draw_target_position_and_size():
    target = TargetConfig(radius=0.1)
    img = draw_target((480, 270), np.array([0.25, 0.6]), target)
    assert img.shape == (270, 480, 3) and img.dtype == np.uint8
    red = (img[..., 0] > 200) & (img[..., 1] < 60)
    rows, cols = np.nonzero(red)
    assert cols.mean() + 0.5 == pytest.approx(0.25 * 480, abs=0.3)
    assert rows.mean() + 0.5 == pytest.approx(0.6 * 270, abs=0.3)
    assert red.sum() == pytest.approx(np.pi * (0.1 * 270) ** 2, rel=0.03)
    assert (img[0, 0] == 255).all()


def test_sampled_targets_stay_on_screen():
    rng = np.random.default_rng(0)
    target = TargetConfig(radius=0.15)
    for _ in range(200):
        c = sample_target_center(rng, target.radius, 16 / 9)
        img = draw_target((160, 90), c, target)
        red = (img[..., 0] > 200) & (img[..., 1] < 60)
        assert not red[0].any() and not red[-1].any()
        assert not red[:, 0].any() and not red[:, -1].any()
