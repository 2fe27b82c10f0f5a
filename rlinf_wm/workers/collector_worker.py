"""Records scripted episodes in its own simulator env (one env); as a Ray actor, one collector per actor."""

from __future__ import annotations

import ray

from rlinf_wm.data.trajectories import Episode


class EpisodeCollector:
    """One env built from ``env_cfg`` (``env_type`` + the env class's kwargs) and that env's scripted expert."""

    def __init__(self, env_cfg: dict, expert_noise_std: float, steps_after_success: int = 0,
                 noisy_expert_std: float = 1.0, near_miss_offset: list | None = None) -> None:
        # Imported here so the driver never loads a simulator just to create actors.
        from rlinf_wm.envs.registry import get_episode_recorder, make_env

        env_cfg = dict(env_cfg)
        env_type = env_cfg.pop("env_type")
        if steps_after_success:  # only Meta-World records past success (CollectConfig.check)
            env_cfg["terminate_on_success"] = False
        self.env = make_env(env_type, **{**env_cfg, "num_envs": 1})
        self.record_episode = get_episode_recorder(env_type)
        self.options = {"expert_noise_std": expert_noise_std}
        self.noisy_expert_std = noisy_expert_std
        if steps_after_success:
            self.options["steps_after_success"] = steps_after_success
        if near_miss_offset is not None:  # only Meta-World's recorder has near-miss episodes (CollectConfig.check)
            self.options["near_miss_offset"] = near_miss_offset

    def record(self, kind: str, seed: int, task_id: int) -> Episode:
        """``kind`` is one of the recorder's kinds, or ``noisy``: the expert with ``noisy_expert_std`` action noise."""
        if kind != "noisy":
            return self.record_episode(self.env, kind, seed=seed, task_id=task_id, **self.options)
        options = {**self.options, "expert_noise_std": self.noisy_expert_std}
        episode = self.record_episode(self.env, "expert", seed=seed, task_id=task_id, **options)
        episode.attrs["kind"] = "noisy"  # not a demonstration (SFT takes kind == "expert" only)
        return episode

    def close(self) -> None:
        self.env.close()


CollectorWorker = ray.remote(EpisodeCollector)
