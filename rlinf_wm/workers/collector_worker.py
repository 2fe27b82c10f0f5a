"""Ray actor that records scripted episodes in its own Meta-World env (one env per actor)."""

from __future__ import annotations

import ray

from rlinf_wm.data.trajectories import Episode


@ray.remote
class CollectorWorker:
    def __init__(self, env_kwargs: dict, expert_noise_std: float) -> None:
        # Imported here so the driver never loads MuJoCo just to create actors.
        from rlinf_wm.envs.metaworld_env import MetaWorldEnv

        self.env = MetaWorldEnv(**{**env_kwargs, "num_envs": 1})
        self.expert_noise_std = expert_noise_std

    def record(self, kind: str, seed: int, task_id: int) -> Episode:
        from rlinf_wm.envs.experts import record_episode

        return record_episode(self.env, kind, seed=seed, task_id=task_id, expert_noise_std=self.expert_noise_std)

    def close(self) -> None:
        self.env.close()
