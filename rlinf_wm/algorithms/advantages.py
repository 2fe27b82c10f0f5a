"""Advantages for GRPO (group-normalised episode returns) and PPO (GAE), as pure tensor functions.

Layout: ``B`` trajectories (one per env) of ``N`` chunks; each chunk is ``K`` env steps. A chunk is
one decision of the policy, so GAE runs over chunks (``gamma`` discounts per chunk) and an advantage
is one number per chunk, shared by its ``K x A`` action tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rlinf_wm.algorithms.masking import chunk_done, masked_max, masked_mean, masked_std, valid_chunk_mask

if TYPE_CHECKING:
    from rlinf_wm.config.algorithm_schema import AlgorithmConfig

# A group whose returns spread less than this is "zero variance": all succeeded or all failed.
ZERO_VARIANCE_ATOL = 1e-6


def _require_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")


def chunk_rewards(rewards: Tensor) -> Tensor:
    """float ``[B, N]``: reward of each chunk, summing per-step ``[B, N, K]`` rewards over its K steps."""
    if rewards.dim() == 3:
        return rewards.sum(dim=-1)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, N] or [B, N, K], got shape {list(rewards.shape)}")
    return rewards


def episode_returns(rewards: Tensor, loss_mask: Tensor) -> Tensor:
    """float ``[B]``: undiscounted sum of rewards over the valid chunks of each trajectory."""
    per_chunk = chunk_rewards(rewards).float()
    _require_shape("loss_mask", loss_mask, per_chunk.shape)
    return torch.where(loss_mask.bool(), per_chunk, torch.zeros_like(per_chunk)).sum(dim=1)


def success_chunk_rewards(success: Tensor, loss_mask: Tensor) -> Tensor:
    """float ``[B, N]``: a sparse reward of 1 on the last valid chunk of each successful episode."""
    batch, chunks = loss_mask.shape
    _require_shape("success", success, (batch,))
    last_valid = (loss_mask.long().sum(dim=1) - 1).clamp(min=0)
    at_last = torch.nn.functional.one_hot(last_valid, chunks).bool()
    return (at_last & success.bool()[:, None]).float()


@dataclass
class GroupAdvantages:
    """GRPO advantages per trajectory and what the runner needs for dynamic sampling."""

    advantages: Tensor  # float [B]
    informative: Tensor  # bool [B]: the env's group has non-zero return variance
    group_ids: Tensor  # [G] the distinct group ids
    zero_variance_group_ids: Tensor  # [G0] groups to filter or resample
    group_std: Tensor  # float [G]: spread of each group's returns (how much signal the group carries)

    @property
    def num_groups(self) -> int:
        return int(self.group_ids.numel())

    @property
    def num_zero_variance_groups(self) -> int:
        return int(self.zero_variance_group_ids.numel())


def group_normalized_advantages(
    returns: Tensor, group_id: Tensor, eps: float = 1e-6, scale_by_std: bool = True
) -> GroupAdvantages:
    """GRPO (Shao et al. 2024, eq. 3 outcome supervision): ``A_i = (R_i - mean_g R) / (std_g R + eps)``.

    ``std`` is the unbiased sample standard deviation within the group. Groups whose returns are
    all equal (or with a single member) get advantage 0 and ``informative = False``.
    ``scale_by_std=False`` leaves ``A_i = R_i - mean_g R`` (Dr. GRPO, Liu et al. 2025): with graded returns,
    dividing by the std would blow a group's near-equal returns (noise) up to unit-size advantages.
    """
    if returns.dim() != 1:
        raise ValueError(f"returns must be [B], got shape {list(returns.shape)}")
    _require_shape("group_id", group_id, returns.shape)
    returns = returns.float()
    group_ids, member_of = torch.unique(group_id, return_inverse=True)
    num_groups = group_ids.numel()

    def group_sum(x: Tensor) -> Tensor:
        return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, member_of, x)

    count = group_sum(torch.ones_like(returns))
    mean = group_sum(returns) / count
    centered = returns - mean[member_of]
    std = (group_sum(centered**2) / (count - 1).clamp(min=1)).sqrt()

    zero_variance = (count < 2) | (std <= ZERO_VARIANCE_ATOL)
    informative = ~zero_variance[member_of]
    scaled = centered / (std[member_of] + eps) if scale_by_std else centered
    advantages = torch.where(informative, scaled, torch.zeros_like(centered))
    return GroupAdvantages(advantages, informative, group_ids, group_ids[zero_variance], std)


def gae_advantages(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
    bootstrap_truncated: bool = True,
) -> tuple[Tensor, Tensor]:
    """GAE (Schulman et al. 2016) over chunks; returns ``(advantages, returns)``, each ``[B, N]``.

    ``values[:, n] = V(obs before chunk n)``; ``next_values[:, n] = V(obs after chunk n)`` (for a
    trajectory without auto-reset that is ``values[:, n+1]``, and the last column is the value of
    the final observation). Flags are per chunk ``[B, N]`` or per step ``[B, N, K]``.

        delta_n = r_n + gamma * (1 - terminated_n) * V(s_{n+1}) - V(s_n)
        A_n     = delta_n + gamma * lambda * (1 - done_n) * A_{n+1},     done = terminated | truncated

    A truncated chunk bootstraps from the next value but does not pass advantages across the
    episode boundary; a terminated chunk does neither. ``bootstrap_truncated=False`` treats
    truncation as termination: right when the step limit is part of the task (success within
    ``max_episode_steps``) and the observation carries no clock, where bootstrapping would value a
    timed-out failure like the state it stopped in. The end of the buffer without a done flag is
    a cut: it bootstraps from ``next_values`` with ``A_N = 0``. Padding chunks (after the episode
    ended) get advantage and return 0, whatever the inputs hold there.
    """
    rewards = chunk_rewards(rewards).float()
    batch, chunks = rewards.shape
    for name, tensor in (("values", values), ("next_values", next_values)):
        _require_shape(name, tensor, (batch, chunks))
    terminated, truncated = chunk_done(terminated), chunk_done(truncated)
    _require_shape("terminated", terminated, (batch, chunks))
    _require_shape("truncated", truncated, (batch, chunks))
    continues = ~(terminated | truncated)

    zero = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    advantages = torch.zeros_like(rewards)
    next_advantage = zero
    ends_value = terminated if bootstrap_truncated else terminated | truncated
    for n in reversed(range(chunks)):
        bootstrap = torch.where(ends_value[:, n], zero, next_values[:, n].float())
        delta = rewards[:, n] + gamma * bootstrap - values[:, n].float()
        carried = torch.where(continues[:, n], next_advantage, zero)
        advantages[:, n] = delta + gamma * gae_lambda * carried
        next_advantage = advantages[:, n]

    valid = valid_chunk_mask(terminated, truncated)
    returns = torch.where(valid, advantages + values.float(), torch.zeros_like(advantages))
    advantages = torch.where(valid, advantages, torch.zeros_like(advantages))
    return advantages, returns


def normalize_advantages(advantages: Tensor, loss_mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(A - mean) / (std + eps)`` over the valid entries (unbiased std); padding becomes 0."""
    mean, std = masked_mean(advantages, loss_mask), masked_std(advantages, loss_mask)
    normalized = (advantages - mean) / (std + eps)
    return torch.where(loss_mask.bool(), normalized, torch.zeros_like(normalized))


def episode_equal_weights(loss_mask: Tensor) -> Tensor:
    """float ``[B, N]``: ``1 / L_b`` on the ``L_b`` loss chunks of trajectory ``b``, scaled to mean 1 over all loss chunks.

    A mean over chunks weighs an episode by its length. Successes end early and failures run to the time limit, so
    group-normalised advantages, which sum to zero over a group's episodes, sum to a negative number over its
    chunks: the update then pushes down the behaviour that successes and failures share. With these weights every
    episode weighs the same (verl's "seq-mean-token-mean"), whatever its length.
    """
    counts = loss_mask.sum(dim=1, keepdim=True).float()  # [B, 1]
    episodes = (counts > 0).sum()
    total = loss_mask.sum()
    return torch.where(loss_mask, total / (episodes * counts.clamp(min=1.0)), 0.0)


@dataclass
class AdvantageBatch:
    """Everything the policy update needs from a batch of trajectories, per chunk ``[B, N]``."""

    advantages: Tensor  # float [B, N], 0 on padding (times the loss weight with loss_weighting=episode)
    loss_mask: Tensor  # bool [B, N]: chunk enters the loss (valid, and informative for GRPO filtering)
    returns: Tensor | None  # float [B, N] value targets (PPO), None for GRPO
    informative: Tensor  # bool [B]: env's GRPO group has non-zero variance (all True for PPO)
    zero_variance_group_ids: Tensor  # groups the runner may resample (empty for PPO)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # `rollout/*` statistics


def compute_advantages(
    config: "AlgorithmConfig",
    *,
    rewards: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    success: Tensor | None = None,
    group_id: Tensor | None = None,
    values: Tensor | None = None,
    next_values: Tensor | None = None,
) -> AdvantageBatch:
    """Advantages for ``config.name`` from a rollout batch.

    ``rewards`` float ``[B, N, K]`` or ``[B, N]``; ``terminated`` / ``truncated`` bool, same layout;
    ``success`` bool ``[B]`` (needed when ``reward_type == "success"``); ``group_id`` int ``[B]``
    (GRPO); ``values`` / ``next_values`` float ``[B, N]`` from the rollout policy (PPO, see
    :func:`gae_advantages`).
    """
    valid = valid_chunk_mask(terminated, truncated)
    batch, chunks = valid.shape
    if config.reward_type == "success":
        if success is None:
            raise ValueError("reward_type='success' needs `success` (bool [B]) from the env")
        _require_shape("success", success, (batch,))

    if config.name == "grpo":
        if group_id is None:
            raise ValueError("GRPO needs `group_id` (int [B]): envs reset from the same initial state share one")
        if config.reward_type == "success":
            returns = success.float()
        else:
            returns = episode_returns(rewards, valid)
        groups = group_normalized_advantages(returns, group_id, scale_by_std=config.scale_by_group_std)
        advantages = torch.where(valid, groups.advantages[:, None].expand(batch, chunks), 0.0)
        loss_mask = valid & groups.informative[:, None] if config.zero_variance_groups != "keep" else valid
        value_targets = None
        informative, zero_variance_group_ids = groups.informative, groups.zero_variance_group_ids
        metrics = {
            "rollout/episode_return": returns.mean(),
            "rollout/num_groups": torch.tensor(float(groups.num_groups)),
            "rollout/zero_variance_groups": torch.tensor(float(groups.num_zero_variance_groups)),
            "rollout/zero_variance_group_frac": torch.tensor(groups.num_zero_variance_groups / groups.num_groups),
            "rollout/group_return_std": groups.group_std.mean(),
        }
    elif config.name == "ppo":
        if values is None or next_values is None:
            raise ValueError("PPO needs `values` and `next_values` (float [B, N]) from the value head")
        if config.reward_type == "success":
            per_chunk = success_chunk_rewards(success, valid)
        else:
            per_chunk = chunk_rewards(rewards)
        advantages, value_targets = gae_advantages(
            per_chunk, values, next_values, terminated, truncated, config.gamma, config.gae_lambda,
            bootstrap_truncated=config.bootstrap_truncated,
        )
        loss_mask = valid
        informative = torch.ones(batch, dtype=torch.bool, device=valid.device)
        zero_variance_group_ids = torch.zeros(0, dtype=torch.long, device=valid.device)
        metrics = {
            "rollout/episode_return": episode_returns(per_chunk, valid).mean(),
            "rollout/returns_mean": masked_mean(value_targets, valid),
            "rollout/values_mean": masked_mean(values.float(), valid),
        }
    else:
        raise ValueError(f"algorithm.name: unknown algorithm {config.name!r}; expected 'grpo' or 'ppo'")

    if config.normalize_advantages:
        # over the chunks with a learning signal: zero-variance groups kept in the loss (zero_variance_groups: keep)
        # would shift the mean, and their zeros would come out as -mean / std, the same push for every such episode
        advantages = normalize_advantages(advantages, loss_mask & informative[:, None])
    if config.loss_weighting == "episode":
        # Scaling an advantage by w > 0 scales its clipped policy-gradient term by w: a per-chunk loss weight.
        advantages = advantages * episode_equal_weights(loss_mask)
    metrics.update(
        {
            "rollout/advantages_mean": masked_mean(advantages, loss_mask),
            "rollout/advantages_max": masked_max(advantages, loss_mask),
            "rollout/advantages_min": -masked_max(-advantages, loss_mask),
            "rollout/valid_chunks": loss_mask.sum().float(),
        }
    )
    return AdvantageBatch(advantages, loss_mask, value_targets, informative, zero_variance_group_ids, metrics)
