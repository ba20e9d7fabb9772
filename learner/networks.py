"""Networks of MaDi-SAC for the UR5 visual reacher.

- :class:`Masker`: MaDi's per-frame soft mask (Grooten et al., AAMAS 2024, Sec. 4).
- :class:`SpatialSoftmaxEncoder`: the UR5 conv encoder (4 convs, 32 filters, 3x3, strides
  2, 2, 2, 1) + spatial softmax keypoints (Levine et al. 2016), concatenated with the
  proprioception (ReLoD / MaDi UR5 scripts).
- :class:`Actor`: tanh-squashed Gaussian policy with bounded log std (SAC-AE lineage).
- :class:`Critic`: twin Q MLPs on ``(features, action)``.

Pixel convention: the Masker takes frames scaled to [0, 1] (``x / 255``) and returns a
mask in [0, 1]; the masked frame is ``mask * x``, which the encoder takes scaled by
``1 / 255``. Computing ``mask * (x / 255)`` gives the same value with one scaling.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Actor",
    "Critic",
    "Masker",
    "QFunction",
    "SpatialSoftmaxEncoder",
    "mlp",
    "weight_init",
]


def weight_init(module: nn.Module) -> None:
    """Orthogonal init of linear and conv weights, zero biases (SAC-AE / SVEA lineage).

    Args:
        module: A module; applied to ``nn.Linear`` and ``nn.Conv2d`` (use with ``.apply``).
    """
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        gain = nn.init.calculate_gain("relu")
        nn.init.orthogonal_(module.weight, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def mlp(in_dim: int, hidden: list[int], out_dim: int, layer_norm: bool = False) -> nn.Sequential:
    """Multi-layer perceptron with ReLU between layers.

    Args:
        in_dim: Input size.
        hidden: Hidden layer widths, e.g. ``[1024, 1024]``.
        out_dim: Output size.
        layer_norm: Put a LayerNorm before each hidden ReLU (Ba et al. 2016), the critic
            normalisation of e.g. Nauman et al. 2024, "Overestimation, overfitting, and
            plasticity in actor-critic" (ICML), and of DrQ-v2's and SAC-AE's encoder heads.

    Returns:
        ``nn.Sequential`` mapping ``(N, in_dim)`` to ``(N, out_dim)``.
    """
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        norm = [nn.LayerNorm(b)] if layer_norm else []
        layers += [nn.Linear(a, b), *norm, nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class Masker(nn.Module):
    """MaDi's Masker: a 3-layer conv net giving a soft mask per RGB frame.

    ``x01 -> conv3x3(3->F) -> ReLU -> conv3x3(F->F) -> ReLU -> conv3x3(F->1) -> sigmoid``,
    stride 1, padding 1 (Grooten et al. 2024; ~10.4k parameters for F = 32). Weights are
    shared over the frames of a stack: pass frames as the batch dimension.

    Args:
        filters: Hidden channels ``F`` (paper: 32).
        init_bias: Initial bias of the output conv (paper: 0). A positive value starts the
            masks near 1 (``sigmoid(3) = 0.95``), whatever the random weights, so that no
            seed starts by blacking out the frame.
    """

    def __init__(self, filters: int = 32, init_bias: float = 0.0):
        super().__init__()
        self.filters = int(filters)
        self.conv1 = nn.Conv2d(3, filters, 3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(filters, filters, 3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(filters, 1, 3, stride=1, padding=1)
        self.apply(weight_init)
        nn.init.constant_(self.conv3.bias, float(init_bias))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Compute the soft masks of a batch of frames.

        Args:
            x01: float ``(N, 3, H, W)``, RGB frames scaled to [0, 1] (``x / 255``).

        Returns:
            float ``(N, 1, H, W)`` mask in [0, 1]; multiply it with the frame's pixels.
        """
        h = F.relu(self.conv1(x01), inplace=True)
        h = F.relu(self.conv2(h), inplace=True)
        return torch.sigmoid(self.conv3(h))


class SpatialSoftmaxEncoder(nn.Module):
    """UR5 encoder: 3x3 convs + spatial softmax keypoints, concatenated with proprio.

    Convs have ``filters`` channels, kernel 3, padding 1 and the given strides (UR5:
    [2, 2, 2, 1]), each followed by ReLU. The spatial softmax turns each of the last
    ``filters`` feature maps into its expected image position (x, y) in [-1, 1]
    (Levine et al., JMLR 2016), giving ``2 * filters`` features, then the proprioception
    is appended.

    Args:
        in_channels: Channels of the (masked) frame stack, ``3 * k``.
        proprio_dim: Proprioception size ``P``.
        filters: Channels of every conv.
        strides: Stride of each conv.
    """

    def __init__(self, in_channels: int, proprio_dim: int, filters: int, strides: list[int]):
        super().__init__()
        convs = []
        c = in_channels
        for s in strides:
            convs.append(nn.Conv2d(c, filters, 3, stride=s, padding=1))
            c = filters
        self.convs = nn.ModuleList(convs)
        self.filters = int(filters)
        self.proprio_dim = int(proprio_dim)
        self.feature_dim = 2 * self.filters + self.proprio_dim
        self.apply(weight_init)

    def forward(self, obs01: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Encode a masked frame stack and proprioception.

        Args:
            obs01: float ``(N, 3k, H, W)``, the masked stack scaled to [0, 1].
            proprio: float ``(N, P)``.

        Returns:
            float32 ``(N, 2 * filters + P)``: keypoints (x, y) per channel, then proprio.
        """
        h = obs01
        for conv in self.convs:
            h = F.relu(conv(h), inplace=True)
        n, c, fh, fw = h.shape
        attention = torch.softmax(h.float().reshape(n, c, fh * fw), dim=-1)
        ys = torch.linspace(-1.0, 1.0, fh, device=h.device)
        xs = torch.linspace(-1.0, 1.0, fw, device=h.device)
        attention = attention.reshape(n, c, fh, fw)
        keypoint_x = (attention.sum(dim=2) * xs).sum(dim=-1)  # (N, C)
        keypoint_y = (attention.sum(dim=3) * ys).sum(dim=-1)  # (N, C)
        return torch.cat([keypoint_x, keypoint_y, proprio.float()], dim=1)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on encoder features (SAC; SAC-AE log-std bounds).

    Args:
        feature_dim: Encoder feature size.
        hidden: MLP widths.
        action_dim: Action size ``A``.
        log_std_min: Lower bound of the log std.
        log_std_max: Upper bound of the log std.
    """

    def __init__(
        self,
        feature_dim: int,
        hidden: list[int],
        action_dim: int,
        log_std_min: float = -10.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.trunk = mlp(feature_dim, hidden, 2 * action_dim)
        self.action_dim = int(action_dim)
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        self.apply(weight_init)

    def forward(
        self, features: torch.Tensor, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute the squashed mean, a squashed sample and its log-probability.

        Args:
            features: float ``(N, feature_dim)``.
            sample: Draw ``pi`` with the global torch RNG when True; else ``pi = mu`` and
                ``log_pi`` is that of the mean.

        Returns:
            ``(mu, pi, log_pi)``: float32 ``(N, A)`` tanh(mean), float32 ``(N, A)`` tanh of
            the sample (both in [-1, 1]), float32 ``(N, 1)`` log-density of ``pi`` including
            the tanh change of variables.
        """
        mean, log_std = self.trunk(features).float().chunk(2, dim=-1)
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        if sample:
            noise = torch.randn_like(mean)
            u = mean + noise * log_std.exp()
        else:
            noise = torch.zeros_like(mean)
            u = mean
        log_pi = (-0.5 * noise.pow(2) - log_std).sum(-1, keepdim=True) - 0.5 * math.log(
            2 * math.pi
        ) * self.action_dim
        pi = torch.tanh(u)
        log_pi = log_pi - torch.log(F.relu(1 - pi.pow(2)) + 1e-6).sum(-1, keepdim=True)
        return torch.tanh(mean), pi, log_pi


class QFunction(nn.Module):
    """One Q MLP on the concatenation of features and action.

    Args:
        feature_dim: Encoder feature size.
        hidden: MLP widths.
        action_dim: Action size.
        layer_norm: LayerNorm before each hidden ReLU (see :func:`mlp`).
    """

    def __init__(self, feature_dim: int, hidden: list[int], action_dim: int,
                 layer_norm: bool = False):
        super().__init__()
        self.net = mlp(feature_dim + action_dim, hidden, 1, layer_norm)
        self.apply(weight_init)

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Evaluate Q.

        Args:
            features: float ``(N, feature_dim)``.
            action: float ``(N, A)`` in [-1, 1].

        Returns:
            float32 ``(N, 1)``.
        """
        return self.net(torch.cat([features, action.to(features.dtype)], dim=1)).float()


class Critic(nn.Module):
    """Twin Q heads (clipped double Q, Fujimoto et al. 2018) on shared encoder features.

    Args:
        feature_dim: Encoder feature size.
        hidden: MLP widths of each head.
        action_dim: Action size.
        layer_norm: LayerNorm before each hidden ReLU of both heads (see :func:`mlp`).
    """

    def __init__(self, feature_dim: int, hidden: list[int], action_dim: int,
                 layer_norm: bool = False):
        super().__init__()
        self.q1 = QFunction(feature_dim, hidden, action_dim, layer_norm)
        self.q2 = QFunction(feature_dim, hidden, action_dim, layer_norm)

    def forward(
        self, features: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate both heads.

        Args:
            features: float ``(N, feature_dim)``.
            action: float ``(N, A)``.

        Returns:
            ``(q1, q2)``, each float32 ``(N, 1)``.
        """
        return self.q1(features, action), self.q2(features, action)
