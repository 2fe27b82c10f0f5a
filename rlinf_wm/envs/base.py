"""The one environment interface shared by real simulators and the world model (DESIGN.md section 2)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Obs:
    """A batch of observations from ``B`` environments."""

    images: np.ndarray  # uint8 [B, H, W, 3]
    instructions: list[str]
    states: np.ndarray | None = None  # float32 [B, S]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"Obs.images must be uint8 [B, H, W, 3], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.instructions) != self.images.shape[0]:
            raise ValueError(
                f"Obs.instructions has {len(self.instructions)} entries for {self.images.shape[0]} images"
            )

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def select(self, index: np.ndarray | list[int]) -> "Obs":
        index = np.asarray(index)
        return Obs(
            images=self.images[index],
            instructions=[self.instructions[i] for i in index.tolist()],
            states=None if self.states is None else self.states[index],
        )

    @staticmethod
    def concatenate(parts: list["Obs"]) -> "Obs":
        states = None
        if all(p.states is not None for p in parts):
            states = np.concatenate([p.states for p in parts])
        return Obs(
            images=np.concatenate([p.images for p in parts]),
            instructions=[s for p in parts for s in p.instructions],
            states=states,
        )


@dataclass
class ChunkStep:
    """Result of executing one action chunk of ``K`` steps in ``B`` environments.

    ``obs`` is the observation after the chunk. ``rewards``, ``terminated`` and ``truncated``
    are per inner step; after an env terminates or truncates inside the chunk, its remaining
    steps carry zero reward and the flags stay set.
    """

    obs: Obs
    rewards: np.ndarray  # float32 [B, K]
    terminated: np.ndarray  # bool [B, K]
    truncated: np.ndarray  # bool [B, K]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> np.ndarray:
        """bool [B]: the episode ended somewhere in this chunk."""
        return (self.terminated | self.truncated).any(axis=1)


def chunk_success(info: dict[str, Any], num_envs: int) -> np.ndarray:
    """bool [B]: solved at some step of this chunk, from the env's ``info['success']`` ([B] or [B, K])."""
    if "success" not in info:
        raise KeyError(f"the env's chunk_step info has no 'success' entry (keys: {sorted(info)})")
    success = np.asarray(info["success"], bool)
    if success.ndim == 2:
        success = success.any(axis=1)
    if success.shape != (num_envs,):
        raise ValueError(f"info['success'] must be [B] or [B, K] with B={num_envs}, got {success.shape}")
    return success


def validate_actions(actions: Any, batch_size: int, action_dim: int, name: str = "actions") -> np.ndarray:
    """Check an action chunk ``[B, K, A]`` and return it as float32, with a clear error otherwise."""
    array = np.asarray(actions, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] != batch_size or array.shape[2] != action_dim:
        raise ValueError(
            f"{name} must have shape [B={batch_size}, K, A={action_dim}], got {tuple(array.shape)}"
        )
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {bad})")
    return array


class ChunkEnv(ABC):
    """``B`` environments stepped together by action chunks.

    Real simulators and the world model implement this, so one runner trains in either and
    evaluates in the real one.
    """

    num_envs: int
    action_dim: int
    max_episode_steps: int

    @abstractmethod
    def reset(self, ids: list[int] | np.ndarray | None = None, seed: int | None = None) -> Obs:
        """Start new episodes in all ``B`` envs.

        ``ids`` picks an initial state per env (GRPO repeats one id ``group_size`` times);
        ``None`` lets the env choose. ``seed`` makes the resets reproducible.
        """

    @abstractmethod
    def chunk_step(self, actions: np.ndarray) -> ChunkStep:
        """Execute ``actions`` float[B, K, A]; envs already done stay done and cost nothing."""

    def offload(self) -> None:
        """Move heavy state off the accelerator while idle (no-op for real simulators)."""

    def onload(self) -> None:
        """Undo :meth:`offload`."""

    def close(self) -> None:
        """Release simulator resources."""
