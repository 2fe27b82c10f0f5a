"""Masks over chunks and masked reductions.

A batch holds ``B`` trajectories of ``N`` chunks. An episode may end inside the rollout; the chunks
after the chunk in which it ended are padding and carry a ``False`` in the loss mask ``[B, N]``.
Padding may hold any value (even NaN), so reductions select with ``torch.where`` rather than
multiplying by the mask.
"""

from __future__ import annotations

import torch
from torch import Tensor


def chunk_done(flags: Tensor) -> Tensor:
    """bool ``[B, N]``: the episode ended in chunk n, from per-chunk ``[B, N]`` or per-step ``[B, N, K]`` flags."""
    flags = flags.bool()
    if flags.dim() == 3:
        return flags.any(dim=-1)
    if flags.dim() != 2:
        raise ValueError(f"done flags must be [B, N] or [B, N, K], got shape {tuple(flags.shape)}")
    return flags


def valid_chunk_mask(terminated: Tensor, truncated: Tensor) -> Tensor:
    """bool ``[B, N]``: chunk n is valid iff the episode had not ended in any chunk before n.

    The chunk in which the episode ends is valid (its action was executed); later chunks are not.
    """
    done = (chunk_done(terminated) | chunk_done(truncated)).long()
    ended_before = torch.cumsum(done, dim=1) - done  # exclusive cumulative sum over chunks
    return ended_before == 0


def expand_mask(mask: Tensor, like: Tensor) -> Tensor:
    """Broadcast a mask over the leading dims of ``like`` (e.g. ``[B, N]`` -> ``[B, N, K, A]``)."""
    if like.shape[: mask.dim()] != mask.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the leading dims of shape {tuple(like.shape)}"
        )
    return mask.bool().reshape(*mask.shape, *([1] * (like.dim() - mask.dim()))).expand_as(like)


def fill_padding(values: Tensor, mask: Tensor, fill: float = 0.0) -> Tensor:
    """``values`` with masked-out entries replaced by ``fill``.

    Apply to a loss's inputs, not only its output: a NaN in padding gives NaN gradients through any
    nonlinear op even when ``torch.where`` drops its value afterwards.
    """
    return torch.where(expand_mask(mask, values), values, torch.full_like(values, fill))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over entries where ``mask`` (over its leading dims) is True; 0 if none."""
    mask = expand_mask(mask, values)
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


def masked_std(values: Tensor, mask: Tensor) -> Tensor:
    """Unbiased (Bessel-corrected) standard deviation over masked entries; 0 with fewer than two."""
    mask = expand_mask(mask, values)
    count = mask.sum()
    mean = masked_mean(values, mask)
    squares = torch.where(mask, (values - mean) ** 2, torch.zeros_like(values)).sum()
    return (squares / (count - 1).clamp(min=1)).sqrt()


def masked_max(values: Tensor, mask: Tensor) -> Tensor:
    """Maximum over masked entries; ``-inf`` if none."""
    mask = expand_mask(mask, values)
    return torch.where(mask, values, torch.full_like(values, float("-inf"))).max()
