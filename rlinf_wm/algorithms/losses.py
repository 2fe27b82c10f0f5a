"""Policy and value losses, each one function used for every policy type.

Layout: log-probabilities per action token ``[..., K, A]`` (each of the ``A`` action dims of each
of the ``K`` steps of a chunk is a categorical over bins); advantages, values, returns and the loss
mask per chunk ``[...]`` (``[B, N]`` or a flat minibatch ``[M]``). Metrics are detached scalar
tensors named for logging (``train/actor/*``, ``train/critic/*``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rlinf_wm.algorithms.masking import expand_mask, fill_padding, masked_max, masked_mean, masked_std

Aggregation = Literal["token", "action", "chunk"]

# exp() of a chunk-level log-ratio (a sum over K*A tokens) can overflow. A ratio beyond e^20 is far
# outside any trust region; limiting it keeps the loss finite (such a sample then passes no gradient).
LOG_RATIO_LIMIT = 20.0


def aggregate_logprobs(logprobs: Tensor, aggregation: Aggregation) -> Tensor:
    """Log-probabilities ``[..., K, A]`` at the level at which the ratio is taken.

    ``token``: ``[..., K, A]`` (every action dim is its own ratio); ``action``: ``[..., K]`` (sum
    over A: one ratio per action step); ``chunk``: ``[...]`` (sum over K and A: one ratio per chunk).
    """
    if aggregation == "token":
        return logprobs
    if aggregation == "action":
        return logprobs.sum(dim=-1)
    if aggregation == "chunk":
        return logprobs.sum(dim=(-2, -1))
    raise ValueError(f"logprob_aggregation must be 'token', 'action' or 'chunk', got {aggregation!r}")


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) on samples of pi, elementwise and >= 0.

    ``k3 = r - 1 - log r`` with ``r = pi_ref(a) / pi(a)`` (http://joschu.net/blog/kl-approx.html).
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return torch.exp(log_ratio) - 1.0 - log_ratio


def _trailing(x: Tensor, like: Tensor) -> Tensor:
    """View ``x`` with trailing singleton dims so it broadcasts against ``like``."""
    return x.reshape(*x.shape, *([1] * (like.dim() - x.dim())))


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None = None,
    aggregation: Aggregation = "token",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped policy-gradient loss (PPO, Schulman et al. 2017) with clip-higher and dual-clip.

    ``logprobs`` (with grad), ``old_logprobs`` and ``ref_logprobs``: ``[..., K, A]``;
    ``advantages`` and ``loss_mask``: ``[...]``; ``entropy``: per token ``[..., K, A]`` (any shape
    whose leading dims are those of ``loss_mask``). Per element at the aggregation level::

        r      = exp(sum log pi - sum log pi_old)
        L_clip = max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high))       (DAPO clip-higher)
        L      = min(L_clip, clip_ratio_c |A|)  if A < 0 and dual-clip is on, else L_clip   (Ye et al. 2020)

    loss = mean_valid(L) - entropy_coef * mean_valid(H) + kl_coef * mean_valid(k3(pi, pi_ref)), where
    the entropy and KL terms are means over valid tokens. Returns ``(loss, metrics)``.
    """
    if logprobs.shape != old_logprobs.shape:
        raise ValueError(f"logprobs {list(logprobs.shape)} and old_logprobs {list(old_logprobs.shape)} differ")
    if logprobs.dim() != advantages.dim() + 2 or logprobs.shape[: advantages.dim()] != advantages.shape:
        raise ValueError(
            f"logprobs must be [..., K, A] over advantages' dims {list(advantages.shape)}, got {list(logprobs.shape)}"
        )
    if loss_mask.shape != advantages.shape:
        raise ValueError(f"loss_mask {list(loss_mask.shape)} must match advantages {list(advantages.shape)}")

    # Padding may hold garbage (even NaN); zero it before any arithmetic so no NaN reaches a gradient.
    logprobs = fill_padding(logprobs, loss_mask)
    old_logprobs = fill_padding(old_logprobs.detach(), loss_mask)
    advantages = fill_padding(advantages.detach(), loss_mask)

    log_ratio = aggregate_logprobs(logprobs - old_logprobs, aggregation).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    mask = expand_mask(loss_mask, ratio)
    adv = _trailing(advantages.to(ratio.dtype), ratio).expand_as(ratio)

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    per_element = torch.maximum(unclipped, clipped)
    dual_clip_active = torch.zeros_like(mask)
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (or None), got {clip_ratio_c}")
        dual_bound = clip_ratio_c * adv.abs()
        dual_clip_active = (adv < 0) & (per_element > dual_bound)
        per_element = torch.where(adv < 0, torch.minimum(per_element, dual_bound), per_element)
    pg_loss = masked_mean(per_element, mask)
    loss = pg_loss

    with torch.no_grad():
        metrics = {
            "train/actor/policy_loss": pg_loss.detach(),
            # k3 estimate of KL(pi_old || pi) on samples of pi_old, at the aggregation level.
            "train/actor/approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
            "train/actor/clipfrac_low": masked_mean(((adv < 0) & (ratio < 1.0 - clip_ratio_low)).float(), mask),
            "train/actor/clipfrac_high": masked_mean(((adv > 0) & (ratio > 1.0 + clip_ratio_high)).float(), mask),
            "train/actor/dual_clip_frac": masked_mean(dual_clip_active.float(), mask),
            "train/actor/ratio_mean": masked_mean(ratio, mask),
            "train/actor/ratio_max": masked_max(ratio, mask),
        }
        metrics["train/actor/clip_fraction"] = (
            metrics["train/actor/clipfrac_low"] + metrics["train/actor/clipfrac_high"]
        )

    if entropy_coef > 0.0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs the policy's per-token `entropy`")
    if entropy is not None:
        entropy_mean = masked_mean(fill_padding(entropy, loss_mask), loss_mask)
        loss = loss - entropy_coef * entropy_mean
        metrics["train/actor/entropy"] = entropy_mean.detach()

    if kl_coef > 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef > 0 needs `ref_logprobs` from the frozen reference policy")
    if ref_logprobs is not None:
        if ref_logprobs.shape != logprobs.shape:
            raise ValueError(f"ref_logprobs {list(ref_logprobs.shape)} must match logprobs {list(logprobs.shape)}")
        kl = masked_mean(kl_k3(logprobs, fill_padding(ref_logprobs.detach(), loss_mask)), loss_mask)
        loss = loss + kl_coef * kl
        metrics["train/actor/kl_ref"] = kl.detach()

    metrics["train/actor/total_loss"] = loss.detach()
    return loss, metrics


def huber(error: Tensor, delta: float | None) -> Tensor:
    """``0.5 e^2`` for ``|e| <= delta``, ``delta (|e| - 0.5 delta)`` beyond; ``0.5 e^2`` if delta is None."""
    if delta is None:
        return 0.5 * error**2
    absolute = error.abs()
    return torch.where(absolute <= delta, 0.5 * error**2, delta * (absolute - 0.5 * delta))


def explained_variance(predictions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var(targets - predictions) / Var(targets)`` over valid entries; NaN if targets are constant."""
    target_var = masked_std(targets, mask) ** 2
    residual_var = masked_std(targets - predictions, mask) ** 2
    # torch.where instead of a Python branch: no device sync.
    return torch.where(target_var > 0, 1.0 - residual_var / target_var, torch.full_like(target_var, float("nan")))


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    loss_mask: Tensor,
    *,
    value_clip: float | None = None,
    huber_delta: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Value loss with PPO2 clipping, all ``[...]`` per chunk; returns ``(loss, metrics)``.

        V_clip = V_old + clip(V - V_old, -value_clip, value_clip)
        L      = mean_valid(max(huber(V - R), huber(V_clip - R)))
    """
    for name, tensor in (("old_values", old_values), ("returns", returns), ("loss_mask", loss_mask)):
        if tensor.shape != values.shape:
            raise ValueError(f"{name} {list(tensor.shape)} must match values {list(values.shape)}")
    values = fill_padding(values, loss_mask)  # no NaN from padding may reach a gradient
    old_values, returns = fill_padding(old_values.detach(), loss_mask), fill_padding(returns.detach(), loss_mask)
    unclipped = huber(values - returns, huber_delta)
    if value_clip is None:
        per_element = unclipped
        clip_active = torch.zeros_like(loss_mask, dtype=torch.bool)
    else:
        clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
        clipped = huber(clipped_values - returns, huber_delta)
        per_element = torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = masked_mean(per_element, loss_mask)
    with torch.no_grad():
        metrics = {
            "train/critic/value_loss": loss.detach(),
            "train/critic/value_clipfrac": masked_mean(clip_active.float(), loss_mask),
            "train/critic/explained_variance": explained_variance(values.detach(), returns, loss_mask),
            "train/critic/values_mean": masked_mean(values.detach(), loss_mask),
        }
    return loss, metrics
