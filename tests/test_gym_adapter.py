"""gymnasium adapters over ChunkEnvs: env checker, spaces, NEXT_STEP / DISABLED autoreset, reset options."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from world_model_fixtures import CHUNK, SIZE, make_world_model

from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs
from rlinf_wm.envs.gym_adapter import ChunkGymEnv, ChunkVectorEnv
from rlinf_wm.envs.world_model_env import WorldModelEnv
from rlinf_wm.workers.eval_worker import run_episodes


@pytest.fixture(scope="module")
def wm_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return make_world_model(tmp_path_factory.mktemp("wm") / "world_model")


class CountingEnv(ChunkEnv):
    """A ChunkEnv without per-env restarts: the image value counts steps; episodes end after 3 steps."""

    action_dim = 2
    max_episode_steps = 3

    def __init__(self, num_envs: int = 2) -> None:
        self.num_envs = num_envs
        self._steps = np.zeros(num_envs, int)

    def _obs(self) -> Obs:
        images = np.broadcast_to(self._steps[:, None, None, None], (self.num_envs, 4, 4, 3)).astype(np.uint8)
        return Obs(images=images, instructions=["count"] * self.num_envs)

    def reset(self, ids=None, seed=None) -> Obs:
        self._steps[:] = 0
        return self._obs()

    def chunk_step(self, actions) -> ChunkStep:
        k = np.asarray(actions).shape[1]
        truncated = np.zeros((self.num_envs, k), bool)
        for b in range(self.num_envs):
            for j in range(k):
                if self._steps[b] >= self.max_episode_steps:
                    truncated[b, j:] = True
                    break
                self._steps[b] += 1
                if self._steps[b] == self.max_episode_steps:
                    truncated[b, j:] = True
                    break
        return ChunkStep(self._obs(), np.zeros((self.num_envs, k), np.float32), np.zeros_like(truncated), truncated)


class PerStepSuccessEnv(CountingEnv):
    """CountingEnv reporting success per step (``info["success"]`` [B, K], as docs/adding_an_env.md allows): env 0
    succeeds at its second step and stays successful, env 1 never does."""

    def chunk_step(self, actions) -> ChunkStep:
        step = super().chunk_step(actions)
        k = np.asarray(actions).shape[1]
        success = np.zeros((self.num_envs, k), bool)
        success[0] = self._steps[0] - k + 1 + np.arange(k) >= 2
        step.info["success"] = success
        return step


def test_per_step_success_reads_as_solved_in_the_chunk():
    single = ChunkGymEnv(PerStepSuccessEnv(num_envs=1), chunk_size=2, image_shape=(4, 4, 3))
    single.reset(seed=0)
    *_, info = single.step(np.zeros((2, 2), np.float32))
    assert info["success"] is True
    vector = ChunkVectorEnv(PerStepSuccessEnv(), chunk_size=2, image_shape=(4, 4, 3),
                            autoreset_mode=AutoresetMode.DISABLED)
    vector.reset(seed=0)
    *_, info = vector.step(np.zeros((2, 2, 2), np.float32))
    assert info["success"].tolist() == [True, False]

    class StillPolicy:
        chunk_size = 2

        def act(self, obs, **kwargs):
            return SimpleNamespace(actions=np.zeros((obs.batch_size, 2, 2), np.float32))

    episodes = run_episodes(PerStepSuccessEnv(), StillPolicy(), [0, 1], seed=0, deterministic=True)["episodes"]
    assert [e["success"] for e in episodes] == [True, False]


def test_single_world_model_env_passes_gymnasium_env_checker(wm_dir):
    env = ChunkGymEnv(WorldModelEnv(str(wm_dir), num_envs=1, reward_threshold=1.01))
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"id": 2})
    assert obs in env.observation_space and obs["instruction"] == "pull the handle"
    assert env.action_space.shape == (CHUNK, 4)


def test_generic_chunk_env_passes_env_checker_and_ends_episodes():
    env = ChunkGymEnv(CountingEnv(num_envs=1), chunk_size=2, image_shape=(4, 4, 3))
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(np.zeros((2, 2), np.float32))
    assert not (terminated or truncated)
    _, _, terminated, truncated, _ = env.step(np.zeros((2, 2), np.float32))
    assert truncated and not terminated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((2, 2), np.float32))


def test_vector_env_next_step_autoreset(wm_dir):
    inner = WorldModelEnv(str(wm_dir), num_envs=3, reward_threshold=0.0)
    envs = ChunkVectorEnv(inner)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert envs.observation_space["image"].shape == (3, SIZE, SIZE, 3)
    assert envs.action_space.shape == (3, CHUNK, 4)
    obs, _ = envs.reset(seed=1, options={"ids": [0, 0, 1]})
    assert obs in envs.observation_space and obs["instruction"][0] == obs["instruction"][1]
    envs.action_space.seed(0)
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())
    # threshold 0: every episode succeeds at its first scored step
    np.testing.assert_array_equal(rewards, [1, 1, 1])
    assert terminated.all() and not truncated.any() and info["success"].all()
    calls = inner.timings.dit_calls
    nan_actions = np.full(envs.action_space.shape, np.nan, np.float32)  # ignored: every env restarts
    obs, rewards, terminated, truncated, _ = envs.step(nan_actions)
    assert inner.timings.dit_calls == calls and not rewards.any() and not (terminated | truncated).any()
    starts = inner.initial_states.frames[inner._episodes.reset_ids, -1]
    np.testing.assert_array_equal(obs["image"], starts)
    envs.step(envs.action_space.sample())
    assert inner.timings.dit_calls > calls
    envs.close()


def test_vector_env_disabled_mode_and_partial_reset(wm_dir):
    inner = WorldModelEnv(str(wm_dir), num_envs=2, reward_threshold=1.01)
    envs = ChunkVectorEnv(inner, autoreset_mode="disabled")
    first, _ = envs.reset(seed=0, options={"ids": [0, 1]})
    stepped, *_ = envs.step(np.zeros(envs.action_space.shape, np.float32))
    obs, _ = envs.reset(options={"reset_mask": [False, True], "ids": [2]})
    np.testing.assert_array_equal(obs["image"][0], stepped["image"][0])  # env 0 goes on
    np.testing.assert_array_equal(obs["image"][1], inner.initial_states.frames[2, -1])
    assert inner._episodes.steps.tolist() == [CHUNK, 0]
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": [True]})
    with pytest.raises(ValueError, match="unknown reset options"):
        envs.reset(options={"idz": [0, 1]})


def test_env_without_per_env_restart_needs_disabled_mode():
    with pytest.raises(ValueError, match="DISABLED"):
        ChunkVectorEnv(CountingEnv(), chunk_size=2, image_shape=(4, 4, 3))
    envs = ChunkVectorEnv(CountingEnv(), chunk_size=2, image_shape=(4, 4, 3), autoreset_mode=AutoresetMode.DISABLED)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="all True"):
        envs.reset(options={"reset_mask": [True, False]})
    envs.step(np.zeros((2, 2, 2), np.float32))
    _, _, _, truncated, _ = envs.step(np.zeros((2, 2, 2), np.float32))
    assert truncated.all()
    obs, _ = envs.reset(options={"reset_mask": [True, True]})
    assert (obs["image"] == 0).all()


def test_reinforce_example_trains_through_the_gym_api(wm_dir):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "gym" / "reinforce_world_model.py"
    spec = importlib.util.spec_from_file_location("reinforce_world_model", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--world-model-dir", str(wm_dir), "--num-envs", "2", "--max-episode-steps", "4",
                           "--iterations", "2"])
    # episodes of 4 steps = 2 chunks each (the tiny reward model never fires at its 0.5 threshold or does at once)
    assert [r["iteration"] for r in result["history"]] == [0, 1]
    assert all(1 <= r["chunks"] <= 2 for r in result["history"])
