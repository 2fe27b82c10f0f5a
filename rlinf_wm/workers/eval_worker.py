"""Real-simulator evaluation: run a policy in a :class:`ChunkEnv` until every episode ends.

:func:`run_episodes` is plain Python (usable in a notebook or a test); :class:`EvalWorker` holds one
env batch and one policy inside a Ray actor (the runner wraps it with ``ray.remote``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rlinf_wm.data.trajectories import Episode
from rlinf_wm.envs import ChunkEnv, make_env
from rlinf_wm.envs.base import chunk_success
from rlinf_wm.models.policy import Policy, load_policy


def run_episodes(
    env: ChunkEnv,
    policy: Policy,
    reset_ids: list[int],
    seed: int = 0,
    deterministic: bool = True,
    temperature: float = 1.0,
    num_videos: int = 0,
    record_episodes: bool = False,
) -> dict[str, Any]:
    """One episode per entry of ``reset_ids``, ``env.num_envs`` at a time.

    Success is the env's ``info["success"]`` when it reports one, else "ended by termination".
    Episode length counts inner env steps up to and including the one that ended the episode.
    Returns ``{"episodes": [{reset_id, initial_state, success, length}], "videos": [uint8 [T, H, W, 3]]}``;
    ``initial_state`` is the id the env actually uses (``reset_id`` modulo ``env.num_initial_states``
    when the env has a finite set, e.g. Meta-World's 50 ML1 states);
    videos hold the first ``num_videos`` episodes at one frame per chunk (the env returns the
    observation after each chunk).

    ``record_episodes``: also return every episode as a :class:`~rlinf_wm.data.trajectories.Episode` (``kind``
    attr ``policy``) under ``"recorded"`` - world-model training data that shows the policy's own behaviour. The
    env must report a frame per step (``info["frames"]``, e.g. ``render_every_step=True`` in the Meta-World and LIBERO envs).
    """
    generator = torch.Generator().manual_seed(seed)
    batch = env.num_envs
    num_states = getattr(env, "num_initial_states", None)
    episodes: list[dict[str, Any]] = []
    videos: list[np.ndarray] = []
    recorded: list[Episode] = []
    for round_index, start in enumerate(range(0, len(reset_ids), batch)):
        ids = list(reset_ids[start : start + batch])
        used = len(ids)
        ids += [ids[-1]] * (batch - used)  # a short last round: spare envs replay an id, results dropped
        obs = env.reset(ids=np.asarray(ids), seed=seed + round_index)
        instructions = list(obs.instructions)
        record = min(max(num_videos - len(videos), 0), used)
        frames = [[obs.images[b]] for b in range(record)]
        done = np.zeros(batch, bool)
        success = np.zeros(batch, bool)
        lengths = np.zeros(batch, np.int64)
        steps = [[obs.images[b]] for b in range(used)], [[] for _ in range(used)], [[] for _ in range(used)]
        # Every env must end by max_episode_steps; the +2 chunks of slack only guard against a broken env.
        max_chunks = math.ceil(env.max_episode_steps / max(1, getattr(policy, "chunk_size", 1))) + 2
        for _ in range(max_chunks):
            out = policy.act(obs, deterministic=deterministic, temperature=temperature, generator=generator)
            step = env.chunk_step(out.actions)
            ended = step.terminated | step.truncated  # [B, K]
            first_end = np.where(ended.any(axis=1), ended.argmax(axis=1) + 1, ended.shape[1])
            lengths += np.where(done, 0, first_end)
            if record_episodes:
                append_steps(steps, step, out.actions, done[:used], first_end)
            if "success" in step.info:
                success |= chunk_success(step.info, batch) & ~done
            else:
                success |= step.terminated.any(axis=1) & ~done
            for b in range(record):
                if not done[b]:
                    frames[b].append(step.obs.images[b])
            done |= ended.any(axis=1)
            obs = step.obs
            if done[:used].all():
                break
        else:
            raise RuntimeError(
                f"episodes {ids[:used]} did not end within {max_chunks} chunks "
                f"(max_episode_steps={env.max_episode_steps}); the env never set terminated/truncated"
            )
        if "episode_length" in step.info:  # the env's own count is authoritative when it has one
            lengths = np.asarray(step.info["episode_length"], np.int64).reshape(batch)
        for b in range(used):
            state = int(ids[b]) % num_states if num_states else int(ids[b])
            episodes.append({"reset_id": int(ids[b]), "initial_state": state, "success": bool(success[b]),
                             "length": int(lengths[b])})
            if record_episodes:
                recorded.append(as_episode(env, [part[b] for part in steps], bool(success[b]), state, seed,
                                            instructions[b]))
        videos += [np.stack(f) for f in frames]
    result = {"episodes": episodes, "videos": videos}
    if record_episodes:
        result["recorded"] = recorded
    return result


def append_steps(steps, step, actions: np.ndarray, was_done: np.ndarray, num_steps: np.ndarray) -> None:
    """Append each still-running env's executed steps of this chunk: frames, actions, rewards."""
    frames = step.info.get("frames")
    if frames is None:
        raise ValueError("record_episodes needs an env that reports a frame per step in info['frames'] "
                         "(render_every_step=True)")
    for b in np.flatnonzero(~was_done):
        n = int(num_steps[b])
        steps[0][b].extend(frames[b, :n])
        steps[1][b].extend(np.asarray(actions[b, :n], np.float32))
        steps[2][b].extend(step.rewards[b, :n])


def as_episode(env: ChunkEnv, parts, success: bool, initial_state: int, seed: int, instruction: str,
               kind: str = "policy") -> Episode:
    frames, actions, rewards = parts
    dones = np.zeros(len(actions), bool)
    dones[-1] = success  # robomimic-style: 1 where the task is done
    return Episode(frames=np.stack(frames), actions=np.stack(actions), rewards=np.asarray(rewards, np.float32),
                   dones=dones, success=success, instruction=instruction,
                   task=str(getattr(env, "task", "")), seed=int(seed),
                   attrs={"kind": kind, "task_id": int(initial_state)})


class EvalWorker:
    """One env batch built from an env config (``env_type`` + the env class's kwargs) and one policy."""

    def __init__(self, env_cfg: dict[str, Any], policy_path: str, num_threads: int = 1, worker_index: int = 0):
        torch.set_num_threads(num_threads)
        env_cfg = dict(env_cfg)
        if "env_type" not in env_cfg:
            raise KeyError("eval env config has no 'env_type'")
        self.worker_index = worker_index
        self.env = make_env(env_cfg.pop("env_type"), **env_cfg)
        self.policy = load_policy(policy_path)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Evaluate in-memory weights (e.g. during RL) instead of the checkpoint's."""
        self.policy.load_state_dict(state_dict)

    def run(self, reset_ids: list[int], seed: int, deterministic: bool, temperature: float,
            num_videos: int = 0, record_episodes: bool = False) -> dict[str, Any]:
        return run_episodes(self.env, self.policy, reset_ids, seed, deterministic, temperature, num_videos,
                            record_episodes)

    def close(self) -> None:
        self.env.close()
