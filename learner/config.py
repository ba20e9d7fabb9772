"""Hyperparameters of the MaDi-SAC learner (one validated pydantic model).

Defaults are the paper's UR5 values (Grooten et al., "MaDi: Learning to Mask Distractions
for Generalization in Visual Deep Reinforcement Learning", AAMAS 2024, and its UR5 scripts
in bramgrooten/relod): Masker of 32 filters, encoder of 4 convs with 32 filters and strides
2, 2, 2, 1 plus spatial softmax, MLPs 1024x1024, Adam lr 3e-4, gamma 0.99, tau 0.005,
initial temperature 0.1, batch 128, replay 100k, 1000 random steps. These sizes are meant
for a GPU; ``configs/sim_quick.yaml`` shrinks them for a CPU.

The YAML section ``agent:`` of a run configuration is parsed into :class:`AgentConfig`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["RUNTIME_ONLY_FIELDS", "AgentConfig", "Variant"]

#: The three agents compared in the MaDi paper, all on one code path.
Variant = Literal["madi", "sac_crop", "svea_overlay"]

#: Fields that only choose how/where the maths runs, not what is learnt; they may differ
#: between a checkpoint and the config that loads it (see :func:`AgentConfig.learning_dict`).
RUNTIME_ONLY_FIELDS: frozenset[str] = frozenset(
    {"device", "amp", "compile", "channels_last", "cpu_threads", "cpu_allocator_tuning",
     "replay_frame_codec", "on_nonfinite"}
)

_Stride = Annotated[int, Field(ge=1, le=4)]
_Width = Annotated[int, Field(ge=1, le=8192)]


class AgentConfig(BaseModel):
    """Every hyperparameter of the MaDi-SAC learner (YAML section ``agent:``).

    ``variant`` picks one of the paper's agents, all sharing the same update code:
    ``"madi"`` (Masker on, overlay strong augmentation + random shift),
    ``"sac_crop"`` (Masker off, random shift only: SAC + crop/shift, the RAD/DrQ baseline),
    ``"svea_overlay"`` (Masker off, overlay + random shift: SVEA).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False,
                              allow_inf_nan=False)

    variant: Variant = Field(
        "madi",
        description="madi: Masker + overlay + shift; sac_crop: shift only (Masker off); "
        "svea_overlay: overlay + shift (Masker off).",
    )
    masker_filters: int = Field(
        32, ge=1, le=256, description="Channels of the Masker's two hidden 3x3 convs (paper: 32)."
    )
    masker_init_bias: float = Field(
        0.0, ge=-10.0, le=10.0,
        description="Initial bias of the Masker's output conv (paper: 0); 3 starts every "
        "seed's masks near 1 (sigmoid(3) = 0.95).",
    )
    encoder_filters: int = Field(
        32, ge=1, le=512, description="Channels of every encoder conv (UR5 paper: 32)."
    )
    encoder_strides: list[_Stride] = Field(
        default_factory=lambda: [2, 2, 2, 1],
        min_length=1,
        max_length=8,
        description="Stride of each 3x3 encoder conv, one entry per conv (UR5: [2, 2, 2, 1]).",
    )
    mlp_hidden: list[_Width] = Field(
        default_factory=lambda: [1024, 1024],
        min_length=1,
        max_length=6,
        description="Hidden widths of the actor and of each critic MLP (paper: [1024, 1024]).",
    )
    actor_log_std_min: float = Field(
        -10.0, ge=-20.0, le=0.0, description="Lower bound of the actor's log std (SAC-AE: -10)."
    )
    actor_log_std_max: float = Field(
        2.0, ge=-5.0, le=5.0, description="Upper bound of the actor's log std (SAC-AE: 2)."
    )
    actor_lr: float = Field(3e-4, gt=0.0, le=1.0, description="Adam lr of the actor (UR5: 3e-4).")
    critic_lr: float = Field(
        3e-4, gt=0.0, le=1.0, description="Adam lr of the critic + encoder (UR5: 3e-4)."
    )
    masker_lr: float = Field(
        3e-4, gt=0.0, le=1.0, description="Adam lr of the Masker (UR5 scripts: 3e-4; DMC 1e-3)."
    )
    alpha_lr: float = Field(
        3e-4, gt=0.0, le=1.0, description="Adam lr of log_alpha (UR5: 3e-4; DMC 1e-4)."
    )
    alpha_beta1: float = Field(
        0.5, ge=0.0, lt=1.0, description="Adam beta1 of the temperature optimizer (SAC-AE: 0.5)."
    )
    gamma: float = Field(0.99, ge=0.0, le=1.0, description="Discount factor per agent step.")
    on_nonfinite: Literal["skip", "stop"] = Field(
        "skip",
        description="An update whose critic loss is NaN or inf: skip = leave every weight "
        "as it was and count it (charts/skipped_updates); stop = end the run with an error.",
    )
    n_step: int = Field(
        1, ge=1, le=10,
        description="Steps of the critic's return target (paper: 1; DrQ-v2: 3): "
        "r_t + ... + gamma^(n-1) r_(t+n-1) + gamma^n V(s_(t+n)).",
    )
    critic_layer_norm: bool = Field(
        False,
        description="LayerNorm before each hidden ReLU of the Q heads (paper: off; Nauman "
        "et al. 2024 found it the most reliable single fix of actor-critic training).",
    )
    critic_tau: float = Field(
        0.005, gt=0.0, le=1.0, description="Polyak rate of the target Q heads (UR5: 0.005)."
    )
    encoder_tau: float = Field(
        0.005, gt=0.0, le=1.0, description="Polyak rate of the target encoder (UR5: 0.005)."
    )
    init_temperature: float = Field(
        0.1, gt=0.0, le=10.0, description="Initial entropy temperature alpha (paper: 0.1)."
    )
    actor_update_every: int = Field(
        1, ge=1, le=100, description="Actor + temperature update every N critic updates."
    )
    target_update_every: int = Field(
        1, ge=1, le=100, description="Target network soft update every N critic updates."
    )
    batch_size: int = Field(128, ge=1, le=4096, description="Transitions per update (paper: 128).")
    replay_capacity: int = Field(
        100_000, ge=1, le=10_000_000, description="Replay capacity in transitions (UR5: 100k)."
    )
    replay_frame_codec: Literal["none", "png"] = Field(
        "none",
        description="none: raw uint8 frames (fastest sampling); png: lossless PNG per frame "
        "(sim frames ~40x smaller, sampling ~45 ms slower per batch of 128; see BENCHMARKS.md).",
    )
    init_random_steps: int = Field(
        1000, ge=0, le=1_000_000, description="Uniform random env steps before learning starts."
    )
    updates_per_step: float = Field(
        1.0,
        gt=0.0,
        le=16.0,
        description="Cap on gradient updates per env step; fractional values accumulate "
        "(the published UR5 run is capped at 0.6).",
    )
    shift_pad: int = Field(
        4, ge=0, le=32, description="Random-shift (weak augmentation) padding in pixels."
    )
    overlay_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the natural image in the overlay (0.5)."
    )
    overlay_folder: str | None = Field(
        None,
        description="Folder of natural images for the overlay (train split); None uses the "
        "bundled scikit-image samples.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Torch device; auto picks cuda when available."
    )
    amp: bool = Field(
        True, description="bfloat16 autocast of the conv/MLP forward passes (CUDA only)."
    )
    compile: bool = Field(
        False, description="torch.compile the Masker and encoder (helps on CUDA; slow to warm)."
    )
    channels_last: bool = Field(
        True, description="NHWC memory format for the convs (faster with oneDNN and cuDNN)."
    )
    cpu_threads: int | None = Field(
        None, ge=1, le=512, description="torch.set_num_threads on CPU; None leaves torch's default."
    )
    cpu_allocator_tuning: bool = Field(
        False,
        description="On CPU (Linux glibc) keep freed activation buffers in the heap instead of "
        "returning them to the OS, so big tensors are not page-faulted in every update.",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of networks and augmentations.")

    @model_validator(mode="after")
    def _check_bounds(self) -> AgentConfig:
        if self.actor_log_std_min >= self.actor_log_std_max:
            raise ValueError(
                f"actor_log_std_min ({self.actor_log_std_min}) must be < actor_log_std_max "
                f"({self.actor_log_std_max})"
            )
        return self

    @property
    def use_masker(self) -> bool:
        """True when the variant trains a Masker (``"madi"``)."""
        return self.variant == "madi"

    @property
    def use_overlay(self) -> bool:
        """True when the variant uses the overlay strong augmentation (SVEA loss)."""
        return self.variant in ("madi", "svea_overlay")

    def learning_dict(self) -> dict:
        """The fields that define what is learnt (all but :data:`RUNTIME_ONLY_FIELDS`).

        Returns:
            JSON-serialisable dict of field name to value.
        """
        return {
            k: v for k, v in self.model_dump(mode="json").items() if k not in RUNTIME_ONLY_FIELDS
        }

    def config_hash(self) -> str:
        """Short stable hash of :meth:`learning_dict` (for checkpoints and handshakes).

        Returns:
            The first 16 hex digits of the SHA-256 of the canonical JSON.
        """
        text = json.dumps(self.learning_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
