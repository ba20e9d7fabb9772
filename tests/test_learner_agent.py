"""MaDi-SAC agent: shapes, the MaDi gradient rule, target updates, config validation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from test_learner_reference import SMALL, make_batch

from learner.agent import MadiSacAgent
from learner.config import AgentConfig
from learner.networks import Actor, Critic, Masker, SpatialSoftmaxEncoder


def conv_out_hw(enc: SpatialSoftmaxEncoder, h: int, w: int) -> tuple[int, int]:
    for conv in enc.convs:
        s = conv.stride[0]
        h, w = (h - 1) // s + 1, (w - 1) // s + 1
    return h, w


def test_network_shapes_and_dtypes():
    masker = Masker(32)
    assert (
        sum(p.numel() for p in masker.parameters())
        == 3 * 32 * 9 + 32 + 32 * 32 * 9 + 32 + 32 * 9 + 1
    )
    x01 = torch.rand(6, 3, 90, 160)
    with torch.no_grad():
        m = masker(x01)
    assert m.shape == (6, 1, 90, 160) and m.dtype == torch.float32
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0

    enc = SpatialSoftmaxEncoder(9, 15, 32, [2, 2, 2, 1])
    assert conv_out_hw(enc, 90, 160) == (12, 20)
    feats = enc(torch.rand(2, 9, 90, 160), torch.zeros(2, 15))
    assert feats.shape == (2, 2 * 32 + 15) and enc.feature_dim == 79
    assert float(feats[:, :64].detach().abs().max()) <= 1.0  # keypoints in [-1, 1]

    actor = Actor(79, [64, 64], 5)
    mu, pi, log_pi = actor(feats)
    assert mu.shape == pi.shape == (2, 5) and log_pi.shape == (2, 1)
    assert float(pi.detach().abs().max()) <= 1.0
    q1, q2 = Critic(79, [64, 64], 5)(feats, pi)
    assert q1.shape == q2.shape == (2, 1)


def test_update_returns_finite_metrics_for_every_variant():
    for variant in ("madi", "sac_crop", "svea_overlay"):
        agent = MadiSacAgent(AgentConfig(variant=variant, **SMALL), (9, 16, 20), 4, 3)
        assert (agent.masker is not None) == (variant == "madi")
        assert (agent.overlay_bank is not None) == (variant != "sac_crop")
        out = agent.update(make_batch(8, 3, (16, 20), 4, 3))
        assert set(out) >= {"losses/critic", "losses/actor", "losses/alpha", "charts/alpha"}
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
        assert agent.num_updates == 1


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_masker_trained_by_critic_loss_only():
    # actor step disabled in update(): the critic step alone moves the Masker
    cfg = AgentConfig(variant="madi", actor_update_every=100, **SMALL)
    agent = MadiSacAgent(cfg, (9, 16, 20), 4, 3)
    before = _snapshot(agent.masker)
    actor_before = _snapshot(agent.actor)
    agent.update(make_batch(8, 3, (16, 20), 4, 3))
    assert _changed(before, agent.masker)
    assert not _changed(actor_before, agent.actor)

    # the actor + alpha step leaves Masker, encoder and Q heads untouched, without gradients
    ab = agent.prepare(make_batch(8, 3, (16, 20), 4, 3, seed=1))
    with torch.no_grad():
        x01 = ab.frames[:, :3].float().reshape(-1, 3, 16, 20) / 255
        stack = (x01 * agent.masker(x01)).reshape(8, 9, 16, 20)
    features = agent.encoder(stack, ab.proprio).detach()
    for opt in agent.optimizers().values():
        opt.zero_grad(set_to_none=True)
    frozen = {n: _snapshot(m) for n, m in agent.modules().items() if n != "actor"}
    actor_before = _snapshot(agent.actor)
    agent._update_actor_and_alpha(features)
    assert _changed(actor_before, agent.actor)
    for name, snap in frozen.items():
        module = agent.modules()[name]
        assert not _changed(snap, module), name
        assert all(p.grad is None for p in module.parameters()), name


def test_actor_loss_does_not_reach_masker_or_encoder_in_full_update():
    # Hooks record which parameters get a gradient during the actor's backward pass.
    cfg = AgentConfig(variant="madi", **SMALL)
    agent = MadiSacAgent(cfg, (9, 16, 20), 4, 3)
    ab = agent.prepare(make_batch(8, 3, (16, 20), 4, 3))
    touched = []
    original = agent._update_actor_and_alpha

    def spy(features):
        assert not features.requires_grad and features.grad_fn is None
        hooks = [
            p.register_hook(lambda g, n=n: touched.append(n))
            for n, m in (("masker", agent.masker), ("encoder", agent.encoder))
            for p in m.parameters()
        ]
        try:
            return original(features)
        finally:
            for hk in hooks:
                hk.remove()

    agent._update_actor_and_alpha = spy
    agent.update_from(ab)
    assert touched == []


def test_target_networks_move_by_exactly_tau():
    cfg = AgentConfig(variant="madi", critic_tau=0.01, encoder_tau=0.05, **SMALL)
    agent = MadiSacAgent(cfg, (9, 16, 20), 4, 3)
    with torch.no_grad():  # make online and target differ
        for p in [*agent.critic.parameters(), *agent.encoder.parameters()]:
            p.add_(torch.randn_like(p))
    old_q = _snapshot(agent.critic_target)
    old_e = _snapshot(agent.encoder_target)
    agent.soft_update_targets()
    for old, online, new, tau in (
        (old_q, agent.critic.parameters(), agent.critic_target.parameters(), 0.01),
        (old_e, agent.encoder.parameters(), agent.encoder_target.parameters(), 0.05),
    ):
        for o, p, n in zip(old, online, new, strict=True):
            torch.testing.assert_close(n, (1 - tau) * o + tau * p, rtol=0, atol=1e-6)


def test_target_uses_current_masker_and_no_target_masker():
    agent = MadiSacAgent(AgentConfig(variant="madi", **SMALL), (9, 16, 20), 4, 3)
    assert "masker_target" not in agent.modules()
    names = [n for n, _ in agent.encoder_target.named_parameters()]
    assert names == [n for n, _ in agent.encoder.named_parameters()]


def test_config_validation_names_field():
    with pytest.raises(ValidationError, match="masker_filters"):
        AgentConfig(masker_filters=0)
    with pytest.raises(ValidationError, match="extra"):
        AgentConfig(not_a_field=1)
    with pytest.raises(ValidationError, match="variant"):
        AgentConfig(variant="drq")
    with pytest.raises(ValidationError, match="actor_log_std_min"):
        AgentConfig(actor_log_std_min=-1.0, actor_log_std_max=-2.0)
    cfg = AgentConfig()
    assert cfg.mlp_hidden == [1024, 1024] and cfg.encoder_strides == [2, 2, 2, 1]
    assert cfg.batch_size == 128 and cfg.init_temperature == 0.1
    assert cfg.config_hash() == AgentConfig(device="cpu").config_hash()
    assert cfg.config_hash() != AgentConfig(critic_lr=1e-3).config_hash()


def test_bad_batch_shape_raises():
    agent = MadiSacAgent(AgentConfig(variant="sac_crop", **SMALL), (9, 16, 20), 4, 3)
    with pytest.raises(ValueError, match="batch.frames"):
        agent.prepare(make_batch(8, 2, (16, 20), 4, 3))
    with pytest.raises(ValueError, match="image_shape"):
        MadiSacAgent(AgentConfig(**SMALL), (8, 16, 20), 4, 3)


def test_masker_init_bias_starts_every_seed_near_one():
    x = torch.rand(8, 3, 45, 80)
    means = []
    for seed in range(6):
        torch.manual_seed(seed)
        paper = Masker(4)(x).mean().item()
        torch.manual_seed(seed)
        biased = Masker(4, init_bias=3.0)(x).mean().item()
        means.append((paper, biased))
    assert all(torch.equal(Masker(4).conv3.bias, torch.zeros(1)) for _ in range(2))  # paper: 0
    assert all(b > 0.75 for _, b in means) and sum(b for _, b in means) / 6 > 0.9, means
    assert all(b > p for p, b in means)
    cfg = AgentConfig(masker_filters=4, masker_init_bias=3.0, encoder_filters=8,
                      mlp_hidden=[16], batch_size=4, encoder_strides=[2, 2])
    agent = MadiSacAgent(cfg, (9, 45, 80), 15, 5)
    assert agent.masker.conv3.bias.item() == 3.0


def _params(agent: MadiSacAgent) -> list[torch.Tensor]:
    return [p.detach().clone() for m in agent.modules().values() for p in m.parameters()]


def test_non_finite_loss_skips_the_update_or_stops_the_run(tmp_path):
    from learner.agent import NonFiniteError
    from learner.checkpoint import save_run_checkpoints

    agent = MadiSacAgent(AgentConfig(variant="madi", seed=0, **SMALL), (9, 20, 28), 4, 3)
    agent.update(make_batch(8, 3, (20, 28), 4, 3, seed=0))
    before, alpha = _params(agent), agent.log_alpha.detach().clone()
    poisoned = make_batch(8, 3, (20, 28), 4, 3, seed=1)
    poisoned.reward[3] = float("nan")
    out = agent.update(poisoned)
    assert out["charts/skipped_updates"] == 1.0 and out["losses/critic"] != out["losses/critic"]
    for p, q in zip(before, _params(agent), strict=True):  # nothing moved, targets included
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert torch.equal(alpha, agent.log_alpha.detach())
    assert agent.update(make_batch(8, 3, (20, 28), 4, 3, seed=2))["losses/critic"] >= 0.0

    agent.cfg.on_nonfinite = "stop"
    with pytest.raises(NonFiniteError, match="critic loss is not finite"):
        agent.update(poisoned)

    save_run_checkpoints(tmp_path, agent, {"env_steps": 10, "episodes": 1})
    good = (tmp_path / "learner.pt").read_bytes(), (tmp_path / "policy.pt").read_bytes()
    with torch.no_grad():
        next(agent.actor.parameters())[0] = float("inf")
    assert not agent.weights_finite()
    with pytest.raises(NonFiniteError, match="refused to save checkpoint"):
        save_run_checkpoints(tmp_path, agent, {"env_steps": 20, "episodes": 2})
    assert ((tmp_path / "learner.pt").read_bytes(), (tmp_path / "policy.pt").read_bytes()) == good


def test_checkpoint_without_a_later_field_loads_as_its_default():
    from learner.checkpoint import compare_settings

    cfg = AgentConfig(**SMALL)
    spaces = {"image_shape": [9, 20, 28], "proprio_dim": 4, "action_dim": 3}
    older = {k: v for k, v in cfg.learning_dict().items() if k != "n_step"}
    assert compare_settings(older, spaces, cfg, spaces) == {}
    assert compare_settings(older, spaces, cfg.model_copy(update={"n_step": 3}), spaces) == {
        "agent.n_step": (1, 3)}
