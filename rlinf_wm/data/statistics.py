"""``dataset_statistics.json``: per-dimension action statistics shared by policy, world model and env."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from rlinf_wm.utils.io import read_json, write_json_atomic

_KEYS = ("q01", "q99", "mean", "std", "min", "max")


@dataclass
class ActionStatistics:
    q01: np.ndarray
    q99: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def from_actions(cls, actions: np.ndarray) -> "ActionStatistics":
        actions = np.asarray(actions, np.float64).reshape(-1, np.shape(actions)[-1])
        if len(actions) == 0:
            raise ValueError("cannot compute action statistics from zero actions")
        return cls(
            q01=np.quantile(actions, 0.01, axis=0),
            q99=np.quantile(actions, 0.99, axis=0),
            mean=actions.mean(0),
            std=actions.std(0),
            min=actions.min(0),
            max=actions.max(0),
        )

    @property
    def action_dim(self) -> int:
        return len(self.mean)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Map q01..q99 to -1..1 (clipped), as OpenVLA does."""
        low, high = self.q01, self.q99
        scaled = 2.0 * (np.asarray(actions) - low) / np.maximum(high - low, 1e-8) - 1.0
        return np.clip(scaled, -1.0, 1.0).astype(np.float32)

    def clip(self, actions: np.ndarray) -> np.ndarray:
        """Raw actions inside the recorded range (float64): what the env executes of an out-of-range action."""
        return np.clip(np.asarray(actions, np.float64), self.min, self.max)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        low, high = self.q01, self.q99
        return ((np.asarray(normalized) + 1.0) * 0.5 * (high - low) + low).astype(np.float32)

    def to_dict(self) -> dict:
        return {"action": {k: np.asarray(getattr(self, k)).tolist() for k in _KEYS}}

    @classmethod
    def from_dict(cls, data: dict, source: str = "statistics") -> "ActionStatistics":
        action = data.get("action", data)
        missing = [k for k in ("q01", "q99", "mean", "std") if k not in action]
        if missing:
            raise KeyError(f"{source}: action statistics lack {missing}")
        values = {k: np.asarray(action.get(k, action.get("q01" if k == "min" else "q99")), np.float64) for k in _KEYS}
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ActionStatistics":
        return cls.from_dict(read_json(path), source=str(path))
