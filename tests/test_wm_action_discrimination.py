"""benchmarks/wm_action_discrimination.py: does the imagined outcome rank a state's real successes above its failures?"""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("wm_action_discrimination", ROOT / "benchmarks" / "wm_action_discrimination.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_outcome_set_by_the_state_alone_carries_no_within_state_signal():
    # Two states with one real success and one real failure each; the world model's outcome follows the state only.
    states = np.array([0, 0, 1, 1])
    real = np.array([True, False, True, False])
    imagined = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], bool)
    out = bench.discrimination(imagined, real, states)
    assert out["within_state_pairs"] == 2 and out["within_state"] == 0.5
    assert out["episode_auc"] == 0.5 and out["imagined_given_real_success"] == 0.5
    assert out["noise_share"] is None  # no spread at all: nothing to split


def test_outcome_that_follows_the_actions_ranks_every_pair_right():
    states = np.array([0, 0, 0, 1, 1])
    real = np.array([True, False, False, True, False])
    imagined = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 1], [0, 1, 0, 0]], bool)
    out = bench.discrimination(imagined, real, states)
    assert out["within_state_pairs"] == 3 and out["within_state"] == 1.0
    assert out["imagined_given_real_success"] == 0.75 and out["imagined_given_real_failure"] == pytest.approx(1 / 6, abs=1e-4)  # rates 0, 1/4, 1/4
    assert 0 < out["noise_share"] < 1
    assert out["episodes_with_mixed_replicas"] == 4


def test_pure_sampler_noise_is_all_noise_share():
    # Every episode of a state has the same 50 % imagined rate: the spread is replicas disagreeing, not actions.
    imagined = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], bool)
    out = bench.discrimination(imagined, np.array([True, False]), np.array([3, 3]))
    assert out["noise_share"] == 1.0 and out["within_state"] == 0.5


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="imagined must be"):
        bench.discrimination(np.zeros((3, 2), bool), np.zeros(2, bool), np.zeros(2, int))


class ActionSignEnv:
    """Stands in for WorldModelEnv: an env succeeds in a chunk whose first action's x is positive."""

    chunk_size, max_episode_steps, action_dim = 2, 6, 4

    def __init__(self, num_envs):
        self.num_envs = num_envs
        self.resets = []

    def reset(self, ids, seed):
        self.resets.append((list(ids), seed))
        self.success = np.zeros(self.num_envs, bool)

    def chunk_step(self, actions):
        assert actions.shape == (self.num_envs, self.chunk_size, self.action_dim)
        self.success |= actions[:, 0, 0] > 0
        return SimpleNamespace(info={"success": self.success.copy(), "num_active": int((~self.success).sum())})


def test_replay_drives_every_replica_with_its_episodes_actions():
    succeeds = np.zeros((5, 4), np.float32)
    succeeds[4, 0] = 1.0  # x > 0 at the start of the third chunk
    fails = -np.ones((6, 4), np.float32)
    episodes = [SimpleNamespace(actions=a) for a in (succeeds, fails, succeeds)]
    env = ActionSignEnv(num_envs=4)
    imagined = bench.replay(env, episodes, replicas=3, seed=7)
    assert imagined.tolist() == [[True] * 3, [False] * 3, [True] * 3]
    # 9 replays in batches of 4: the last batch is padded; each batch gets its own noise seed.
    assert [seed for _, seed in env.resets] == [7, 8, 9]
    assert env.resets[0][0] == [0, 0, 0, 1] and env.resets[2][0] == [2, 2, 2, 2]
