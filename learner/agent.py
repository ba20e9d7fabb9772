"""The MaDi-SAC agent and its update (Grooten et al., AAMAS 2024; SAC-AE / SVEA lineage).

One update (:meth:`MadiSacAgent.update`) follows MaDi's rule:

1. Weak augmentation: one random shift per sample, shared by the ``k + n`` frames of its
   window (``n = n_step``, 1 in the paper), so ``obs`` and ``next_obs`` share the shift
   and their common frames stay identical. Strong augmentation (variants ``madi``,
   ``svea_overlay``): the ``k`` obs frames of each sample are blended with one natural
   image, before masking.
2. Critic + Masker step: ``Q(enc(mask(obs)), a)`` for the clean and the overlaid batch
   both regress to the clean target (SVEA loss). The Masker's optimizer is zeroed and
   stepped with the critic's, on the same backward pass, so only the critic loss trains
   it; there is no mask regulariser.
3. Target: ``r + gamma^n * d * (min_i Q'_i(enc'(mask(next_obs)), a') - alpha log pi(a'))``
   with ``a' ~ pi(enc(mask(next_obs)))``, the *current* Masker under no_grad (MaDi has
   no target Masker), the target encoder ``enc'`` and target heads ``Q'``. For ``n`` > 1,
   ``r`` is the discounted sum of ``n`` rewards and ``next_obs`` the observation ``n``
   steps later (n-step returns as in DrQ-v2, Yarats et al., ICLR 2022).
4. Actor + temperature step on the critic step's clean features, detached: the actor's
   loss reaches neither the Masker nor the conv encoder (as in DrQ-v2, the features are
   those computed before the critic step).
5. Polyak averaging of the target heads (``critic_tau``) and encoder (``encoder_tau``).

Speed (the published UR5 learner needs ~30 s per update on a 2-core CPU; see
``BENCHMARKS.md``): each unique frame of a window is masked once (the ``k``
obs frames with gradient, the ``n`` newest next frames under no_grad; the ``k - n``
frames shared with ``next_obs`` are reused, detached), the overlaid frames go through the
Masker in the same call as the clean ones, the target path builds no autograd graph, the
actor step reuses the critic step's features, the convs run in channels_last, and on
CUDA the forward passes can run under bfloat16 autocast and torch.compile.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from learner.augment import OverlayBank, random_shift
from learner.config import AgentConfig
from learner.errors import NonFiniteError
from learner.networks import Actor, Critic, Masker, SpatialSoftmaxEncoder
from learner.policy import MadiPolicy

__all__ = ["AugmentedBatch", "MadiSacAgent", "NonFiniteError", "resolve_device",
           "tune_cpu_allocator"]

logger = logging.getLogger(__name__)


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed large buffers in glibc's heap instead of returning them to the OS.

    Each update allocates activations of hundreds of MB; with glibc's defaults every such
    block is ``mmap``-ed and page-faulted in again, which on a 2-core VM costs more than
    the arithmetic of the element-wise ops (measured in ``BENCHMARKS.md``). This
    raises ``M_MMAP_THRESHOLD`` to 1 GiB and ``M_TRIM_THRESHOLD`` to 16 GiB once per
    process. Process-wide; a no-op off Linux/glibc.

    Returns:
        True if the thresholds were set (now or earlier), False when not supported.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 1 << 34) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = bool(ok)
    if ok:
        logger.info("glibc malloc tuned: mmap threshold 1 GiB, trim threshold 16 GiB")
    return _ALLOCATOR_TUNED


def resolve_device(device: str) -> torch.device:
    """Turn the config's device choice into a ``torch.device``.

    Args:
        device: ``"auto"`` (cuda when available, else cpu), ``"cpu"`` or ``"cuda"``.

    Returns:
        The device.

    Raises:
        RuntimeError: If ``"cuda"`` is asked for and CUDA is not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("agent.device is 'cuda' but torch.cuda.is_available() is False")
    return torch.device(device)


@dataclass
class AugmentedBatch:
    """A replay batch on the agent's device after the augmentations (input of an update).

    Attributes:
        frames: uint8 ``(B, k + n, 3, H, W)``, randomly shifted windows (one shift per
            sample, ``n = cfg.n_step``); obs stack = ``frames[:, :k]``, next_obs stack
            (``n`` steps later) = ``frames[:, n:]``.
        overlay: uint8 ``(B, k, 3, H, W)``, the shifted obs frames blended with a natural
            image, or None for the variant without overlay.
        proprio: float32 ``(B, P)``.
        next_proprio: float32 ``(B, P)``.
        action: float32 ``(B, A)`` in [-1, 1].
        reward: float32 ``(B, 1)``.
        discount_mask: float32 ``(B, 1)``, 0 where terminated.
    """

    frames: torch.Tensor
    overlay: torch.Tensor | None
    proprio: torch.Tensor
    next_proprio: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount_mask: torch.Tensor


class MadiSacAgent:
    """MaDi-SAC learner: Masker, UR5 encoder, actor, twin critics, temperature.

    Args:
        cfg: Hyperparameters (:class:`~learner.config.AgentConfig`).
        image_shape: ``(3k, H, W)`` of the observation image (k stacked RGB frames).
        proprio_dim: Proprioception size ``P``.
        action_dim: Action size ``A`` (actions in [-1, 1]).
        overlay_bank: Optional overlay image bank; built from ``cfg.overlay_folder``
            (train split) when the variant needs one and None is given.

    Raises:
        ValueError: If ``image_shape`` is not ``(3k, H, W)`` or a size is < 1.
        RuntimeError: If CUDA is requested and unavailable.
    """

    def __init__(
        self,
        cfg: AgentConfig,
        image_shape: tuple[int, int, int],
        proprio_dim: int,
        action_dim: int,
        overlay_bank: OverlayBank | None = None,
    ):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or image_shape[0] % 3 != 0 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (3k, H, W) with k >= 1, got {image_shape}")
        if proprio_dim < 0 or action_dim < 1:
            raise ValueError(
                f"proprio_dim must be >= 0 and action_dim >= 1, got {proprio_dim}, {action_dim}"
            )
        self.cfg = cfg
        self.image_shape: tuple[int, int, int] = image_shape  # type: ignore[assignment]
        self.frame_stack = image_shape[0] // 3
        self.frame_hw = (image_shape[1], image_shape[2])
        self.proprio_dim = int(proprio_dim)
        self.action_dim = int(action_dim)
        self._set_up_device()
        torch.manual_seed(cfg.seed)
        self._build_networks()
        self.log_alpha = torch.tensor(
            float(np.log(cfg.init_temperature)), device=self.device, requires_grad=True
        )
        #: Target entropy -|A| (SAC, Haarnoja et al. 2018).
        self.target_entropy = -float(action_dim)
        self._build_optimizers()
        self._compile()
        self.aug_generator = torch.Generator().manual_seed(cfg.seed)
        self.overlay_bank = overlay_bank
        if cfg.use_overlay and self.overlay_bank is None:
            self.overlay_bank = OverlayBank(
                self.frame_hw, split="train", folder=cfg.overlay_folder, seed=cfg.seed
            )
        if self.overlay_bank is not None:
            self.overlay_bank.to(self.device)
        #: Number of completed updates (critic steps), skipped ones included.
        self.num_updates = 0
        #: Updates skipped because their critic loss was not finite (``cfg.on_nonfinite``).
        self.skipped_updates = 0
        self._last_actor: torch.Tensor | None = None  # last (actor, alpha loss, entropy)

    def _set_up_device(self) -> None:
        """Device, CPU threads and allocator, memory format and mixed precision."""
        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        on_cpu = self.device.type == "cpu"
        if on_cpu and cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        if on_cpu and cfg.cpu_allocator_tuning:
            tune_cpu_allocator()
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.use_amp = bool(cfg.amp and self.device.type == "cuda")

    def _build_networks(self) -> None:
        """Masker, encoder, actor, critic and the targets (copies), on the device."""
        cfg, k = self.cfg, self.frame_stack
        self.masker = (Masker(cfg.masker_filters, cfg.masker_init_bias) if cfg.use_masker
                       else None)
        self.encoder, self.encoder_target = (
            SpatialSoftmaxEncoder(3 * k, self.proprio_dim, cfg.encoder_filters,
                                  list(cfg.encoder_strides)) for _ in range(2))
        feat = self.encoder.feature_dim
        self.actor = Actor(feat, list(cfg.mlp_hidden), self.action_dim, cfg.actor_log_std_min,
                           cfg.actor_log_std_max)
        self.critic, self.critic_target = (
            Critic(feat, list(cfg.mlp_hidden), self.action_dim, cfg.critic_layer_norm)
            for _ in range(2))
        self.encoder_target.load_state_dict(self.encoder.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        for module in self.modules().values():
            module.to(self.device)
        for module in (self.masker, self.encoder, self.encoder_target):
            if module is not None:
                module.to(memory_format=self.memory_format)
        for p in [*self.encoder_target.parameters(), *self.critic_target.parameters()]:
            p.requires_grad_(False)

    def _build_optimizers(self) -> None:
        """Adam for critic + encoder, the Masker (stepped with the critic), actor, alpha."""
        cfg = self.cfg
        self.critic_optimizer = torch.optim.Adam(
            [*self.encoder.parameters(), *self.critic.parameters()], lr=cfg.critic_lr
        )
        self.masker_optimizer = (
            torch.optim.Adam(self.masker.parameters(), lr=cfg.masker_lr)
            if self.masker is not None
            else None
        )
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.alpha_optimizer = torch.optim.Adam(
            [self.log_alpha], lr=cfg.alpha_lr, betas=(cfg.alpha_beta1, 0.999)
        )

    def _compile(self) -> None:
        """The callables of the update (``torch.compile`` wrappers share the parameters)."""
        self._masker_fn = self.masker
        self._encoder_fn = self.encoder
        self._encoder_target_fn = self.encoder_target
        if self.cfg.compile:
            if self.masker is not None:
                self._masker_fn = torch.compile(self.masker, dynamic=False)
            self._encoder_fn = torch.compile(self.encoder, dynamic=False)
            self._encoder_target_fn = torch.compile(self.encoder_target, dynamic=False)

    # ------------------------------------------------------------------ helpers
    @property
    def alpha(self) -> torch.Tensor:
        """Entropy temperature ``exp(log_alpha)`` (scalar tensor, with grad)."""
        return self.log_alpha.exp()

    def modules(self) -> dict[str, torch.nn.Module]:
        """The agent's networks by name (the Masker only for the ``madi`` variant).

        Returns:
            Dict name to module: masker, encoder, encoder_target, actor, critic,
            critic_target.
        """
        named: dict[str, torch.nn.Module] = {
            "encoder": self.encoder,
            "encoder_target": self.encoder_target,
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_target,
        }
        if self.masker is not None:
            named = {"masker": self.masker, **named}
        return named

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The agent's optimizers by name.

        Returns:
            Dict name to optimizer: critic (encoder + Q heads), masker (if any), actor,
            alpha.
        """
        named = {
            "critic": self.critic_optimizer,
            "actor": self.actor_optimizer,
            "alpha": self.alpha_optimizer,
        }
        if self.masker_optimizer is not None:
            named["masker"] = self.masker_optimizer
        return named

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _empty_frames(self, n: int, channels: int = 3) -> torch.Tensor:
        h, w = self.frame_hw
        return torch.empty(
            (n, channels, h, w),
            dtype=torch.float32,
            device=self.device,
            memory_format=self.memory_format,
        )

    def _stack(self, masked: torch.Tensor) -> torch.Tensor:
        """Turn per-frame tensors ``(N, k, 3, H, W)`` into stacks ``(N, 3k, H, W)``.

        One copy into the configured memory format (differentiable).
        """
        n, k = masked.shape[:2]
        out = self._empty_frames(n, 3 * k)
        out.view(n, k, 3, *self.frame_hw).copy_(masked)
        return out

    def make_policy(self) -> MadiPolicy:
        """Build an inference policy that shares this agent's Masker, encoder and actor.

        Returns:
            A :class:`~learner.policy.MadiPolicy` on the agent's device. Call its
            ``invalidate()`` after updates so cached masks are recomputed.
        """
        return MadiPolicy(
            self.masker,
            self.encoder,
            self.actor,
            image_shape=self.image_shape,
            proprio_dim=self.proprio_dim,
            action_dim=self.action_dim,
            device=self.device,
            channels_last=self.cfg.channels_last,
        )

    def train(self, mode: bool = True) -> None:
        """Set train/eval mode on every network (no dropout/batchnorm here; kept for API).

        Args:
            mode: True for training mode.
        """
        for module in self.modules().values():
            module.train(mode)

    # ------------------------------------------------------------------ update
    def prepare(self, batch: Any) -> AugmentedBatch:
        """Move a replay batch to the device and apply the augmentations.

        Args:
            batch: A :class:`learner.replay_buffer.Batch` (numpy arrays, see its docstring).

        Returns:
            The :class:`AugmentedBatch` (random shift always when ``shift_pad > 0``;
            overlay for the ``madi`` and ``svea_overlay`` variants).

        Raises:
            ValueError: If the frames do not match ``(B, k + n_step, 3, H, W)``.
        """
        k = self.frame_stack
        expected = (k + self.cfg.n_step, 3, *self.frame_hw)
        frames_np = np.asarray(batch.frames)
        if frames_np.ndim != 5 or tuple(frames_np.shape[1:]) != expected:
            raise ValueError(
                f"batch.frames: expected (B, {', '.join(map(str, expected))}), "
                f"got {frames_np.shape}"
            )

        def to_dev(a: np.ndarray, column: bool = False) -> torch.Tensor:
            t = torch.as_tensor(np.asarray(a, dtype=np.float32)).to(self.device)
            return t.reshape(-1, 1) if column else t

        frames = torch.as_tensor(frames_np).to(self.device)
        if self.cfg.shift_pad > 0:
            frames = random_shift(frames, self.cfg.shift_pad, generator=self.aug_generator)
        overlay = None
        if self.cfg.use_overlay:
            overlay = self.overlay_bank.overlay(
                frames[:, :k], self.cfg.overlay_alpha, generator=self.aug_generator
            )
        return AugmentedBatch(
            frames=frames,
            overlay=overlay,
            proprio=to_dev(batch.proprio),
            next_proprio=to_dev(batch.next_proprio),
            action=to_dev(batch.action),
            reward=to_dev(batch.reward, column=True),
            discount_mask=to_dev(batch.discount_mask, column=True),
        )

    def update(self, batch: Any) -> dict[str, float]:
        """One MaDi-SAC update from a replay batch (augment, then :meth:`update_from`).

        Args:
            batch: A :class:`learner.replay_buffer.Batch`.

        Returns:
            Metrics, see :meth:`update_from`.
        """
        return self.update_from(self.prepare(batch))

    def update_from(self, ab: AugmentedBatch) -> dict[str, float]:
        """One MaDi-SAC update (critic + Masker, actor + temperature, targets).

        Args:
            ab: An augmented batch (see :meth:`prepare`).

        Returns:
            Floats keyed ``losses/critic``, ``losses/actor``, ``losses/alpha``,
            ``charts/alpha``, ``charts/q``, ``charts/target_q``, ``charts/entropy``,
            ``charts/mask_mean`` (mean soft mask of the clean obs frames; 1 without a
            Masker). Actor/alpha entries repeat the last values on steps without an actor
            update.
        """
        cfg = self.cfg
        k = self.frame_stack
        b = ab.frames.shape[0]
        n = cfg.n_step
        h, w = self.frame_hw
        self.num_updates += 1
        n_obs = b * k
        n_views = 2 if ab.overlay is not None else 1
        inv255 = 1.0 / 255.0

        with self._autocast():
            # ---- pixels -> [0, 1] in the conv memory format; clean obs frames first, then
            # the overlaid obs frames: one Masker call with gradient for all of them.
            x01 = self._empty_frames(n_views * n_obs)
            x01[:n_obs].view(b, k, 3, h, w).copy_(ab.frames[:, :k])
            if ab.overlay is not None:
                x01[n_obs:].view(b, k, 3, h, w).copy_(ab.overlay)
            x01.mul_(inv255)
            newest01 = self._empty_frames(b * n)
            newest01.view(b, n, 3, h, w).copy_(ab.frames[:, k:])
            newest01.mul_(inv255)

            if self._masker_fn is not None:
                masks = self._masker_fn(x01)  # (views*B*k, 1, H, W), with grad
                masked = x01 * masks
                with torch.no_grad():
                    newest_masked = newest01 * self._masker_fn(newest01)
                mask_mean = masks[:n_obs].detach().float().mean()
            else:
                masked, newest_masked = x01, newest01
                mask_mean = torch.ones((), device=self.device)
            masked5 = masked.view(n_views * b, k, 3, h, w)
            obs_in = self._stack(masked5)  # (views*B, 3k, H, W)
            proprio = ab.proprio.repeat(n_views, 1)
            features = self._encoder_fn(obs_in, proprio)  # (views*B, D)

            # ---- target: no graph; next_obs frames that are obs frames (n < k) are reused.
            with torch.no_grad():
                next_in = self._empty_frames(b, 3 * k)
                next5 = next_in.view(b, k, 3, h, w)
                newest5 = newest_masked.view(b, n, 3, h, w)
                reused = max(k - n, 0)
                next5[:, :reused].copy_(masked5[:b, k - reused:])
                next5[:, reused:].copy_(newest5[:, n - (k - reused):])
                _, next_action, next_log_pi = self.actor(self._encoder_fn(next_in, ab.next_proprio))
                tq1, tq2 = self.critic_target(
                    self._encoder_target_fn(next_in, ab.next_proprio), next_action
                )
                target_v = torch.min(tq1, tq2) - self.alpha.detach() * next_log_pi
                target_q = ab.reward + ab.discount_mask * cfg.gamma**n * target_v

            q1, q2 = self.critic(features, ab.action.repeat(n_views, 1))
            target_rep = target_q.repeat(n_views, 1)
            critic_loss = F.mse_loss(q1, target_rep) + F.mse_loss(q2, target_rep)
        if not self._loss_is_finite(critic_loss):
            return self._skipped_update_stats()

        self.critic_optimizer.zero_grad(set_to_none=True)
        if self.masker_optimizer is not None:
            self.masker_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        if self.masker_optimizer is not None:
            self.masker_optimizer.step()

        stats = [critic_loss.detach(), q1[:b].detach().mean(), target_q.mean(), mask_mean]
        if self.num_updates % cfg.actor_update_every == 0:
            actor_loss, alpha_loss, entropy = self._update_actor_and_alpha(features[:b].detach())
            self._last_actor = torch.stack([actor_loss, alpha_loss, entropy])
        if self.num_updates % cfg.target_update_every == 0:
            self.soft_update_targets()

        last = self._last_actor
        if last is None:
            last = torch.full((3,), float("nan"), device=self.device)
        values = torch.stack([*(s.float() for s in stats), *last, self.log_alpha.detach().exp()])
        return self._stats(values.tolist())

    def _stats(self, v: list[float]) -> dict[str, float]:
        keys = ("losses/critic", "charts/q", "charts/target_q", "charts/mask_mean",
                "losses/actor", "losses/alpha", "charts/entropy", "charts/alpha")
        return {**dict(zip(keys, v, strict=True)),
                "charts/skipped_updates": float(self.skipped_updates)}

    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        """True if ``loss`` is finite; else count the skip, or raise under ``stop``."""
        if bool(torch.isfinite(loss.detach())):
            return True
        self.skipped_updates += 1
        logger.warning("update %d skipped: non-finite critic loss (%d skipped so far)",
                       self.num_updates, self.skipped_updates)
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteError(
                f"update {self.num_updates}: the critic loss is not finite and "
                "agent.on_nonfinite is 'stop'; the last saved checkpoint is untouched"
            )
        return False

    def _skipped_update_stats(self) -> dict[str, float]:
        """Metrics of a skipped update: NaN losses, the temperature as it is."""
        nan = float("nan")
        return self._stats([nan] * 7 + [float(self.log_alpha.detach().exp())])

    def weights_finite(self) -> bool:
        """True if every network weight and ``log_alpha`` is finite (one device sync)."""
        params = [p for m in self.modules().values() for p in m.parameters()]
        flags = torch.stack([torch.isfinite(p).all() for p in [*params, self.log_alpha]])
        return bool(flags.all())

    def check_weights_finite(self, what: str) -> None:
        """Raise :class:`NonFiniteError` naming ``what`` if a weight is NaN or inf.

        Args:
            what: The action refused, e.g. ``"save checkpoint runs/x/checkpoints/learner.pt"``.

        Raises:
            NonFiniteError: If :meth:`weights_finite` is False.
        """
        if not self.weights_finite():
            raise NonFiniteError(
                f"weights are not finite at update {self.num_updates}: refused to {what}; "
                "the last saved checkpoint is untouched (resume from it with a lower lr)"
            )

    def _update_actor_and_alpha(
        self, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actor and temperature step on detached features (no Masker/encoder gradient).

        Args:
            features: float ``(B, D)`` detached clean features of the critic step.

        Returns:
            Detached scalars ``(actor_loss, alpha_loss, entropy estimate)``.
        """
        critic_params = list(self.critic.parameters())
        for p in critic_params:  # no weight gradients for the Q heads: only d/d(action)
            p.requires_grad_(False)
        try:
            with self._autocast():
                _, pi, log_pi = self.actor(features)
                aq1, aq2 = self.critic(features, pi)
                alpha = self.alpha.detach()
                actor_loss = (alpha * log_pi - torch.min(aq1, aq2)).mean()
            self.actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_optimizer.step()
        finally:
            for p in critic_params:
                p.requires_grad_(True)
        alpha_loss = (self.alpha * (-log_pi.detach() - self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_optimizer.step()
        return actor_loss.detach(), alpha_loss.detach(), -log_pi.detach().mean()

    @torch.no_grad()
    def soft_update_targets(self) -> None:
        """Polyak update: ``target <- (1 - tau) * target + tau * online``.

        ``critic_tau`` for the Q heads, ``encoder_tau`` for the target encoder (SAC-AE).
        """
        for online, target, tau in (
            (self.critic, self.critic_target, self.cfg.critic_tau),
            (self.encoder, self.encoder_target, self.cfg.encoder_tau),
        ):
            t_params = list(target.parameters())
            torch._foreach_lerp_(t_params, list(online.parameters()), tau)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, ``log_alpha``, counters and the augmentation RNG state.

        Returns:
            Dict of tensors / nested state dicts (safe for ``torch.load(weights_only=True)``).
        """
        return {
            "modules": {name: m.state_dict() for name, m in self.modules().items()},
            "optimizers": {name: o.state_dict() for name, o in self.optimizers().items()},
            "log_alpha": self.log_alpha.detach().cpu(),
            "num_updates": self.num_updates,
            "aug_generator": self.aug_generator.get_state(),
        }

    def load_networks(self, state: dict[str, Any]) -> None:
        """Load only the networks and the temperature of a :meth:`state_dict` (in place).

        For fine-tuning from another run (e.g. sim -> real): the optimizers start fresh
        with this agent's learning rates, and the update count and augmentation RNG stay.

        Raises:
            KeyError: If a network is missing from ``state``.
        """
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"].to(self.device))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (in place).

        Args:
            state: A dict produced by :meth:`state_dict` for the same config and spaces.

        Raises:
            KeyError: If a network or optimizer is missing from ``state``.
        """
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
        for name, opt in self.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"].to(self.device))
        self.num_updates = int(state["num_updates"])
        self.aug_generator.set_state(state["aug_generator"])
