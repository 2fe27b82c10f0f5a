"""Every advantage and loss function against values worked out by hand on tiny tensors."""

import dataclasses
import math
import statistics
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rlinf_wm.algorithms import (
    NonFiniteGuard,
    NonFiniteLossError,
    check_finite,
    compute_advantages,
    episode_equal_weights,
    episode_returns,
    explained_variance,
    flatten_valid,
    gae_advantages,
    group_normalized_advantages,
    huber,
    iterate_minibatches,
    kl_k3,
    masked_mean,
    normalize_advantages,
    policy_loss,
    success_chunk_rewards,
    valid_chunk_mask,
    value_loss,
)
from rlinf_wm.config.algorithm_schema import AlgorithmConfig
from rlinf_wm.config.validate import ConfigError, validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "examples" / "embodiment" / "config" / "algorithm"
NAN = float("nan")


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def flat(x):
    return x.flatten().tolist()


def logprobs_for_ratios(ratios):
    """(new, old) log-probs [M, K=1, A=1] whose token ratios are ``ratios``; ``new`` requires grad."""
    old = torch.full((len(ratios), 1, 1), -1.0)
    new = (old + torch.log(t(ratios)).reshape(-1, 1, 1)).requires_grad_()
    return new, old


# ----------------------------------------------------------------------------- masks


def test_valid_chunk_mask_keeps_the_ending_chunk_and_drops_later_ones():
    terminated = torch.tensor([[False, True, False, False], [False, False, False, False]])
    truncated = torch.tensor([[False, False, False, False], [False, False, False, True]])
    assert valid_chunk_mask(terminated, truncated).tolist() == [[True, True, False, False], [True] * 4]
    # Per-step flags [B, N, K]: a done on any step ends the episode in that chunk.
    per_step = torch.zeros(1, 3, 2, dtype=torch.bool)
    per_step[0, 0, 1] = True
    assert valid_chunk_mask(per_step, torch.zeros_like(per_step)).tolist() == [[True, False, False]]


def test_masked_mean_ignores_nan_padding():
    values = t([[1.0, 3.0, NAN], [5.0, NAN, NAN]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(values, mask).item() == pytest.approx((1 + 3 + 5) / 3)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


# ----------------------------------------------------------------------------- GRPO


def test_group_advantages_two_groups_one_with_zero_variance():
    # Interleaved, non-contiguous group ids: group 7 = envs 0, 2, 4 (returns 1, 0, 0), group 3 = envs 1, 3 (1, 1).
    returns = t([1.0, 1.0, 0.0, 1.0, 0.0])
    group_id = torch.tensor([7, 3, 7, 3, 7])
    out = group_normalized_advantages(returns, group_id, eps=1e-6)

    mean = 1 / 3
    std = math.sqrt(((1 - mean) ** 2 + 2 * (0 - mean) ** 2) / (3 - 1))  # unbiased: sqrt(1/3)
    high, low = (1 - mean) / (std + 1e-6), (0 - mean) / (std + 1e-6)
    assert out.advantages.tolist() == pytest.approx([high, 0.0, low, 0.0, low], abs=1e-6)
    assert high == pytest.approx(1.1547, abs=1e-4)
    assert out.informative.tolist() == [True, False, True, False, True]
    assert out.num_groups == 2 and out.num_zero_variance_groups == 1
    assert out.zero_variance_group_ids.tolist() == [3]


def test_single_member_group_counts_as_zero_variance():
    out = group_normalized_advantages(t([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    assert out.informative.tolist() == [True, True, False]
    assert out.advantages[2].item() == 0.0


def test_group_advantages_without_std_scaling_keep_the_returns_spread():
    # Graded returns (e.g. the world model's success probabilities): group 0 spreads 0.1, group 1 spreads 0.01.
    returns = t([0.3, 0.2, 0.97, 0.96])
    group_id = torch.tensor([0, 0, 1, 1])
    centred = group_normalized_advantages(returns, group_id, scale_by_std=False)
    assert centred.advantages.tolist() == pytest.approx([0.05, -0.05, 0.005, -0.005], abs=1e-6)
    # With std scaling both groups get the same unit-size advantages, whatever their spread.
    scaled = group_normalized_advantages(returns, group_id)
    assert scaled.advantages.tolist() == pytest.approx([0.7071, -0.7071, 0.7071, -0.7071], abs=1e-3)
    assert centred.informative.all() and scaled.informative.all()
    assert centred.group_std.tolist() == pytest.approx([0.0707, 0.00707], abs=1e-4)


def test_episode_returns_sum_rewards_over_valid_chunks_only():
    rewards = t([[[1.0, 0.5], [2.0, 0.0], [9.0, 9.0]]])  # [B=1, N=3, K=2]; chunk 2 is padding
    mask = torch.tensor([[True, True, False]])
    assert episode_returns(rewards, mask).tolist() == [3.5]


def _grpo_config(**overrides):
    return AlgorithmConfig(name="grpo", group_size=2, **overrides)


def test_compute_advantages_grpo_filters_zero_variance_groups_and_padding():
    # B=4, N=3, K=1. Group 0 = envs 0, 1 (success 1, 0); group 1 = envs 2, 3 (both fail).
    terminated = torch.zeros(4, 3, 1, dtype=torch.bool)
    terminated[0, 0, 0] = True  # env 0 succeeds in chunk 0: chunks 1, 2 are padding
    truncated = torch.zeros_like(terminated)
    truncated[:, 2, 0] = True
    success = torch.tensor([True, False, False, False])
    group_id = torch.tensor([0, 0, 1, 1])
    kwargs = dict(rewards=torch.zeros(4, 3, 1), terminated=terminated, truncated=truncated,
                  success=success, group_id=group_id)

    out = compute_advantages(_grpo_config(zero_variance_groups="filter"), **kwargs)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # returns (1, 0): mean 0.5, unbiased std sqrt(0.5)
    assert flat(out.advantages) == pytest.approx([a, 0, 0, -a, -a, -a, 0, 0, 0, 0, 0, 0], abs=1e-6)
    assert out.loss_mask.tolist() == [[True, False, False], [True] * 3, [False] * 3, [False] * 3]
    assert out.returns is None
    assert out.zero_variance_group_ids.tolist() == [1]
    assert out.metrics["rollout/zero_variance_groups"].item() == 1.0
    assert out.metrics["rollout/group_return_std"].item() == pytest.approx(math.sqrt(0.5) / 2, abs=1e-6)
    assert out.metrics["rollout/valid_chunks"].item() == 4.0

    kept = compute_advantages(_grpo_config(zero_variance_groups="keep"), **kwargs)
    assert kept.loss_mask.tolist() == [[True, False, False], [True] * 3, [True] * 3, [True] * 3]
    assert torch.equal(kept.advantages, out.advantages)
    # batch re-normalisation sees the informative chunks only: the kept all-fail group stays at 0, not -mean / std
    normalized = {mode: compute_advantages(_grpo_config(zero_variance_groups=mode, normalize_advantages=True), **kwargs)
                  for mode in ("keep", "filter")}
    assert flat(normalized["keep"].advantages)[6:] == [0.0] * 6
    assert torch.equal(normalized["keep"].advantages, normalized["filter"].advantages)
    assert flat(normalized["filter"].advantages)[:4] != pytest.approx(flat(out.advantages)[:4])  # it did normalise

    rewards = t([[[2.0]] * 3, [[1.0]] * 3, [[0.0]] * 3, [[0.0]] * 3])
    summed = compute_advantages(_grpo_config(reward_type="sum"), **{**kwargs, "rewards": rewards})
    # Returns: env 0 = 2 (only chunk 0 valid), env 1 = 3 -> env 1 is above its group mean.
    assert summed.advantages[1, 0].item() > 0 > summed.advantages[0, 0].item()


def test_episode_equal_weights_give_every_episode_the_same_total():
    mask = t([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]).bool()
    w = episode_equal_weights(mask)
    assert w.sum(dim=1).tolist() == pytest.approx([7 / 3, 7 / 3, 0.0, 7 / 3])  # 7 chunks over 3 episodes
    assert masked_mean(w, mask).item() == pytest.approx(1.0)
    assert torch.all(w[~mask] == 0)


def test_episode_weighting_removes_the_length_bias_of_grpo_advantages():
    # One group: a success that ends in chunk 0 and a failure that runs all 4 chunks to the time limit.
    terminated = torch.zeros(2, 4, 1, dtype=torch.bool)
    terminated[0, 0, 0] = True
    truncated = torch.zeros_like(terminated)
    truncated[1, 3, 0] = True
    kwargs = dict(rewards=torch.zeros(2, 4, 1), terminated=terminated, truncated=truncated,
                  success=torch.tensor([True, False]), group_id=torch.tensor([0, 0]))
    per_chunk = compute_advantages(_grpo_config(), **kwargs)
    per_episode = compute_advantages(_grpo_config(loss_weighting="episode"), **kwargs)
    # Summed over the loss's chunks, the failure's four chunks outweigh the success's one...
    assert per_chunk.advantages.sum().item() < -1.0
    # ...unless each episode weighs the same; the signs per chunk stay.
    assert per_episode.advantages.sum().item() == pytest.approx(0.0, abs=1e-5)
    assert torch.equal(per_episode.advantages > 0, per_chunk.advantages > 0)
    assert torch.equal(per_episode.loss_mask, per_chunk.loss_mask)


def test_compute_advantages_grpo_requires_group_ids_and_success():
    flags = torch.zeros(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="group_id"):
        compute_advantages(_grpo_config(), rewards=torch.zeros(2, 2), terminated=flags, truncated=flags,
                           success=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="success"):
        compute_advantages(_grpo_config(), rewards=torch.zeros(2, 2), terminated=flags, truncated=flags,
                           group_id=torch.tensor([0, 0]))


# ----------------------------------------------------------------------------- PPO / GAE

GAMMA, LAM = 0.9, 0.8
REWARDS = [1.0, 0.0, 2.0]
VALUES = [0.5, 0.4, 0.3]
NEXT_VALUES = [0.4, 0.3, 0.9]


def _gae(rewards, values, next_values, terminated, truncated, bootstrap_truncated=True):
    return gae_advantages(
        t([rewards]), t([values]), t([next_values]),
        torch.tensor([terminated]), torch.tensor([truncated]), GAMMA, LAM, bootstrap_truncated=bootstrap_truncated,
    )


def test_gae_three_chunks_with_termination_at_the_end():
    adv, ret = _gae(REWARDS, VALUES, NEXT_VALUES, [False, False, True], [False] * 3)
    a2 = 2.0 - 0.3  # terminated: no bootstrap from next_values[2] = 0.9
    a1 = (0.0 + GAMMA * 0.3 - 0.4) + GAMMA * LAM * a2
    a0 = (1.0 + GAMMA * 0.4 - 0.5) + GAMMA * LAM * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2])
    assert (a0, a1, a2) == pytest.approx((1.64768, 1.094, 1.7))
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.4, a2 + 0.3])


def test_gae_truncation_bootstraps_from_next_value_and_stops_at_the_boundary():
    # Truncated in chunk 1; chunk 2 is padding holding garbage. next_values[1] = V(final obs) = 0.7.
    adv, ret = _gae([1.0, 0.0, NAN], [0.5, 0.4, NAN], [0.4, 0.7, NAN], [False] * 3, [False, True, True])
    a1 = 0.0 + GAMMA * 0.7 - 0.4
    a0 = (1.0 + GAMMA * 0.4 - 0.5) + GAMMA * LAM * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, 0.0])
    assert a0 == pytest.approx(1.0256)
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.4, 0.0])


def test_gae_without_truncation_bootstrap_a_timeout_is_worth_its_rewards_only():
    # The same episode as above, with the step limit as part of the task: V(final obs) = 0.7 is ignored.
    adv, ret = _gae([1.0, 0.0, NAN], [0.5, 0.4, NAN], [0.4, 0.7, NAN], [False] * 3, [False, True, True],
                    bootstrap_truncated=False)
    a1 = 0.0 - 0.4
    a0 = (1.0 + GAMMA * 0.4 - 0.5) + GAMMA * LAM * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, 0.0])
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, 0.0, 0.0])


def test_gae_termination_ignores_next_value_even_if_garbage():
    adv, _ = _gae([1.0, 0.0, NAN], [0.5, 0.4, NAN], [0.4, NAN, NAN], [False, True, True], [False] * 3)
    a1 = 0.0 - 0.4
    assert adv[0].tolist() == pytest.approx([(1.0 + GAMMA * 0.4 - 0.5) + GAMMA * LAM * a1, a1, 0.0])


def test_gae_end_of_buffer_without_done_bootstraps():
    adv, _ = _gae(REWARDS, VALUES, NEXT_VALUES, [False] * 3, [False] * 3)
    a2 = 2.0 + GAMMA * 0.9 - 0.3
    a1 = (GAMMA * 0.3 - 0.4) + GAMMA * LAM * a2
    assert adv[0, 1:].tolist() == pytest.approx([a1, a2])


def test_gae_lambda_one_gamma_one_is_monte_carlo_return_minus_value():
    adv, ret = gae_advantages(t([REWARDS]), t([VALUES]), t([NEXT_VALUES]), torch.tensor([[0, 0, 1]]),
                              torch.zeros(1, 3), gamma=1.0, gae_lambda=1.0)
    assert ret[0].tolist() == pytest.approx([3.0, 2.0, 2.0])


def test_success_chunk_rewards_on_last_valid_chunk():
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    out = success_chunk_rewards(torch.tensor([True, True, False]), mask)
    assert out.tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_normalize_advantages_over_valid_entries():
    adv = t([[1.0, 2.0], [3.0, NAN]])
    mask = torch.tensor([[True, True], [True, False]])
    std = statistics.stdev([1.0, 2.0, 3.0])  # 1.0
    out = normalize_advantages(adv, mask, eps=0.0)
    assert flat(out) == pytest.approx([(1 - 2) / std, 0.0, (3 - 2) / std, 0.0])


def test_compute_advantages_ppo_success_reward_gae_and_normalisation():
    cfg = AlgorithmConfig(name="ppo", group_size=1, zero_variance_groups="keep", gamma=GAMMA, gae_lambda=LAM,
                          normalize_advantages=False, reward_type="success", bootstrap_truncated=True)
    terminated = torch.tensor([[False, True, False], [False, False, False]])
    truncated = torch.tensor([[False, False, False], [False, False, True]])
    values = t([[0.5, 0.4, NAN], [0.2, 0.2, 0.2]])
    next_values = t([[0.4, NAN, NAN], [0.2, 0.2, 0.6]])
    out = compute_advantages(cfg, rewards=torch.zeros(2, 3, 4), terminated=terminated, truncated=truncated,
                             success=torch.tensor([True, False]), values=values, next_values=next_values)
    # Env 0: success reward 1 in its terminal chunk 1; env 1: no reward, truncated in chunk 2.
    a01 = 1.0 - 0.4
    a00 = (GAMMA * 0.4 - 0.5) + GAMMA * LAM * a01
    a12 = GAMMA * 0.6 - 0.2
    a11 = (GAMMA * 0.2 - 0.2) + GAMMA * LAM * a12
    a10 = (GAMMA * 0.2 - 0.2) + GAMMA * LAM * a11
    assert flat(out.advantages) == pytest.approx([a00, a01, 0.0, a10, a11, a12])
    assert flat(out.returns) == pytest.approx([a00 + 0.5, a01 + 0.4, 0.0, a10 + 0.2, a11 + 0.2, a12 + 0.2])
    assert out.loss_mask.tolist() == [[True, True, False], [True, True, True]]

    # The default: env 1's timeout is a failure, V(final obs) = 0.6 is not bootstrapped.
    timeout = compute_advantages(dataclasses.replace(cfg, bootstrap_truncated=False), rewards=torch.zeros(2, 3, 4),
                                 terminated=terminated, truncated=truncated, success=torch.tensor([True, False]),
                                 values=values, next_values=next_values)
    assert timeout.returns[1, 2].item() == 0.0 and timeout.advantages[1, 2].item() == pytest.approx(-0.2)
    assert flat(timeout.advantages)[:2] == pytest.approx([a00, a01])

    cfg.normalize_advantages = True
    normed = compute_advantages(cfg, rewards=torch.zeros(2, 3, 4), terminated=terminated, truncated=truncated,
                                success=torch.tensor([True, False]), values=values, next_values=next_values)
    valid = [a00, a01, a10, a11, a12]
    mean, std = statistics.mean(valid), statistics.stdev(valid)
    assert normed.advantages[0, 0].item() == pytest.approx((a00 - mean) / (std + 1e-8), abs=1e-6)
    assert normed.advantages[0, 2].item() == 0.0
    assert flat(normed.returns) == pytest.approx(flat(out.returns))  # targets use raw GAE


# ----------------------------------------------------------------------------- policy loss


def test_clipped_loss_inside_and_outside_asymmetric_bounds():
    # clip range [0.8, 1.28]. (ratio, advantage) -> per-element loss max(-A r, -A clip(r)):
    cases = [
        (1.1, 2.0, -2.2),        # inside the range
        (1.5, 2.0, -2.0 * 1.28),  # above 1 + high with A > 0: clipped (no gradient)
        (0.5, -1.0, 0.8),         # below 1 - low with A < 0: clipped (no gradient)
        (1.5, -1.0, 1.5),         # above the range but A < 0: the unclipped term is larger
        (0.5, 2.0, -1.0),         # below the range but A > 0: unclipped
        (0.9, -1.0, 0.9),         # inside
    ]
    new, old = logprobs_for_ratios([c[0] for c in cases])
    adv = t([c[1] for c in cases])
    mask = torch.ones(6, dtype=torch.bool)
    loss, metrics = policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx(sum(c[2] for c in cases) / 6)
    assert loss.item() == pytest.approx(-2.56 / 6)
    assert metrics["train/actor/clipfrac_high"].item() == pytest.approx(1 / 6)
    assert metrics["train/actor/clipfrac_low"].item() == pytest.approx(1 / 6)
    assert metrics["train/actor/clip_fraction"].item() == pytest.approx(2 / 6)
    assert metrics["train/actor/ratio_max"].item() == pytest.approx(1.5)
    assert metrics["train/actor/ratio_mean"].item() == pytest.approx(sum(c[0] for c in cases) / 6)

    loss.backward()
    # d/d logp of -A r is -A r for unclipped elements and 0 for clipped ones, divided by the count.
    expected_grad = [0.0 if c[2] != -c[1] * c[0] else -c[1] * c[0] / 6 for c in cases]
    assert new.grad.flatten().tolist() == pytest.approx(expected_grad)
    assert expected_grad[1] == 0.0 and expected_grad[2] == 0.0 and expected_grad[3] != 0.0


def test_clip_higher_is_asymmetric():
    new, old = logprobs_for_ratios([1.25, 0.75])
    adv, mask = t([1.0, -1.0]), torch.ones(2, dtype=torch.bool)
    # ratio 1.25 < 1.28: inside with clip-higher; 0.75 < 0.8: clipped below.
    loss, m = policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx((-1.25 + 0.8) / 2)
    assert m["train/actor/clipfrac_high"].item() == 0.0 and m["train/actor/clipfrac_low"].item() == 0.5
    # Symmetric 0.2: 1.25 is clipped to 1.2.
    loss, m = policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert m["train/actor/clipfrac_high"].item() == 0.5


def test_dual_clip_only_bounds_negative_advantages_with_large_ratios():
    # (ratio, A): clip range [0.8, 1.2], c = 3.
    new, old = logprobs_for_ratios([5.0, 5.0, 2.0, 0.5])
    adv = t([-1.0, 1.0, -1.0, -2.0])
    mask = torch.ones(4, dtype=torch.bool)
    common = dict(clip_ratio_low=0.2, clip_ratio_high=0.2)
    no_dual, m0 = policy_loss(new, old, adv, mask, clip_ratio_c=None, **common)
    # Without dual-clip: max(5, 1.2) = 5; max(-5, -1.2) = -1.2; max(2, 1.2) = 2; max(1.0, 1.6) = 1.6.
    assert no_dual.item() == pytest.approx((5.0 - 1.2 + 2.0 + 1.6) / 4)
    assert m0["train/actor/dual_clip_frac"].item() == 0.0

    dual, m = policy_loss(new, old, adv, mask, clip_ratio_c=3.0, **common)
    # Only the first element (A < 0, loss 5 > 3 |A| = 3) is bounded.
    assert dual.item() == pytest.approx((3.0 - 1.2 + 2.0 + 1.6) / 4)
    assert m["train/actor/dual_clip_frac"].item() == pytest.approx(0.25)
    dual.backward()
    assert new.grad[0].item() == 0.0  # the dual-clipped element passes no gradient
    assert new.grad[2].item() == pytest.approx(2.0 / 4)

    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss(new, old, adv, mask, clip_ratio_c=1.0, **common)


def test_aggregation_levels_take_the_ratio_per_token_action_or_chunk():
    # One chunk, K=2 action steps, A=2 dims; log-ratio per token d.
    d = [[0.1, -0.2], [0.3, 0.05]]
    old = torch.full((1, 2, 2), -2.0)
    new = old + t(d).unsqueeze(0)
    adv, mask = t([1.0]), torch.tensor([True])
    wide = dict(clip_ratio_low=0.99, clip_ratio_high=100.0)  # no clipping: loss = -mean(ratio)
    expected = {
        "token": [math.exp(x) for row in d for x in row],
        "action": [math.exp(0.1 - 0.2), math.exp(0.3 + 0.05)],
        "chunk": [math.exp(0.1 - 0.2 + 0.3 + 0.05)],
    }
    for aggregation, ratios in expected.items():
        loss, m = policy_loss(new, old, adv, mask, aggregation=aggregation, **wide)
        assert loss.item() == pytest.approx(-sum(ratios) / len(ratios)), aggregation
        assert m["train/actor/ratio_max"].item() == pytest.approx(max(ratios)), aggregation
        # approx_kl is k3 at the same level: mean(r - 1 - log r).
        assert m["train/actor/approx_kl"].item() == pytest.approx(
            sum(r - 1 - math.log(r) for r in ratios) / len(ratios), abs=1e-6
        ), aggregation


def test_dual_clip_applies_at_every_aggregation_level():
    old = torch.zeros(1, 2, 2)
    new = old + math.log(2.0)  # token ratio 2, action ratio 4, chunk ratio 16
    for aggregation, ratio in (("token", 2.0), ("action", 4.0), ("chunk", 16.0)):
        loss, m = policy_loss(new, old, t([-1.0]), torch.tensor([True]), clip_ratio_low=0.2,
                              clip_ratio_high=0.2, clip_ratio_c=3.0, aggregation=aggregation)
        assert loss.item() == pytest.approx(min(ratio, 3.0)), aggregation
        assert m["train/actor/dual_clip_frac"].item() == (1.0 if ratio > 3.0 else 0.0)


def test_masked_chunks_do_not_enter_the_loss_even_with_garbage():
    # [B=2, N=2, K=1, A=1]: env 1 ended after chunk 0, its chunk 1 holds NaN log-probs.
    old = torch.zeros(2, 2, 1, 1)
    new = t([[[[math.log(1.1)]], [[math.log(0.9)]]], [[[math.log(1.05)]], [[NAN]]]]).requires_grad_()
    adv = t([[1.0, -1.0], [2.0, 100.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, m = policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2)
    assert loss.item() == pytest.approx((-1.1 + 0.9 - 2.0 * 1.05) / 3)
    loss.backward()
    assert torch.isfinite(new.grad).all() and new.grad[1, 1].item() == 0.0
    assert math.isfinite(m["train/actor/ratio_max"].item())


def test_entropy_bonus_and_k3_kl_penalty():
    new, old = logprobs_for_ratios([1.0, 1.0])
    adv, mask = t([0.0, 0.0]), torch.tensor([True, False])  # zero advantage: policy-gradient term 0
    entropy = t([[[2.0]], [[NAN]]])
    ref = new.detach() - 0.5  # log(pi_ref / pi) = -0.5 on every token
    loss, m = policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2,
                          entropy=entropy, entropy_coef=0.1, ref_logprobs=ref, kl_coef=0.5)
    k3 = math.exp(-0.5) - 1 + 0.5
    assert k3 == pytest.approx(0.10653, abs=1e-5)
    assert m["train/actor/entropy"].item() == pytest.approx(2.0)
    assert m["train/actor/kl_ref"].item() == pytest.approx(k3)
    assert loss.item() == pytest.approx(-0.1 * 2.0 + 0.5 * k3)
    loss.backward()
    # d k3 / d log pi = 1 - pi_ref / pi on the valid token; the NaN-padded token gets exactly 0.
    assert flat(new.grad) == pytest.approx([0.5 * (1 - math.exp(-0.5)), 0.0])

    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2, kl_coef=0.5)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2, entropy_coef=0.1)


def test_kl_k3_is_zero_for_equal_policies_and_positive_otherwise():
    logp = t([-0.1, -2.0, -5.0])
    assert kl_k3(logp, logp).tolist() == [0.0, 0.0, 0.0]
    ref = t([-0.3, -1.0, -5.5])
    kl = kl_k3(logp, ref)
    assert (kl > 0).all()
    assert kl.tolist() == pytest.approx([math.exp(x) - 1 - x for x in (-0.2, 1.0, -0.5)], rel=1e-5)


def test_policy_loss_rejects_mismatched_shapes():
    new, old = torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)
    with pytest.raises(ValueError, match=r"\[\.\.\., K, A\]"):
        policy_loss(new, old, torch.zeros(4), torch.ones(4, dtype=torch.bool), clip_ratio_low=0.2, clip_ratio_high=0.2)
    with pytest.raises(ValueError, match="loss_mask"):
        policy_loss(new, old, torch.zeros(3), torch.ones(2, dtype=torch.bool), clip_ratio_low=0.2, clip_ratio_high=0.2)
    with pytest.raises(ValueError, match="logprob_aggregation"):
        policy_loss(new, old, torch.zeros(3), torch.ones(3, dtype=torch.bool), clip_ratio_low=0.2,
                    clip_ratio_high=0.2, aggregation="sequence")


# ----------------------------------------------------------------------------- value loss


def test_huber():
    assert huber(t([0.5, -3.0, 1.0]), 1.0).tolist() == pytest.approx([0.125, 2.5, 0.5])
    assert huber(t([-3.0]), None).tolist() == [4.5]


def test_huber_value_loss_with_ppo2_clipping():
    values = t([1.0, 0.0, 2.0, NAN]).requires_grad_()
    old_values = t([0.5, 0.1, 0.0, NAN])
    returns = t([1.2, 3.0, 1.9, NAN])
    mask = torch.tensor([True, True, True, False])
    loss, m = value_loss(values, old_values, returns, mask, value_clip=0.2, huber_delta=1.0)
    # 0: unclipped 0.5*0.2^2 = 0.02, clipped V=0.7 -> 0.5*0.5^2 = 0.125 (clip active)
    # 1: change -0.1 within the clip: both |err| = 3 -> 1 * (3 - 0.5) = 2.5
    # 2: unclipped 0.5*0.1^2 = 0.005, clipped V=0.2 -> |err| 1.7 -> 1.7 - 0.5 = 1.2 (clip active)
    assert loss.item() == pytest.approx((0.125 + 2.5 + 1.2) / 3)
    assert m["train/critic/value_clipfrac"].item() == pytest.approx(2 / 3)
    residual = [0.2, 3.0, -0.1]
    ev = 1 - statistics.variance(residual) / statistics.variance([1.2, 3.0, 1.9])
    assert m["train/critic/explained_variance"].item() == pytest.approx(ev, abs=1e-6)
    loss.backward()
    # Clipped elements pass no gradient; element 1 has d huber/dV = -delta = -1, over 3.
    assert values.grad.tolist() == pytest.approx([0.0, -1 / 3, 0.0, 0.0])

    unclipped, m = value_loss(values, old_values, returns, mask, value_clip=None, huber_delta=None)
    assert unclipped.item() == pytest.approx((0.02 + 4.5 + 0.005) / 3)
    assert m["train/critic/value_clipfrac"].item() == 0.0


def test_explained_variance_perfect_and_constant_targets():
    mask = torch.ones(3, dtype=torch.bool)
    assert explained_variance(t([1.0, 2.0, 3.0]), t([1.0, 2.0, 3.0]), mask).item() == 1.0
    assert math.isnan(explained_variance(t([1.0, 2.0, 3.0]), t([1.0, 1.0, 1.0]), mask).item())


# ----------------------------------------------------------------------------- guard and minibatches


def test_non_finite_guard_skips_then_raises():
    assert check_finite(torch.tensor(1.0), 2, 3) == (False, 0)  # finite resets the count
    assert check_finite(float("inf"), 0, 3) == (True, 1)

    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.should_skip(torch.tensor(0.5)) is False
    assert guard.should_skip(torch.tensor(NAN)) is True
    assert guard.should_skip(torch.tensor(float("inf"))) is True
    assert guard.should_skip(torch.tensor(0.1)) is False and guard.consecutive == 0
    assert guard.should_skip(torch.tensor(NAN)) is True
    assert guard.should_skip(torch.tensor(NAN)) is True
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        guard.should_skip(torch.tensor(NAN))
    assert guard.total_skipped == 4


def test_non_finite_guard_checks_loss_and_grad_norm_together():
    # A finite loss with a NaN gradient norm every step must still count as consecutive failures.
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.should_skip(torch.tensor(1.0), torch.tensor(NAN)) is True
    with pytest.raises(NonFiniteLossError):
        guard.should_skip(torch.tensor(1.0), torch.tensor(NAN))
    assert check_finite((torch.tensor(1.0), 2.0), 1, 2) == (False, 0)


def test_minibatches_are_a_seeded_permutation():
    batch = {"x": torch.arange(10), "y": torch.arange(10) * 10}
    first = list(iterate_minibatches(batch, 4, seed=0))
    assert [len(mb["x"]) for mb in first] == [4, 4, 2]
    order = torch.cat([mb["x"] for mb in first])
    assert sorted(order.tolist()) == list(range(10))
    assert all(torch.equal(mb["y"], mb["x"] * 10) for mb in first)  # rows stay aligned
    again = torch.cat([mb["x"] for mb in iterate_minibatches(batch, 4, seed=0)])
    assert torch.equal(order, again)
    other = torch.cat([mb["x"] for mb in iterate_minibatches(batch, 4, seed=1)])
    assert not torch.equal(order, other)
    assert [len(mb["x"]) for mb in iterate_minibatches(batch, 4, seed=0, drop_last=True)] == [4, 4]

    with pytest.raises(ValueError, match="leading dim"):
        list(iterate_minibatches({"x": torch.zeros(3), "y": torch.zeros(4)}, 2, seed=0))


def test_flatten_valid_keeps_valid_chunks_in_order():
    mask = torch.tensor([[True, False], [True, True]])
    flat = flatten_valid({"adv": t([[1.0, 2.0], [3.0, 4.0]]), "logp": torch.arange(8.0).reshape(2, 2, 2)}, mask)
    assert flat["adv"].tolist() == [1.0, 3.0, 4.0]
    assert flat["logp"].tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0]]
    with pytest.raises(ValueError, match=r"batch\['bad'\]"):
        flatten_valid({"bad": torch.zeros(3, 2)}, mask)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", ["grpo", "ppo"])
def test_algorithm_yaml_files_validate(name):
    cfg = validate(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"), AlgorithmConfig, "algorithm")
    assert cfg.name == name
    # Every schema key is documented in the YAML, so the YAML is the full reference.
    assert set(OmegaConf.load(CONFIG_DIR / f"{name}.yaml")) == set(AlgorithmConfig.__dataclass_fields__)
    # The kwargs helpers feed the loss functions directly.
    new, old = logprobs_for_ratios([1.0])
    policy_loss(new, old, t([1.0]), torch.tensor([True]), entropy=torch.zeros(1, 1, 1), **cfg.policy_loss_kwargs())
    value_loss(t([0.0]), t([0.0]), t([1.0]), torch.tensor([True]), **cfg.value_loss_kwargs())


def test_grpo_yaml_matches_schema_defaults():
    from_yaml = validate(OmegaConf.load(CONFIG_DIR / "grpo.yaml"), AlgorithmConfig, "algorithm")
    assert from_yaml == AlgorithmConfig()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"clip_ratio_low": 0.0}, "algorithm.clip_ratio_low"),
        ({"clip_ratio_low": 1.0}, "algorithm.clip_ratio_low"),
        ({"clip_ratio_high": -0.1}, "algorithm.clip_ratio_high"),
        ({"clip_ratio_c": 1.0}, "algorithm.clip_ratio_c: dual-clip bound must be > 1"),
        ({"group_size": 0}, "algorithm.group_size"),
        ({"group_size": 1}, "algorithm.group_size: GRPO"),
        ({"name": "ppo", "gamma": 0.0, "zero_variance_groups": "keep"}, "algorithm.gamma: PPO"),
        ({"name": "ppo", "gamma": 1.5, "zero_variance_groups": "keep"}, "algorithm.gamma"),
        ({"name": "ppo"}, "algorithm.zero_variance_groups"),
        ({"logprob_aggregation": "sequence"}, "algorithm.logprob_aggregation"),
        ({"loss_weighting": "token"}, "algorithm.loss_weighting"),
        ({"minibatch_size": 0}, "algorithm.minibatch_size"),
        ({"update_epochs": 0}, "algorithm.update_epochs"),
        ({"kl_coef": -1.0}, "algorithm.kl_coef"),
        ({"target_kl": 0.0}, "algorithm.target_kl"),
        ({"max_consecutive_nonfinite": 0}, "algorithm.max_consecutive_nonfinite"),
        ({"zero_variance_groups": "resample", "max_resample_rounds": 0}, "algorithm.max_resample_rounds"),
        ({"critic_warmup_iterations": 2}, "algorithm.critic_warmup_iterations: GRPO has no critic"),
        ({"huber_delta": 0.0}, "algorithm.huber_delta"),
        ({"clip_ratio": 0.2}, "algorithm.clip_ratio: unknown key"),
    ],
)
def test_invalid_algorithm_config_names_the_key(overrides, message):
    base = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "grpo.yaml"))
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate({**base, **overrides}, AlgorithmConfig, "algorithm")


def test_descending_the_policy_loss_favours_positive_advantage_actions():
    # A one-token categorical policy over 3 bins: chunk 0 took bin 0 (A = +1), chunk 1 took bin 2 (A = -1).
    logits = torch.zeros(3, requires_grad=True)
    tokens = torch.tensor([0, 2])
    adv, mask = t([1.0, -1.0]), torch.ones(2, dtype=torch.bool)
    old = torch.log_softmax(logits.detach(), -1)[tokens].reshape(2, 1, 1)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    for _ in range(5):
        new = torch.log_softmax(logits, -1)[tokens].reshape(2, 1, 1)
        loss, _ = policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probs = torch.softmax(logits.detach(), -1)
    assert probs[0] > 1 / 3 > probs[2]
    # Clipping stops the push once the ratio leaves the trust region: bin 0 stays near 1.28 / 3.
    assert probs[0].item() < 1.28 / 3 + 0.1
