"""Tests for learner.augment: random shift (DrQ) and overlay bank (SVEA)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io as skio

from learner.augment import OverlayBank, random_shift

H, W = 18, 24


def _frames(n=6, f=4, dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, f, 3, H, W), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype)


def _reference_shift(x: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    """Replicate-pad then crop at offset (pad + dy, pad + dx): the DrQ definition."""
    flat = x.reshape(-1, x.shape[-2], x.shape[-1]).float()[:, None]
    padded = torch.nn.functional.pad(flat, (pad, pad, pad, pad), mode="replicate")[:, 0]
    crop = padded[:, pad + dy : pad + dy + x.shape[-2], pad + dx : pad + dx + x.shape[-1]]
    return crop.to(x.dtype).reshape(x.shape)


def _recover_shift(sample: torch.Tensor, out: torch.Tensor, pad: int) -> set[tuple[int, int]]:
    return {
        (dy, dx)
        for dy in range(-pad, pad + 1)
        for dx in range(-pad, pad + 1)
        if torch.equal(_reference_shift(sample, dy, dx, pad), out)
    }


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("shape", [(6, 4, 3, H, W), (6, 12, H, W), (6, 3, H, W)])
def test_random_shift_keeps_shape_dtype(dtype, shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8).to(dtype)
    out = random_shift(x, 4)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_random_shift_same_across_frames_different_across_samples():
    pad = 4
    x = _frames(n=32)
    out = random_shift(x, pad, generator=torch.Generator().manual_seed(3))
    shifts = []
    for i in range(x.shape[0]):
        # the whole (F, 3, H, W) sample matches one replicate-pad crop, so all frames share it
        found = _recover_shift(x[i], out[i], pad)
        assert len(found) == 1, f"sample {i}: no single shift explains all frames"
        shifts.append(found.pop())
        assert all(abs(s) <= pad for s in shifts[-1])
    assert len(set(shifts)) > 8  # independent across samples


def test_random_shift_pad0_identity_and_copy():
    x = _frames()
    out = random_shift(x, 0)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_random_shift_seeded_reproducible_and_float_matches_uint8():
    x = _frames()
    a = random_shift(x, 4, generator=torch.Generator().manual_seed(5))
    b = random_shift(x, 4, generator=torch.Generator().manual_seed(5))
    c = random_shift(x.float(), 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(a.float(), c)


def test_random_shift_errors():
    with pytest.raises(ValueError, match="pad"):
        random_shift(_frames(), -1)
    with pytest.raises(ValueError, match="frames"):
        random_shift(torch.zeros(5, 5), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_shift_and_overlay_on_cuda():
    x = _frames().cuda()
    out = random_shift(x, 4, generator=torch.Generator().manual_seed(1))
    ref = random_shift(x.cpu(), 4, generator=torch.Generator().manual_seed(1))
    assert out.is_cuda and torch.equal(out.cpu(), ref)
    bank = OverlayBank((H, W)).to("cuda")
    blended = bank.overlay(x, generator=torch.Generator().manual_seed(2))
    assert blended.is_cuda and blended.dtype == torch.uint8


@pytest.fixture(scope="module")
def bank() -> OverlayBank:
    return OverlayBank((H, W), "train", seed=0)


def _chosen_images(bank: OverlayBank, n: int, seed: int) -> torch.Tensor:
    index = torch.randint(len(bank), (n,), generator=torch.Generator().manual_seed(seed))
    return bank.images[index]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_overlay_blend_exact_uint8(bank, alpha):
    x = _frames()
    out = bank.overlay(x, alpha=alpha, generator=torch.Generator().manual_seed(9))
    img = _chosen_images(bank, x.shape[0], 9)[:, None].expand_as(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    if alpha == 0.0:
        assert torch.equal(out, x)
    elif alpha == 1.0:
        assert torch.equal(out, img)
    else:  # (a + b) / 2 rounded half to even, in exact integer arithmetic
        expected = np.round((x.numpy().astype(np.int32) + img.numpy()) / 2).astype(np.uint8)
        np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_overlay_blend_exact_float(bank, alpha):
    x = _frames(dtype=torch.float32)
    out = bank.overlay(x, alpha=alpha, generator=torch.Generator().manual_seed(4))
    img = _chosen_images(bank, x.shape[0], 4)[:, None].float()
    assert out.dtype == torch.float32
    assert torch.equal(out, (1 - alpha) * x + alpha * img)


def test_overlay_same_image_across_frames_and_stack_layout(bank):
    x = torch.zeros(16, 4, 3, H, W, dtype=torch.uint8)
    out = bank.overlay(x, alpha=1.0, generator=torch.Generator().manual_seed(0))
    for i in range(16):
        for f in range(1, 4):
            assert torch.equal(out[i, f], out[i, 0])
    assert len({out[i, 0].numpy().tobytes() for i in range(16)}) > 1
    stacked = bank.overlay(x.reshape(16, 12, H, W), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(stacked.reshape(out.shape), out)


def test_overlay_seeded_by_bank_seed():
    x = _frames()
    a = OverlayBank((H, W), seed=3).overlay(x)
    b = OverlayBank((H, W), seed=3).overlay(x)
    assert torch.equal(a, b)


def test_overlay_errors(bank):
    with pytest.raises(ValueError, match="alpha"):
        bank.overlay(_frames(), alpha=1.5)
    with pytest.raises(ValueError, match="frames"):
        bank.overlay(torch.zeros(2, 4, 3, H + 1, W, dtype=torch.uint8))


def test_bundled_splits_disjoint_nonempty_and_rgb():
    train = OverlayBank((90, 160), "train")
    test = OverlayBank((90, 160), "test")
    assert len(train) > 0 and len(test) > 0
    assert not set(train.names) & set(test.names)
    train_pixels = {img.numpy().tobytes() for img in train.images}
    assert not any(img.numpy().tobytes() in train_pixels for img in test.images)
    for b in (train, test):
        assert b.images.dtype == torch.uint8 and b.images.shape[1:] == (3, 90, 160)
    with pytest.raises(ValueError, match="split"):
        OverlayBank((90, 160), "val")


def _write_images(folder: Path, n: int, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        skio.imsave(folder / f"{prefix}{i:02d}.png", rng.integers(0, 256, (40, 50, 3), np.uint8))


def test_folder_flat_split(tmp_path):
    _write_images(tmp_path, 7)
    (tmp_path / "notes.txt").write_text("not an image")
    train = OverlayBank((H, W), "train", folder=str(tmp_path))
    test = OverlayBank((H, W), "test", folder=str(tmp_path))
    assert test.names == ["img00.png", "img05.png"]
    assert len(train) == 5 and not set(train.names) & set(test.names)


def test_folder_train_test_subfolders(tmp_path):
    _write_images(tmp_path / "train", 3, "a")
    _write_images(tmp_path / "test", 2, "b")
    assert len(OverlayBank((H, W), "train", folder=str(tmp_path))) == 3
    assert OverlayBank((H, W), "test", folder=str(tmp_path)).names == ["b00.png", "b01.png"]


def test_folder_errors_name_folder_and_fix(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*does not exist.*folder=None"):
        OverlayBank((H, W), folder=str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*holds 0 image"):
        OverlayBank((H, W), folder=str(empty))
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="file.png.*not a directory"):
        OverlayBank((H, W), folder=str(a_file))
    broken = tmp_path / "broken"
    _write_images(broken, 2)
    (broken / "zz_bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="zz_bad.png.*cannot be decoded"):
        OverlayBank((H, W), "train", folder=str(broken))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_folder_unreadable(tmp_path):
    locked = tmp_path / "locked"
    _write_images(locked, 2)
    locked.chmod(0)
    try:
        with pytest.raises(PermissionError, match="locked.*cannot be read"):
            OverlayBank((H, W), folder=str(locked))
    finally:
        locked.chmod(0o755)
