"""Schema of the ``algorithm:`` config section (GRPO or PPO), validated before any worker starts.

Defaults equal ``examples/embodiment/config/algorithm/grpo.yaml``; ``ppo.yaml`` lists its own values.
Every key is read by exactly one place: the loss and advantage functions in ``rlinf_wm.algorithms``
(through :meth:`AlgorithmConfig.policy_loss_kwargs` / :meth:`AlgorithmConfig.value_loss_kwargs`),
the actor worker (epochs, minibatches, learning rate, guards) or the runner (rollout epochs,
dynamic sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlinf_wm.config.validate import require


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class AlgorithmConfig:
    name: Literal["grpo", "ppo"] = "grpo"

    # --- data collection (runner) ---
    group_size: int = 8  # envs reset from the same initial state (same group_id)
    rollout_epochs: int = 1  # rounds of B episodes collected per training iteration
    # zero-variance GRPO groups (all succeed or all fail) carry no learning signal:
    # "keep" leaves them in the loss with advantage 0, "filter" masks them out of the loss,
    # "resample" (DAPO dynamic sampling, Yu et al. 2025) masks them and lets the runner collect
    # up to `max_resample_rounds` extra rounds to replace them.
    zero_variance_groups: Literal["keep", "filter", "resample"] = "filter"
    max_resample_rounds: int = 2
    # GRPO episode return / PPO reward: "success" = 0/1 episode success (PPO: given on the last
    # valid chunk), "sum" = the env's rewards (GRPO: summed over the episode; PPO: per chunk).
    reward_type: Literal["success", "sum"] = "success"
    # GRPO: divide a group's centred returns by their std (Shao et al. 2024) or not (Dr. GRPO, Liu et al.
    # 2025; for graded returns such as the world model's `relative` rewards, whose small spreads are noise).
    scale_by_group_std: bool = True

    # --- policy update (actor worker) ---
    update_epochs: int = 1  # passes over the collected batch
    minibatch_size: int = 64  # valid chunks per optimizer step
    clip_ratio_low: float = 0.2  # ratio clipped below at 1 - clip_ratio_low
    clip_ratio_high: float = 0.28  # ratio clipped above at 1 + clip_ratio_high (DAPO clip-higher)
    clip_ratio_c: float | None = 3.0  # dual-clip bound for negative advantages (Ye et al. 2020); null = off
    logprob_aggregation: Literal["token", "action", "chunk"] = "token"
    entropy_coef: float = 0.0
    kl_coef: float = 0.0  # k3 KL to a frozen reference policy; 0 = no reference policy is loaded
    normalize_advantages: bool = False  # re-normalise over the whole batch (GRPO is already group-normalised)
    # How chunks weigh in the policy loss: "chunk" = each valid chunk equally (long episodes weigh more),
    # "episode" = each episode equally (rlinf_wm.algorithms.episode_equal_weights explains the length bias).
    loss_weighting: Literal["chunk", "episode"] = "chunk"
    max_grad_norm: float | None = 1.0
    # Early stop (a KL trust region, as in Stable-Baselines3 PPO): the update of an iteration stops at the
    # first minibatch whose approx-KL to the rollout policy exceeds 1.5 x target_kl; null = never stop.
    target_kl: float | None = None
    max_consecutive_nonfinite: int = 3  # skip steps with NaN/inf loss; raise when this many occur in a row

    # --- PPO only: GAE and the value head ---
    gamma: float = 0.99  # discount per chunk
    gae_lambda: float = 0.95
    # A time-limit truncation bootstraps from V(final obs) (gymnasium semantics) only when true. Our tasks
    # are "succeed within max_episode_steps" and the policy sees no clock: a timeout is a failure, and
    # bootstrapping values every timed-out failure like the state it stopped in (tests/test_learning.py).
    bootstrap_truncated: bool = False
    value_loss_coef: float = 0.5
    value_clip: float | None = 0.2  # PPO2 value clipping around the rollout values; null = off
    huber_delta: float | None = 1.0  # Huber loss threshold; null = squared error
    value_lr: float = 1e-4
    critic_warmup_iterations: int = 0  # first iterations update only the value head

    def check(self, path: str) -> None:
        at = lambda key: _join(path, key)  # noqa: E731 - short local helper for error paths

        require(self.group_size >= 1, at("group_size"), f"must be >= 1, got {self.group_size}")
        if self.name == "grpo":
            require(
                self.group_size >= 2,
                at("group_size"),
                f"GRPO normalises returns within a group and needs group_size >= 2, got {self.group_size}",
            )
        else:
            require(
                self.zero_variance_groups == "keep",
                at("zero_variance_groups"),
                f"applies to GRPO groups only; PPO needs 'keep', got {self.zero_variance_groups!r}",
            )
            require(self.scale_by_group_std, at("scale_by_group_std"), "applies to GRPO groups only; PPO needs true")
            require(0.0 < self.gamma <= 1.0, at("gamma"), f"PPO needs a discount in (0, 1], got {self.gamma}")
            require(
                0.0 <= self.gae_lambda <= 1.0, at("gae_lambda"), f"PPO needs lambda in [0, 1], got {self.gae_lambda}"
            )
        if self.zero_variance_groups == "resample":
            require(
                self.max_resample_rounds >= 1,
                at("max_resample_rounds"),
                f"must be >= 1 with zero_variance_groups=resample, got {self.max_resample_rounds}",
            )
        require(self.max_resample_rounds >= 0, at("max_resample_rounds"), "must be >= 0")

        for key in ("rollout_epochs", "update_epochs", "minibatch_size", "max_consecutive_nonfinite"):
            value = getattr(self, key)
            require(value >= 1, at(key), f"must be >= 1, got {value}")

        # 1 - clip_ratio_low is the lower ratio bound and must stay positive.
        require(
            0.0 < self.clip_ratio_low < 1.0, at("clip_ratio_low"), f"must be in (0, 1), got {self.clip_ratio_low}"
        )
        require(self.clip_ratio_high > 0.0, at("clip_ratio_high"), f"must be > 0, got {self.clip_ratio_high}")
        if self.clip_ratio_c is not None:
            require(
                self.clip_ratio_c > 1.0,
                at("clip_ratio_c"),
                f"dual-clip bound must be > 1 (or null to disable), got {self.clip_ratio_c}",
            )
        require(self.entropy_coef >= 0.0, at("entropy_coef"), f"must be >= 0, got {self.entropy_coef}")
        require(self.kl_coef >= 0.0, at("kl_coef"), f"must be >= 0, got {self.kl_coef}")
        if self.max_grad_norm is not None:
            require(self.max_grad_norm > 0.0, at("max_grad_norm"), f"must be > 0 or null, got {self.max_grad_norm}")

        if self.target_kl is not None:
            require(self.target_kl > 0.0, at("target_kl"), f"must be > 0 or null, got {self.target_kl}")
        require(self.value_loss_coef >= 0.0, at("value_loss_coef"), f"must be >= 0, got {self.value_loss_coef}")
        if self.value_clip is not None:
            require(self.value_clip > 0.0, at("value_clip"), f"must be > 0 or null, got {self.value_clip}")
        if self.huber_delta is not None:
            require(self.huber_delta > 0.0, at("huber_delta"), f"must be > 0 or null, got {self.huber_delta}")
        require(self.value_lr > 0.0, at("value_lr"), f"must be > 0, got {self.value_lr}")
        require(
            self.critic_warmup_iterations >= 0,
            at("critic_warmup_iterations"),
            f"must be >= 0, got {self.critic_warmup_iterations}",
        )
        if self.name == "grpo":
            require(
                self.critic_warmup_iterations == 0,
                at("critic_warmup_iterations"),
                "GRPO has no critic; set it to 0",
            )

    @property
    def uses_critic(self) -> bool:
        return self.name == "ppo"

    @property
    def uses_reference_policy(self) -> bool:
        return self.kl_coef > 0.0

    def policy_loss_kwargs(self) -> dict:
        """Keyword arguments of :func:`rlinf_wm.algorithms.policy_loss` taken from this config."""
        return {
            "clip_ratio_low": self.clip_ratio_low,
            "clip_ratio_high": self.clip_ratio_high,
            "clip_ratio_c": self.clip_ratio_c,
            "aggregation": self.logprob_aggregation,
            "entropy_coef": self.entropy_coef,
            "kl_coef": self.kl_coef,
        }

    def value_loss_kwargs(self) -> dict:
        """Keyword arguments of :func:`rlinf_wm.algorithms.value_loss` taken from this config."""
        return {"value_clip": self.value_clip, "huber_delta": self.huber_delta}
