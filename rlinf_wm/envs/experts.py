"""Scripted Meta-World experts and the episodes recorded with them (expert, perturbed, random, near_miss).

The world model must also see failures, so besides noisy expert episodes there are "perturbed"
episodes (the expert is overridden by random actions for a random segment, then tries to recover),
"random" episodes (random actions throughout) and "near_miss" episodes: the expert aims at the object's
position plus a constant offset drawn per episode, so it reaches, grasps or pushes beside the object and
makes the same motions as a success without the outcome (or succeeds off-centre). Those are the
counterexamples a world model needs so that a policy's almost-right motion is not rendered as a success.
"""

from __future__ import annotations

import warnings

import numpy as np

from rlinf_wm.config.env_schemas import NEAR_MISS_OFFSET, near_miss_boxes
from rlinf_wm.data.trajectories import Episode
from rlinf_wm.envs.metaworld_env import MetaWorldEnv

EPISODE_KINDS = ("expert", "perturbed", "random", "near_miss")


def _policy_class(task: str) -> type:
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ValueError(f"no scripted Meta-World policy for task {task!r}; available: {', '.join(sorted(ENV_POLICY_MAP))}")
    return ENV_POLICY_MAP[task]


class ExpertPolicy:
    """Meta-World's scripted policy for ``task`` (e.g. ``SawyerDrawerOpenV3Policy``) plus Gaussian noise.

    Input: the 39-d state with the goal filled in (:meth:`MetaWorldEnv.raw_states`); output: actions in [-1, 1].
    ``aim_offset`` (3 floats) is added to the first object's position (state[4:7]), which the scripted policies
    aim at: the expert then acts as if the object were there.
    """

    def __init__(self, task: str, action_noise_std: float = 0.0, rng: np.random.Generator | None = None,
                 aim_offset=None) -> None:
        if action_noise_std < 0:
            raise ValueError(f"action_noise_std must be >= 0, got {action_noise_std}")
        self.task = task
        self.policy = _policy_class(task)()
        self.action_noise_std = float(action_noise_std)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.aim_offset = None if aim_offset is None else np.asarray(aim_offset, np.float64)
        if self.aim_offset is not None and self.aim_offset.shape != (3,):
            raise ValueError(f"aim_offset must be 3 floats (x, y, z), got shape {self.aim_offset.shape}")

    def act(self, states: np.ndarray) -> np.ndarray:
        """states float[39] or float[B, 39] -> float32 actions [4] or [B, 4]."""
        states = np.asarray(states, np.float64)
        batch = states[None] if states.ndim == 1 else states
        if batch.ndim != 2 or batch.shape[1] != 39:
            raise ValueError(f"expert states must be [39] or [B, 39], got {states.shape}")
        if self.aim_offset is not None:
            batch = batch.copy()
            batch[:, 4:7] += self.aim_offset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the env clips anyway
            actions = np.stack([self.policy.get_action(s) for s in batch]).astype(np.float64)
        if self.action_noise_std > 0:
            actions = actions + self.rng.normal(0.0, self.action_noise_std, actions.shape)
        actions = np.clip(actions, -1.0, 1.0).astype(np.float32)
        return actions[0] if states.ndim == 1 else actions

    __call__ = act


class RandomActions:
    """Uniform random actions held for a few steps each, so the arm wanders visibly instead of jittering."""

    def __init__(self, rng: np.random.Generator, action_dim: int = 4, hold_steps: tuple[int, int] = (3, 10)) -> None:
        self.rng = rng
        self.action_dim = action_dim
        self.hold_steps = hold_steps
        self._action = np.zeros(action_dim, np.float32)
        self._left = 0

    def next(self) -> np.ndarray:
        if self._left <= 0:
            self._action = self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
            self._left = int(self.rng.integers(self.hold_steps[0], self.hold_steps[1] + 1))
        self._left -= 1
        return self._action.copy()


def draw_aim_offset(rng: np.random.Generator, near_miss_offset) -> np.ndarray:
    """A near-miss episode's aim offset: uniform in ``near_miss_offset``'s box, or in one of its boxes drawn first."""
    try:
        boxes = near_miss_boxes(near_miss_offset)
    except ValueError as error:
        raise ValueError(f"near_miss_offset {error}") from None
    # one box draws nothing for its choice, so single-box collections keep their episodes
    low, high = boxes[int(rng.integers(len(boxes)))] if len(boxes) > 1 else boxes[0]
    return rng.uniform(low, high)


def record_episode(
    env: MetaWorldEnv,
    kind: str,
    seed: int,
    task_id: int,
    expert_noise_std: float = 0.1,
    perturb_steps: tuple[int, int] = (15, 40),
    steps_after_success: int = 0,
    near_miss_offset=NEAR_MISS_OFFSET,
) -> Episode:
    """Run one episode in env 0 of ``env`` (``num_envs`` must be 1) and return it with every frame.

    ``seed`` fixes all randomness (noise, perturbation segment, random actions), so the same
    arguments give the same episode. Perturbed episodes replace the expert's actions by random
    ones for ``perturb_steps`` (range) steps starting in the first 40% of the horizon (the expert
    needs ~60% of a 150-step horizon on drawer-open, so the perturbation lands before it is done).
    Near-miss episodes aim the expert at the object plus an offset drawn uniformly per axis between
    ``near_miss_offset``'s two corners, or in a box drawn from a list of such (recorded in the episode's
    ``aim_offset`` attribute).

    ``steps_after_success`` > 0 keeps recording that many steps past success (within ``max_episode_steps``; the
    env must be built with ``terminate_on_success=False``), so the data shows success itself and not only the
    borderline frame where it is first reached: the reward model learns from those frames. The reward stays 1 at
    the success step only; ``dones`` is set from the success step on (the task is done).
    """
    if kind not in EPISODE_KINDS:
        raise ValueError(f"episode kind must be one of {EPISODE_KINDS}, got {kind!r}")
    if env.num_envs != 1:
        raise ValueError(f"record_episode needs an env with num_envs=1, got {env.num_envs}")
    if steps_after_success < 0:
        raise ValueError(f"steps_after_success must be >= 0, got {steps_after_success}")
    if steps_after_success and env.terminate_on_success:
        raise ValueError("steps_after_success > 0 needs a MetaWorldEnv built with terminate_on_success=False")
    rng = np.random.default_rng(seed)
    attrs = {"kind": kind}
    aim_offset = None
    if kind == "near_miss":
        aim_offset = draw_aim_offset(rng, near_miss_offset)
        attrs["aim_offset"] = aim_offset.tolist()
    expert = ExpertPolicy(env.task, expert_noise_std, rng, aim_offset=aim_offset)
    random_actions = RandomActions(rng)
    horizon = env.max_episode_steps
    segment = range(0)
    if kind == "perturbed":
        start = int(rng.integers(0, max(1, int(0.4 * horizon))))
        segment = range(start, start + int(rng.integers(perturb_steps[0], perturb_steps[1] + 1)))
        attrs.update(perturb_start=segment.start, perturb_stop=segment.stop)

    obs = env.reset(ids=[task_id])
    frames, states, actions, rewards, dones = [obs.images[0]], [], [], [], []
    success_at = None
    for t in range(horizon):
        state = env.raw_states()[0]
        if kind == "random" or t in segment:
            action = random_actions.next()
        else:
            action = expert.act(state)
        step = env.chunk_step(action[None, None, :])
        states.append(state.astype(np.float32))
        actions.append(action)
        rewards.append(float(step.rewards[0, 0]))
        dones.append(bool(step.info["success"][0]))  # robomimic-style: 1 where the task is done (success)
        frames.append(step.obs.images[0])
        if success_at is None and dones[-1]:
            success_at = t
        if step.done[0] or (success_at is not None and t - success_at >= steps_after_success):
            break
    success = bool(step.info["success"][0])
    return Episode(
        frames=np.stack(frames),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        dones=np.asarray(dones, bool),
        success=success,
        instruction=env.instruction,
        task=env.task,
        seed=int(seed),
        states=np.stack(states),
        attrs={**attrs, "task_id": int(env.task_ids[0])},
    )
