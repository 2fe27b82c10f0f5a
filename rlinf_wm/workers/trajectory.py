"""Rollout trajectories as numpy arrays, ``B`` trajectories of ``N`` chunks (layout of rlinf_wm.algorithms).

The runner fills one :class:`TrajectoryBuilder` per env batch while the policy and the env take
turns, then concatenates the batches (padding to the longest) into one :class:`TrajectoryBatch`
that is shipped to the actor worker with a single ``ray.put``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from rlinf_wm.envs.base import Obs, chunk_success
from rlinf_wm.models.policy.base import PolicyOutput


@dataclass
class TrajectoryBatch:
    images: np.ndarray  # uint8 [B, N, H, W, 3]: observation before chunk n
    instructions: list[str]  # [B]
    tokens: np.ndarray  # int64 [B, N, K, A]
    logprobs: np.ndarray  # float32 [B, N, K, A]: log-probs under the rollout policy
    rewards: np.ndarray  # float32 [B, N, K]
    terminated: np.ndarray  # bool [B, N, K]
    truncated: np.ndarray  # bool [B, N, K]
    success: np.ndarray  # bool [B]: the task was solved at some step of the episode
    group_ids: np.ndarray  # int64 [B]: trajectories reset from the same initial state share one
    states: np.ndarray | None = None  # float32 [B, N, S]
    values: np.ndarray | None = None  # float32 [B, N]: V(obs before chunk n) (PPO)
    next_values: np.ndarray | None = None  # float32 [B, N]: V(obs after chunk n) (PPO)
    halted: np.ndarray | None = None  # bool [B]: ended by a world-model ensemble's disagreement (its env reports it)

    @property
    def num_trajectories(self) -> int:
        return len(self.instructions)

    @property
    def num_chunks(self) -> int:
        return self.tokens.shape[1]

    def alive(self) -> np.ndarray:
        """bool [B, N]: chunk n was executed (the episode had not ended before it)."""
        done = (self.terminated | self.truncated).any(axis=2)
        ended_before = np.cumsum(done, axis=1) - done
        return ended_before == 0

    def episode_lengths(self) -> np.ndarray:
        """int [B]: env steps until the episode ended (the whole rollout if it never did)."""
        done = self.terminated | self.truncated  # [B, N, K]
        flat = done.reshape(done.shape[0], -1)
        ended = flat.any(axis=1)
        return np.where(ended, flat.argmax(axis=1) + 1, flat.shape[1])

    def select(self, index: np.ndarray) -> "TrajectoryBatch":
        """The trajectories at ``index`` (a sub-batch, e.g. the GRPO groups kept after resampling)."""
        index = np.asarray(index)
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                picked[f.name] = None
            elif f.name == "instructions":
                picked[f.name] = [value[i] for i in index.tolist()]
            else:
                picked[f.name] = value[index]
        return TrajectoryBatch(**picked)

    @staticmethod
    def concatenate(parts: list["TrajectoryBatch"]) -> "TrajectoryBatch":
        """Join along trajectories, padding shorter rollouts with done chunks (masked out downstream)."""
        length = max(p.num_chunks for p in parts)
        parts = [_pad_chunks(p, length) for p in parts]
        joined: dict[str, Any] = {}
        for f in fields(TrajectoryBatch):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "instructions":
                joined[f.name] = [s for v in values for s in v]
            elif any(v is None for v in values):
                joined[f.name] = None
            else:
                joined[f.name] = np.concatenate(values)
        return TrajectoryBatch(**joined)


def _pad_chunks(batch: TrajectoryBatch, length: int) -> TrajectoryBatch:
    missing = length - batch.num_chunks
    if missing == 0:
        return batch
    padded = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if value is None or f.name in ("instructions", "success", "group_ids", "halted"):
            continue
        fill = True if f.name in ("terminated", "truncated") else 0
        pad = np.full((value.shape[0], missing, *value.shape[2:]), fill, dtype=value.dtype)
        padded[f.name] = np.concatenate([value, pad], axis=1)
    return replace(batch, **padded)


class TrajectoryBuilder:
    """Accumulates one env batch's rollout: obs -> policy output -> env step, chunk after chunk."""

    def __init__(self, group_ids: np.ndarray, instructions: list[str]):
        self.group_ids = np.asarray(group_ids, np.int64)
        self.instructions = list(instructions)
        self.num_envs = len(self.group_ids)
        self._obs: list[Obs] = []
        self._outputs: list[PolicyOutput] = []
        self._steps: list[dict[str, Any]] = []
        self.ended = np.zeros(self.num_envs, bool)
        self.success = np.zeros(self.num_envs, bool)
        self.halted: np.ndarray | None = None  # when the env reports info["halted"]
        self.final_values: np.ndarray | None = None

    @property
    def finished(self) -> bool:
        return bool(self.ended.all())

    @property
    def num_chunks(self) -> int:
        return len(self._steps)

    def add_action(self, obs: Obs, output: PolicyOutput) -> None:
        if len(self._obs) != len(self._steps):
            raise RuntimeError("add_action called twice without an env step in between")
        self._obs.append(obs)
        self._outputs.append(output)

    def add_step(self, record: dict[str, Any]) -> None:
        if len(self._steps) != len(self._obs) - 1:
            raise RuntimeError("add_step called without a pending action")
        alive = ~self.ended
        done = (record["terminated"] | record["truncated"]).any(axis=1)
        self.success |= alive & chunk_success(record["info"], self.num_envs)
        if "halted" in record["info"]:
            if self.halted is None:
                self.halted = np.zeros(self.num_envs, bool)
            self.halted |= alive & np.asarray(record["info"]["halted"], bool).reshape(self.num_envs)
        self.ended |= done
        self._steps.append(record)

    def build(self) -> TrajectoryBatch:
        if not self._steps:
            raise RuntimeError("no chunk was stepped")
        values = None
        if all(o.values is not None for o in self._outputs):
            values = np.stack([o.values for o in self._outputs], axis=1).astype(np.float32)
        next_values = None
        if values is not None and self.final_values is not None:
            next_values = np.concatenate([values[:, 1:], self.final_values[:, None]], axis=1).astype(np.float32)
        states = None
        if all(o.states is not None for o in self._obs):
            states = np.stack([o.states for o in self._obs], axis=1).astype(np.float32)
        return TrajectoryBatch(
            images=np.stack([o.images for o in self._obs], axis=1),
            instructions=self.instructions,
            tokens=np.stack([o.tokens for o in self._outputs], axis=1).astype(np.int64),
            logprobs=np.stack([o.logprobs for o in self._outputs], axis=1).astype(np.float32),
            rewards=np.stack([s["rewards"] for s in self._steps], axis=1).astype(np.float32),
            terminated=np.stack([s["terminated"] for s in self._steps], axis=1),
            truncated=np.stack([s["truncated"] for s in self._steps], axis=1),
            success=self.success.copy(),
            group_ids=self.group_ids,
            states=states,
            values=values,
            next_values=next_values,
            halted=None if self.halted is None else self.halted.copy(),
        )
