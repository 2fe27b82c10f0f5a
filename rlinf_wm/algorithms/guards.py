"""Skip optimizer steps whose loss is NaN/inf, and stop the run when that keeps happening."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses: the run has diverged."""


Finite = Tensor | float | Sequence[Tensor | float]


def _is_finite(value: Finite) -> bool:
    if isinstance(value, Tensor):
        return bool(torch.isfinite(value).all())
    if isinstance(value, (list, tuple)):
        return all(_is_finite(v) for v in value)
    return math.isfinite(value)


def check_finite(loss: Finite, consecutive_nonfinite: int, max_consecutive: int) -> tuple[bool, int]:
    """Return ``(skip_step, updated_consecutive_count)`` for one optimizer step.

    ``loss`` is the loss, or a tuple of everything that must be finite for the step (e.g.
    ``(loss, grad_norm)``): check each step once, since a finite value resets the count. A finite
    step is not skipped; a non-finite one is, and the ``max_consecutive``-th in a row raises
    :class:`NonFiniteLossError`. With several data-parallel ranks, all-reduce the flag first so
    every rank skips the same step.
    """
    if max_consecutive < 1:
        raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
    if _is_finite(loss):
        return False, 0
    consecutive_nonfinite += 1
    if consecutive_nonfinite >= max_consecutive:
        raise NonFiniteLossError(
            f"loss was NaN/inf in {consecutive_nonfinite} consecutive steps (limit "
            f"algorithm.max_consecutive_nonfinite={max_consecutive}); the run diverged. Lower the "
            "learning rate, check the advantages and the rollout log-probs, or resume from a checkpoint."
        )
    return True, consecutive_nonfinite


class NonFiniteGuard:
    """Stateful :func:`check_finite` for a learner: ``if guard.should_skip(loss): continue``."""

    def __init__(self, max_consecutive: int) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total_skipped = 0

    def should_skip(self, *values: Tensor | float) -> bool:
        """True if any of ``values`` (e.g. ``loss, grad_norm``) is NaN/inf; call once per step."""
        skip, self.consecutive = check_finite(values, self.consecutive, self.max_consecutive)
        self.total_skipped += int(skip)
        return skip
