"""EnvWorker: one batch of environments (any ChunkEnv, chosen by ``env_type``) inside a Ray actor.

The class is plain Python so it also runs in-process (tests, notebooks); the runner wraps it with
``ray.remote``. It only forwards calls and times them: trajectory building lives in the runner.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray

from rlinf_wm.envs import Obs, make_env


class EnvWorker:
    def __init__(self, env_cfg: dict[str, Any], worker_index: int = 0, num_threads: int | None = None):
        if num_threads:
            import torch

            torch.set_num_threads(num_threads)
        env_cfg = dict(env_cfg)
        env_type = env_cfg.pop("env_type")
        self.worker_index = worker_index
        self.env = make_env(env_type, **env_cfg)
        self.busy_seconds = 0.0  # env compute since the last take_busy_seconds()

    def spec(self) -> dict[str, Any]:
        return {
            "num_envs": self.env.num_envs,
            "action_dim": self.env.action_dim,
            "max_episode_steps": self.env.max_episode_steps,
            # Distinct reset ids (None: any int is a valid id).
            "num_initial_states": getattr(self.env, "num_initial_states", None),
            # Actions per chunk when the env fixes it (a world model predicts a fixed number of frames).
            "chunk_size": getattr(self.env, "chunk_size", None),
        }

    def reset(self, ids: list[int] | None = None, seed: int | None = None) -> Obs:
        """Start episodes; ``ids`` holds one initial-state id per env (GRPO: each id ``group_size`` times)."""
        if ids is not None and len(ids) != self.env.num_envs:
            raise ValueError(f"env worker {self.worker_index}: got {len(ids)} reset ids for {self.env.num_envs} envs")
        start = time.perf_counter()
        obs = self.env.reset(ids=None if ids is None else np.asarray(ids), seed=seed)
        self.busy_seconds += time.perf_counter() - start
        return obs

    def chunk_step(self, actions: np.ndarray) -> tuple[Obs, dict[str, Any]]:
        """Execute one chunk; returns the next obs and a small record, so callers can route them apart.

        The record holds ``rewards``/``terminated``/``truncated`` [B, K] and the env's ``info``.
        """
        start = time.perf_counter()
        step = self.env.chunk_step(actions)
        self.busy_seconds += time.perf_counter() - start
        record = {
            "rewards": np.asarray(step.rewards, np.float32),
            "terminated": np.asarray(step.terminated, bool),
            "truncated": np.asarray(step.truncated, bool),
            "info": step.info,
        }
        return step.obs, record

    def offload(self) -> None:
        self.env.offload()

    def onload(self) -> None:
        self.env.onload()

    def take_busy_seconds(self) -> float:
        seconds, self.busy_seconds = self.busy_seconds, 0.0
        return seconds

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        self.env.close()
