"""Does the RL recipe learn? GRPO and PPO, run end to end in-process on a task whose answer is known.

Unit tests check each loss term; this checks the whole chain the runner uses (sampled tokens and their
log-probs from the rollout worker, trajectory building, advantages, the clipped update, weight sync) by
asking it to improve a tiny policy on a colour bandit: every frame is red or blue, and a chunk succeeds when
its mean first action points the colour's way (red: > +0.3, blue: < -0.3). A sign error, stale weights or
advantages attached to the wrong chunks leave the success rate where it started.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlinf_wm.config.algorithm_schema import AlgorithmConfig
from rlinf_wm.config.embodied_schema import ActorConfig
from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.config.validate import validate
from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs, validate_actions
from rlinf_wm.models.policy import TinyVLA
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.workers.actor_worker import ActorWorker
from rlinf_wm.workers.rollout_worker import RolloutWorker
from rlinf_wm.workers.trajectory import TrajectoryBuilder

IMAGE, K, A = 16, 2, 2
MAX_CHUNKS = 3
THRESHOLD = 0.3
ALGORITHMS = Path(__file__).resolve().parents[1] / "examples" / "embodiment" / "config" / "algorithm"
COLOURS = np.array([[220, 30, 30], [30, 30, 220]], np.uint8)  # id % 2: 0 red, 1 blue


class ColourBandit(ChunkEnv):
    """Reset id -> colour; an episode ends at the first successful chunk or after MAX_CHUNKS chunks."""

    def __init__(self, num_envs: int):
        self.num_envs, self.action_dim, self.max_episode_steps = num_envs, A, MAX_CHUNKS * K
        self.colour = np.zeros(num_envs, np.int64)
        self.done = np.zeros(num_envs, bool)
        self.chunks = np.zeros(num_envs, np.int64)
        self.rng = np.random.default_rng(0)

    def _obs(self) -> Obs:
        images = np.broadcast_to(COLOURS[self.colour][:, None, None], (self.num_envs, IMAGE, IMAGE, 3)).copy()
        noise = self.rng.integers(-20, 21, images.shape)
        return Obs(np.clip(images + noise, 0, 255).astype(np.uint8), ["match the colour"] * self.num_envs)

    def reset(self, ids=None, seed=None) -> Obs:
        self.rng = np.random.default_rng(seed)
        self.colour = np.asarray(ids) % 2
        self.done[:] = False
        self.chunks[:] = 0
        return self._obs()

    def chunk_step(self, actions) -> ChunkStep:
        actions = validate_actions(actions, self.num_envs, A)
        direction = np.where(self.colour == 0, 1.0, -1.0)
        hit = ~self.done & (direction * actions[:, :, 0].mean(axis=1) > THRESHOLD)
        self.chunks += ~self.done
        timeout = ~self.done & ~hit & (self.chunks >= MAX_CHUNKS)
        terminated = np.zeros((self.num_envs, K), bool)
        truncated = np.zeros((self.num_envs, K), bool)
        rewards = np.zeros((self.num_envs, K), np.float32)
        terminated[hit, -1] = True
        rewards[hit, -1] = 1.0
        truncated[timeout, -1] = True
        self.done |= hit | timeout
        return ChunkStep(self._obs(), rewards, terminated, truncated, {"success": hit})


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = TinyVLAConfig(chunk_size=K, num_bins=16, encoder_channels=[8], image_grid=2, hidden_dim=32,
                           num_layers=1, num_heads=2, mlp_ratio=2, image_size=IMAGE, action_dim=A,
                           action_q01=[-1.0] * A, action_q99=[1.0] * A)
    path = tmp_path_factory.mktemp("policy") / "policy"
    save_model_atomic(TinyVLA(config), path)
    return str(path)


def run_episodes(env: ColourBandit, rollout: RolloutWorker, ids: np.ndarray, seed: int, bootstrap: bool):
    """One episode per env, as the runner's collection loop does it; returns the trajectory batch."""
    obs = env.reset(ids=ids, seed=seed)
    builder = TrajectoryBuilder(ids, obs.instructions)
    chunk = 0
    while not builder.finished:
        output = rollout.act(obs, seed=seed * 1000 + chunk)
        builder.add_action(obs, output)
        step = env.chunk_step(output.actions)
        builder.add_step({"rewards": step.rewards, "terminated": step.terminated, "truncated": step.truncated,
                          "info": step.info})
        obs, chunk = step.obs, chunk + 1
    if bootstrap:
        builder.final_values = rollout.values(obs)
    return builder.build()


def success_rate(env, rollout, seed) -> float:
    ids = np.arange(env.num_envs)
    return float(run_episodes(env, rollout, ids, seed, bootstrap=False).success.mean())


def shipped_algorithm(name: str, **overrides) -> AlgorithmConfig:
    """examples/embodiment/config/algorithm/<name>.yaml, with batch-size keys scaled to the toy."""
    cfg = OmegaConf.merge(OmegaConf.load(ALGORITHMS / f"{name}.yaml"), overrides)
    return validate(cfg, AlgorithmConfig, "algorithm")


@pytest.mark.parametrize("name, iterations", [("grpo", 20), ("ppo", 30)])
def test_rl_raises_the_success_rate_of_a_colour_bandit(policy_dir, name, iterations):
    torch.manual_seed(0)
    group_size = 4 if name == "grpo" else 1
    algorithm = shipped_algorithm(name, group_size=group_size, minibatch_size=32, update_epochs=2, value_lr=3e-3)
    actor = ActorWorker({"path": policy_dir, "model": {}}, algorithm, ActorConfig(lr=3e-3), 0)
    rollout = RolloutWorker({"path": policy_dir, "model": {}, "temperature": 1.0})
    env, eval_env = ColourBandit(32), ColourBandit(128)
    before = success_rate(eval_env, rollout, seed=10_000)

    ids = np.repeat(np.arange(env.num_envs // group_size), group_size)
    return_errors = []
    for iteration in range(iterations):
        batch = run_episodes(env, rollout, ids, seed=iteration, bootstrap=name == "ppo")
        metrics = actor.update(batch, iteration)
        rollout.set_weights(actor.get_weights(), iteration + 1)
        if name == "ppo":
            return_errors.append(abs(metrics["rollout/returns_mean"] - batch.success.mean()))
    after = success_rate(eval_env, rollout, seed=10_000)

    assert before < 0.6, f"the untrained policy already solves the bandit ({before:.0%}): the test proves nothing"
    assert after >= before + 0.3, f"{name}: success {before:.0%} -> {after:.0%} in {iterations} iterations"
    if name == "ppo":
        # A timed-out episode is a failure: its value target must not be bootstrapped up towards success
        # (with bootstrapping the mean target sat near 1 while 55 % of episodes succeeded).
        assert np.mean(return_errors) < 0.1, f"value targets stray from the success rate by {np.mean(return_errors):.2f}"
