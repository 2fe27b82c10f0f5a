"""RL algorithms as pure tensor functions: GRPO/PPO advantages, clipped policy loss, value loss.

No Ray, no Hydra: everything here runs in one process on plain tensors.
"""

from rlinf_wm.algorithms.advantages import (
    AdvantageBatch,
    GroupAdvantages,
    chunk_rewards,
    compute_advantages,
    episode_equal_weights,
    episode_returns,
    gae_advantages,
    group_normalized_advantages,
    normalize_advantages,
    success_chunk_rewards,
)
from rlinf_wm.algorithms.batching import flatten_valid, iterate_minibatches
from rlinf_wm.algorithms.guards import NonFiniteGuard, NonFiniteLossError, check_finite
from rlinf_wm.algorithms.losses import (
    aggregate_logprobs,
    explained_variance,
    huber,
    kl_k3,
    policy_loss,
    value_loss,
)
from rlinf_wm.algorithms.masking import chunk_done, fill_padding, masked_mean, masked_std, valid_chunk_mask

__all__ = [
    "AdvantageBatch",
    "GroupAdvantages",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "aggregate_logprobs",
    "check_finite",
    "chunk_done",
    "chunk_rewards",
    "compute_advantages",
    "episode_equal_weights",
    "episode_returns",
    "fill_padding",
    "explained_variance",
    "flatten_valid",
    "gae_advantages",
    "group_normalized_advantages",
    "huber",
    "iterate_minibatches",
    "kl_k3",
    "masked_mean",
    "masked_std",
    "normalize_advantages",
    "policy_loss",
    "success_chunk_rewards",
    "valid_chunk_mask",
    "value_loss",
]
