"""Plain reference implementation of the MaDi-SAC update, and equivalence with the fast path.

``plain_update`` writes the same maths as :meth:`learner.agent.MadiSacAgent.update_from`
the straightforward way (the way the published learner computes it): the obs, next_obs,
overlaid and actor stacks are masked in separate Masker calls, every pass builds an
autograd graph, the pixels are NCHW and the mask multiplies raw pixels before ``/ 255``.
Flags switch on the fast path's optimisations one at a time (for the benchmark's ladder);
the maths stays the same with every combination.

It lives here (and is imported by benchmarks/bench_update.py), not in the package.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from learner.agent import AugmentedBatch, MadiSacAgent
from learner.config import AgentConfig
from learner.replay_buffer import Batch


def plain_update(
    agent: MadiSacAgent,
    ab: AugmentedBatch,
    *,
    next_no_grad: bool = False,
    unique_frames: bool = False,
    one_masker_call: bool = False,
    reuse_actor_features: bool = False,
) -> dict[str, float]:
    """Reference MaDi-SAC update with the same maths as the fast path.

    Flags (all False = the plain, redundant computation):
        next_no_grad: mask/encode next_obs under no_grad instead of building a graph.
        unique_frames: mask only the newest next frame; reuse the obs masks for the rest.
        one_masker_call: mask clean and overlaid obs frames in one Masker call.
        reuse_actor_features: the actor step reuses the critic step's clean features
            instead of re-masking and re-encoding obs (same values, computed once).
    """
    cfg = agent.cfg
    k, n = agent.frame_stack, cfg.n_step
    b = ab.frames.shape[0]
    h, w = agent.frame_hw
    mf = agent.memory_format
    agent.num_updates += 1

    def raw(x: torch.Tensor) -> torch.Tensor:  # uint8 (B, n, 3, H, W) -> float raw pixels
        return x.float().contiguous(memory_format=torch.contiguous_format)

    def masks_of(raw5: torch.Tensor) -> torch.Tensor:  # (B, n, 3, H, W) -> (B, n, 1, H, W)
        n = raw5.shape[1]
        if agent.masker is None:
            return torch.ones(raw5.shape[0], n, 1, h, w)
        x01 = (raw5 / 255.0).reshape(-1, 3, h, w).contiguous(memory_format=mf)
        return agent.masker(x01).reshape(raw5.shape[0], n, 1, h, w)

    def encode(enc, masked_raw5: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        n = masked_raw5.shape[0]
        stack = (masked_raw5 / 255.0).reshape(n, 3 * k, h, w).contiguous(memory_format=mf)
        return enc(stack, proprio)

    obs_raw = raw(ab.frames[:, :k])
    next_raw = raw(ab.frames[:, n:])
    ov_raw = raw(ab.overlay) if ab.overlay is not None else None

    # masks of obs (and overlay)
    if ov_raw is not None and one_masker_call:
        both = masks_of(torch.cat([obs_raw, ov_raw]))
        obs_masks, ov_masks = both[:b], both[b:]
    else:
        obs_masks = masks_of(obs_raw)
        ov_masks = masks_of(ov_raw) if ov_raw is not None else None

    # next_obs masks
    grad_ctx = torch.no_grad() if next_no_grad else torch.enable_grad()
    with grad_ctx:
        if unique_frames:
            newest = masks_of(raw(ab.frames[:, k:]))
            next_masks = torch.cat([obs_masks[:, n:], newest], 1)[:, -k:]
        else:
            next_masks = masks_of(next_raw)
        next_masked = (next_raw * next_masks).detach()
        _, next_action, next_log_pi = agent.actor(
            encode(agent.encoder, next_masked, ab.next_proprio)
        )
        tq1, tq2 = agent.critic_target(
            encode(agent.encoder_target, next_masked, ab.next_proprio), next_action
        )
        target_q = ab.reward + ab.discount_mask * cfg.gamma**n * (
            torch.min(tq1, tq2) - agent.alpha.detach() * next_log_pi
        )
    target_q = target_q.detach()

    if not reuse_actor_features:  # plain: the actor's own pass over obs, before the step
        actor_features = encode(agent.encoder, obs_raw * masks_of(obs_raw), ab.proprio).detach()

    feats = encode(agent.encoder, obs_raw * obs_masks, ab.proprio)
    q1, q2 = agent.critic(feats, ab.action)
    critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
    if ov_raw is not None:
        feats_ov = encode(agent.encoder, ov_raw * ov_masks, ab.proprio)
        q1a, q2a = agent.critic(feats_ov, ab.action)
        critic_loss = 0.5 * (critic_loss + F.mse_loss(q1a, target_q) + F.mse_loss(q2a, target_q))
    if reuse_actor_features:
        actor_features = feats.detach()

    agent.critic_optimizer.zero_grad()
    if agent.masker_optimizer is not None:
        agent.masker_optimizer.zero_grad()
    critic_loss.backward()
    agent.critic_optimizer.step()
    if agent.masker_optimizer is not None:
        agent.masker_optimizer.step()

    out = {"losses/critic": critic_loss.item()}
    if agent.num_updates % cfg.actor_update_every == 0:
        _, pi, log_pi = agent.actor(actor_features)
        aq1, aq2 = agent.critic(actor_features, pi)
        actor_loss = (agent.alpha.detach() * log_pi - torch.min(aq1, aq2)).mean()
        agent.actor_optimizer.zero_grad()
        actor_loss.backward()
        agent.actor_optimizer.step()
        alpha_loss = (agent.alpha * (-log_pi - agent.target_entropy).detach()).mean()
        agent.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        agent.alpha_optimizer.step()
        out["losses/actor"] = actor_loss.item()
        out["losses/alpha"] = alpha_loss.item()
    if agent.num_updates % cfg.target_update_every == 0:
        with torch.no_grad():
            for online, target, tau in (
                (agent.critic, agent.critic_target, cfg.critic_tau),
                (agent.encoder, agent.encoder_target, cfg.encoder_tau),
            ):
                for p, tp in zip(online.parameters(), target.parameters(), strict=True):
                    tp.copy_(tau * p + (1 - tau) * tp)
    return out


def make_batch(
    b: int, k: int, hw: tuple[int, int], p: int, a: int, seed: int = 0, n_step: int = 1
) -> Batch:
    rng = np.random.default_rng(seed)
    h, w = hw
    frames = rng.integers(0, 256, (b, k + n_step, 3, h, w), dtype=np.uint8)
    frames[:, :, 0, h // 3 : h // 2, w // 3 : w // 2] = 230  # a reddish blob
    return Batch(
        frames=frames,
        proprio=rng.normal(size=(b, p)).astype(np.float32),
        next_proprio=rng.normal(size=(b, p)).astype(np.float32),
        action=rng.uniform(-1, 1, (b, a)).astype(np.float32),
        reward=rng.normal(size=b).astype(np.float32),
        discount_mask=(rng.random(b) > 0.2).astype(np.float32),
    )


SMALL = dict(masker_filters=6, encoder_filters=8, mlp_hidden=[32, 32], batch_size=8)


@pytest.mark.parametrize("variant", ["madi", "sac_crop", "svea_overlay"])
@pytest.mark.parametrize(
    "flags",
    [
        {},
        {
            "next_no_grad": True,
            "unique_frames": True,
            "one_masker_call": True,
            "reuse_actor_features": True,
        },
    ],
)
def test_fast_path_equals_plain_reference(variant, flags):
    cfg = AgentConfig(variant=variant, seed=3, **SMALL)
    fast = MadiSacAgent(cfg, (9, 20, 28), 4, 3)
    plain = MadiSacAgent(cfg, (9, 20, 28), 4, 3, overlay_bank=fast.overlay_bank)
    for step in range(3):
        ab = fast.prepare(make_batch(8, 3, (20, 28), 4, 3, seed=step))
        torch.manual_seed(100 + step)
        got = fast.update_from(ab)
        torch.manual_seed(100 + step)
        want = plain_update(plain, copy.copy(ab), **flags)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, key)
    for name, module in fast.modules().items():
        for (pname, p), q in zip(
            module.named_parameters(), plain.modules()[name].parameters(), strict=True
        ):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{name}.{pname}")
    torch.testing.assert_close(fast.log_alpha, plain.log_alpha)


@pytest.mark.parametrize(("n_step", "layer_norm"), [(2, False), (3, False), (5, False),
                                                   (3, True)])
def test_n_step_fast_path_equals_plain_reference(n_step, layer_norm):
    # k = 3: n = 2 reuses one obs frame's mask for next_obs, n = 3 none, n = 5 skips frames.
    cfg = AgentConfig(variant="madi", seed=4, n_step=n_step, critic_layer_norm=layer_norm,
                      **SMALL)
    fast = MadiSacAgent(cfg, (9, 20, 28), 4, 3)
    plain = MadiSacAgent(cfg, (9, 20, 28), 4, 3, overlay_bank=fast.overlay_bank)
    with pytest.raises(ValueError, match="batch.frames"):
        fast.prepare(make_batch(8, 3, (20, 28), 4, 3))  # a 1-step window
    for step in range(2):
        ab = fast.prepare(make_batch(8, 3, (20, 28), 4, 3, seed=step, n_step=n_step))
        torch.manual_seed(step)
        got = fast.update_from(ab)
        torch.manual_seed(step)
        want = plain_update(plain, copy.copy(ab), next_no_grad=True, unique_frames=True,
                            one_masker_call=True, reuse_actor_features=True)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, key)
    for p, q in zip(fast.critic.parameters(), plain.critic.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_reference_with_actor_and_target_every_two():
    cfg = AgentConfig(variant="madi", seed=1, actor_update_every=2, target_update_every=2, **SMALL)
    fast = MadiSacAgent(cfg, (6, 16, 16), 3, 2)
    plain = MadiSacAgent(cfg, (6, 16, 16), 3, 2, overlay_bank=fast.overlay_bank)
    for step in range(4):
        ab = fast.prepare(make_batch(8, 2, (16, 16), 3, 2, seed=step))
        torch.manual_seed(step)
        got = fast.update_from(ab)
        torch.manual_seed(step)
        want = plain_update(plain, ab)
        assert got["losses/critic"] == pytest.approx(want["losses/critic"], rel=1e-4, abs=1e-5)
    for p, q in zip(fast.critic_target.parameters(), plain.critic_target.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_critic_layer_norm_is_an_option_off_by_default():
    paper = MadiSacAgent(AgentConfig(variant="madi", **SMALL), (9, 20, 28), 4, 3)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in paper.critic.modules())
    cfg = AgentConfig(variant="madi", critic_layer_norm=True, **SMALL)
    agent = MadiSacAgent(cfg, (9, 20, 28), 4, 3)
    for critic in (agent.critic, agent.critic_target):
        norms = [m for m in critic.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert [n.normalized_shape for n in norms] == [(32,), (32,)] * 2  # 2 heads x 2 layers
