"""What the DiT's action input is: raw env actions -> normalised, scaled actions, optionally with their running sum.

Every producer of DiT inputs (training windows, the world-model env, replays, the open-loop evaluation) goes
through :class:`DiTActionInputs`, so they cannot disagree.

Why a running sum: delta-action arms go where the sum of the actions since the reset sends them (exactly
Meta-World's mocap target; roughly LIBERO's OSC controller, whose deltas start from the current pose). From the
last frames and one chunk of deltas, an autoregressive model must integrate the deltas itself, and its per-chunk position error accumulates like dead reckoning: over ~35 chunks
of jittery actions the imagined arm drifts off the real one and late contacts are lost (docs/results.md,
2026-12-04). With ``integral_scale > 0`` the DiT also gets ``integral_scale * sum(actions[:t+1])`` per action,
the arm's absolute target, against which a drifted frame is visibly wrong and can be corrected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlinf_wm.data.statistics import ActionStatistics


@dataclass(frozen=True)
class DiTActionInputs:
    statistics: ActionStatistics
    action_scaler: float
    integral_scale: float = 0.0  # 0: no running-sum channels

    def __post_init__(self) -> None:
        if self.action_scaler <= 0:
            raise ValueError(f"action_scaler must be > 0, got {self.action_scaler}")
        if self.integral_scale < 0:
            raise ValueError(f"action_integral_scale must be >= 0, got {self.integral_scale}")

    @property
    def dim(self) -> int:
        """Channels per action the DiT sees."""
        return self.statistics.action_dim * (2 if self.integral_scale > 0 else 1)

    def __call__(self, actions: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """``[..., K, A]`` raw actions -> ``[..., K, dim]`` float32.

        ``offset [..., A]``: the sum of the clipped raw actions before these (since the reset); None = 0.
        """
        actions = np.asarray(actions)
        if actions.ndim < 2 or actions.shape[-1] != self.statistics.action_dim:
            raise ValueError(f"actions must be [..., K, A={self.statistics.action_dim}], got {actions.shape}")
        scaled = self.statistics.normalize(actions) * np.float32(self.action_scaler)
        if self.integral_scale <= 0:
            return scaled.astype(np.float32)
        total = np.cumsum(self.statistics.clip(actions), axis=-2)
        if offset is not None:
            total = total + np.asarray(offset, np.float64)[..., None, :]
        return np.concatenate([scaled, (total * self.integral_scale).astype(np.float32)], axis=-1)

    def advance(self, offset: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The running sum after ``actions [..., K, A]``, from ``offset [..., A]``."""
        return np.asarray(offset, np.float64) + self.statistics.clip(actions).sum(axis=-2)
