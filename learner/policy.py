"""Inference policy for the robot side: one observation in, one action out.

Each observation stacks the ``k`` newest RGB frames; ``k - 1`` of them were the newest
frames of earlier steps. :class:`MadiPolicy` keeps the masked versions of those frames,
so a step costs one Masker pass (the newest frame) instead of ``k`` (MaDi, Grooten et
al. 2024: the Masker is applied per frame with shared weights, so a frame's mask does not
depend on the other frames). The cache is checked against the previous image (the older
frames must be the previous step's newer frames), and it is dropped by :meth:`reset`, by
:meth:`invalidate` and whenever new weights are loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from learner.checkpoint_file import load_policy_file
from learner.config import AgentConfig
from learner.networks import Actor, Masker, SpatialSoftmaxEncoder

__all__ = ["MadiPolicy"]

logger = logging.getLogger(__name__)


class MadiPolicy:
    """Masker + encoder + actor for acting, with a per-episode cache of masked frames.

    Args:
        masker: The Masker, or None for variants without one.
        encoder: The conv + spatial-softmax encoder.
        actor: The Gaussian actor.
        image_shape: ``(3k, H, W)`` of observation images.
        proprio_dim: Proprioception size ``P``.
        action_dim: Action size ``A``.
        device: Device of the modules.
        channels_last: Feed the convs NHWC tensors.
        use_cache: Reuse the masks of older frames (set False to mask every frame).
    """

    def __init__(
        self,
        masker: Masker | None,
        encoder: SpatialSoftmaxEncoder,
        actor: Actor,
        image_shape: tuple[int, int, int],
        proprio_dim: int,
        action_dim: int,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
        use_cache: bool = True,
    ):
        self.masker = masker
        self.encoder = encoder
        self.actor = actor
        self.image_shape = tuple(int(s) for s in image_shape)
        self.frame_stack = self.image_shape[0] // 3
        self.proprio_dim = int(proprio_dim)
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.use_cache = bool(use_cache)
        #: Masker passes run so far (frames), for tests and latency accounting.
        self.masker_frames = 0
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs) -> MadiPolicy:
        """Load a policy-only file written by :func:`learner.checkpoint.save_policy`.

        Args:
            path: The ``.pt`` file.
            device: Device to run on (``"cpu"`` on the robot PC).
            **kwargs: Passed to the constructor (e.g. ``use_cache``).

        Returns:
            The policy, in eval mode.

        Raises:
            learner.checkpoint_file.CheckpointError: If the file is not a policy checkpoint.
        """
        data = load_policy_file(path)
        policy = cls._build(data["net"], data["spaces"], device, **kwargs)
        state = {"masker": data["masker"], "encoder": data["encoder"], "actor": data["actor"]}
        policy.load_weights(state)
        logger.info("loaded policy from %s (version %s)", path, data.get("version"))
        return policy

    @classmethod
    def from_config(
        cls,
        cfg: AgentConfig,
        image_shape: tuple[int, int, int],
        proprio_dim: int,
        action_dim: int,
        device: str = "cpu",
        **kwargs,
    ) -> MadiPolicy:
        """Build a policy with freshly initialised networks of the config's sizes.

        The robot process starts from this and loads the learner's weights as they
        arrive (:meth:`load_weights`); until then it acts randomly.

        Args:
            cfg: The learner config (network sizes, variant).
            image_shape: ``(3k, H, W)`` of observation images.
            proprio_dim: Proprioception size ``P``.
            action_dim: Action size ``A``.
            device: Device to run on.
            **kwargs: Passed to the constructor (e.g. ``use_cache``).

        Returns:
            The policy, in eval mode.
        """
        net = {
            "masker_filters": cfg.masker_filters if cfg.use_masker else None,
            "encoder_filters": cfg.encoder_filters,
            "encoder_strides": list(cfg.encoder_strides),
            "mlp_hidden": list(cfg.mlp_hidden),
            "actor_log_std_min": cfg.actor_log_std_min,
            "actor_log_std_max": cfg.actor_log_std_max,
        }
        spaces = {
            "image_shape": list(image_shape),
            "proprio_dim": int(proprio_dim),
            "action_dim": int(action_dim),
        }
        kwargs.setdefault("channels_last", cfg.channels_last)
        return cls._build(net, spaces, device, **kwargs)

    @classmethod
    def _build(cls, net: dict, spaces: dict, device: str, **kwargs) -> MadiPolicy:
        image_shape = tuple(spaces["image_shape"])
        masker = Masker(net["masker_filters"]) if net["masker_filters"] is not None else None
        encoder = SpatialSoftmaxEncoder(
            image_shape[0], spaces["proprio_dim"], net["encoder_filters"], net["encoder_strides"]
        )
        actor = Actor(
            encoder.feature_dim,
            net["mlp_hidden"],
            spaces["action_dim"],
            net["actor_log_std_min"],
            net["actor_log_std_max"],
        )
        policy = cls(
            masker,
            encoder,
            actor,
            image_shape=image_shape,
            proprio_dim=spaces["proprio_dim"],
            action_dim=spaces["action_dim"],
            device=device,
            **kwargs,
        )
        for module in (masker, encoder, actor):
            if module is not None:
                module.to(policy.device).eval()
        for module in (masker, encoder):
            if module is not None:
                module.to(memory_format=policy.memory_format)
        return policy

    def reset(self) -> None:
        """Forget cached masks; call at every episode start."""
        self._last_image: np.ndarray | None = None
        self._masked: list[torch.Tensor] = []

    def invalidate(self) -> None:
        """Drop cached masks because the Masker's weights changed (same as :meth:`reset`)."""
        self.reset()

    def load_weights(self, state: dict[str, dict]) -> None:
        """Load new weights (e.g. from the learner) and drop the mask cache.

        Args:
            state: ``{"masker": sd or None, "encoder": sd, "actor": sd}`` state dicts.
        """
        if self.masker is not None and state.get("masker") is not None:
            self.masker.load_state_dict(state["masker"])
        self.encoder.load_state_dict(state["encoder"])
        self.actor.load_state_dict(state["actor"])
        self.invalidate()

    def _check(self, obs: dict) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(obs, dict) or "image" not in obs or "proprio" not in obs:
            raise ValueError("obs: expected a dict with keys 'image' and 'proprio'")
        image = np.asarray(obs["image"])
        proprio = np.asarray(obs["proprio"], dtype=np.float32)
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise ValueError(
                f"obs['image']: expected uint8{self.image_shape}, got {image.dtype}{image.shape}"
            )
        if proprio.shape != (self.proprio_dim,):
            raise ValueError(f"obs['proprio']: expected ({self.proprio_dim},), got {proprio.shape}")
        return image, proprio

    def _mask_frames(self, frames: np.ndarray) -> torch.Tensor:
        """Masked frames in [0, 1]: uint8 ``(n, 3, H, W)`` -> float ``(n, 3, H, W)``."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x01 = x.to(dtype=torch.float32, memory_format=self.memory_format).mul_(1.0 / 255.0)
        if self.masker is None:
            return x01
        self.masker_frames += x01.shape[0]
        return x01 * self.masker(x01)

    @torch.no_grad()
    def mask(self, frame: np.ndarray) -> np.ndarray:
        """The Masker's mask of one camera frame (what the agent keeps of it).

        Args:
            frame: uint8 (H, W, 3) RGB at the observation size.

        Returns:
            float32 (H, W) in [0, 1]; 1 keeps the pixel (MaDi, Grooten et al. 2024: the
            Masker's soft mask).

        Raises:
            ValueError: If this policy has no Masker (``sac_crop``, ``svea_overlay``) or
                the frame has the wrong shape.
        """
        if self.masker is None:
            raise ValueError("this policy has no Masker (variant without one)")
        h, w = self.image_shape[1:]
        frame = np.asarray(frame)
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame: expected uint8 ({h}, {w}, 3), got {frame.dtype}"
                             f"{frame.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)))[None]
        x01 = x.to(self.device, dtype=torch.float32).mul_(1.0 / 255.0)
        return self.masker(x01)[0, 0].float().cpu().numpy()

    @torch.no_grad()
    def act(self, obs: dict, deterministic: bool = True) -> np.ndarray:
        """Choose an action for one observation.

        Args:
            obs: ``{"image": uint8 (3k, H, W), "proprio": float (P,)}``.
            deterministic: Return tanh(mean) when True, else a sample (global torch RNG).

        Returns:
            float32 ``(A,)`` in [-1, 1].

        Raises:
            ValueError: If the observation has the wrong keys, shapes or dtype.
        """
        image, proprio = self._check(obs)
        k = self.frame_stack
        frames = image.reshape(k, 3, *self.image_shape[1:])
        reusable = (
            self.use_cache
            and self._last_image is not None
            and len(self._masked) == k
            and np.array_equal(image[:-3], self._last_image[3:])
        )
        if reusable:
            self._masked = [*self._masked[1:], self._mask_frames(frames[-1:])[0]]
        else:
            masked = self._mask_frames(frames)
            self._masked = list(masked.unbind(0))
        self._last_image = image.copy() if self.use_cache else None
        h, w = self.image_shape[1:]
        stack = torch.empty(
            (1, 3 * k, h, w),
            dtype=torch.float32,
            device=self.device,
            memory_format=self.memory_format,
        )
        stack.view(1, k, 3, h, w).copy_(torch.stack(self._masked)[None])
        prop = torch.from_numpy(proprio).to(self.device)[None]
        mu, pi, _ = self.actor(self.encoder(stack, prop), sample=not deterministic)
        action = mu if deterministic else pi
        return action[0].float().cpu().numpy().astype(np.float32)
