"""Flatten a trajectory batch to its valid chunks and iterate over it in seeded minibatches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor


def flatten_valid(batch: Mapping[str, Tensor], loss_mask: Tensor) -> dict[str, Tensor]:
    """Keep the chunks where ``loss_mask`` ``[B, N]`` is True: each ``[B, N, ...]`` tensor -> ``[M, ...]``."""
    mask = loss_mask.bool()
    flat = {}
    for key, tensor in batch.items():
        if tuple(tensor.shape[: mask.dim()]) != tuple(mask.shape):
            raise ValueError(
                f"batch[{key!r}] has shape {list(tensor.shape)}; its leading dims must be {list(mask.shape)}"
            )
        flat[key] = tensor[mask]
    return flat


def iterate_minibatches(
    batch: Mapping[str, Tensor], minibatch_size: int, *, seed: int, drop_last: bool = False
) -> Iterator[dict[str, Tensor]]:
    """Yield minibatches of a flat batch (every tensor ``[M, ...]``) in a random order fixed by ``seed``.

    Every sample appears exactly once per pass; the last minibatch is smaller unless ``drop_last``.
    Use a different seed per epoch (e.g. ``seed + epoch``) for a new order.
    """
    if minibatch_size < 1:
        raise ValueError(f"minibatch_size must be >= 1, got {minibatch_size}")
    sizes = {key: tensor.shape[0] for key, tensor in batch.items()}
    if not sizes:
        raise ValueError("cannot iterate over an empty batch (no tensors)")
    num_samples = next(iter(sizes.values()))
    if any(size != num_samples for size in sizes.values()):
        raise ValueError(f"all batch tensors must share the leading dim; sizes are {sizes}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_samples, generator=generator)
    for start in range(0, num_samples, minibatch_size):
        index = order[start : start + minibatch_size]
        if drop_last and index.numel() < minibatch_size:
            return
        yield {key: tensor[index.to(tensor.device)] for key, tensor in batch.items()}
