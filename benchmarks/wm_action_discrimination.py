"""Does the world model tell a state's successful actions from its failed ones? The signal GRPO needs.

GRPO compares episodes that start from the same initial state, so what RL in the world model can learn is bounded by
how well the imagined outcome ranks *different actions from one state*, not by how well it ranks states
(``wm_policy_calibration.py`` measures that). This benchmark replays recorded real episodes - e.g. a policy's
evaluation episodes, ``eval_embodied_agent.py ... eval.save_episodes=true``, ideally ones the world model did not
train on - open loop in the world-model env of an RL run (its ``config.yaml``: same sampler, reward model,
threshold and success rule), each from its own recorded first frame with its recorded actions (zero actions, which
hold the arm still, after a real success ends the episode), ``--replicas`` times with different sampler noise.

Reported:
- imagined success of the episodes that really succeeded and of those that really failed, and the AUC of each
  episode's imagined success rate (over its replicas) for its real outcome;
- ``within_state``: over every (real success, real failure) pair of episodes from the same initial state, the
  probability that the success's imagined rate is the higher (ties count half): 0.5 means the world model's
  outcome carries no information about the actions, only about the state;
- ``noise_share``: within initial states, the part of the imagined outcomes' variance that is sampler noise (the
  spread between replicas of one action sequence) rather than actions (the spread between the episodes' rates).

    .venv/bin/python benchmarks/wm_action_discrimination.py --run-dir outputs/drawer-open-v3/rl_grpo_wm \
        --episodes outputs/drawer-open-v3/eval_base_seed1/episodes [--replicas 4] [--num-envs 64] [--threads 2]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from rlinf_wm.runners.reward_scoring import roc_auc  # noqa: E402


def discrimination(imagined: np.ndarray, real_success: np.ndarray, states: np.ndarray) -> dict:
    """``imagined`` bool ``[E, R]`` (R replicas of each of E episodes), ``real_success`` bool ``[E]``, ``states``
    int ``[E]`` (initial state of each episode) -> the report's statistics (module docstring)."""
    imagined = np.asarray(imagined, bool)
    real_success = np.asarray(real_success, bool)
    states = np.asarray(states)
    if imagined.ndim != 2 or imagined.shape[0] != len(real_success) or len(states) != len(real_success):
        raise ValueError(f"imagined must be [E, R] with E = len(real_success) = len(states), got {imagined.shape}, "
                         f"{len(real_success)}, {len(states)}")
    replicas = imagined.shape[1]
    rates = imagined.mean(axis=1)
    auc = roc_auc(real_success, rates)
    wins, pairs, noise, between = 0.0, 0, 0.0, 0.0
    by_state: dict[int, list[int]] = defaultdict(list)
    for index, state in enumerate(states.tolist()):
        by_state[state].append(index)
    for members in by_state.values():
        members = np.array(members)
        successes, failures = rates[members[real_success[members]]], rates[members[~real_success[members]]]
        if len(successes) and len(failures):
            wins += float((successes[:, None] > failures[None, :]).sum() + 0.5 * (successes[:, None] == failures[None, :]).sum())
            pairs += len(successes) * len(failures)
        if len(members) > 1 and replicas > 1:
            # Unbiased: within-episode (noise) variance, and the episodes' rate variance minus the noise it carries.
            within = rates[members] * (1 - rates[members]) * replicas / (replicas - 1)
            noise += float(within.mean())
            between += max(0.0, float(rates[members].var(ddof=1)) - float(within.mean()) / replicas)
    return {
        "episodes": int(len(rates)),
        "replicas": int(replicas),
        "real_success": round(float(real_success.mean()), 4),
        "imagined_success": round(float(rates.mean()), 4),
        "imagined_given_real_success": None if not real_success.any() else round(float(rates[real_success].mean()), 4),
        "imagined_given_real_failure": None if real_success.all() else round(float(rates[~real_success].mean()), 4),
        "episode_auc": None if np.isnan(auc) else round(auc, 4),
        "episodes_with_mixed_replicas": int(((rates > 0) & (rates < 1)).sum()),
        "within_state_pairs": pairs,
        "within_state": None if pairs == 0 else round(wins / pairs, 4),
        "noise_share": None if noise + between == 0 else round(noise / (noise + between), 4),
    }


def replay(env, episodes, replicas: int, seed: int) -> np.ndarray:
    """Imagined success ``[E, replicas]`` of each recorded episode replayed open loop ``replicas`` times."""
    k, horizon = env.chunk_size, env.max_episode_steps
    jobs = [(e, r) for e in range(len(episodes)) for r in range(replicas)]
    imagined = np.zeros((len(episodes), replicas), bool)
    batch = env.num_envs
    for round_index, start in enumerate(range(0, len(jobs), batch)):
        chunk_jobs = jobs[start : start + batch]
        ids = [e for e, _ in chunk_jobs] + [chunk_jobs[0][0]] * (batch - len(chunk_jobs))  # pad the last batch
        env.reset(ids=ids, seed=seed + round_index)
        actions = np.zeros((batch, -(-horizon // k) * k, env.action_dim), np.float32)
        for row, (e, _) in enumerate(chunk_jobs):
            recorded = episodes[e].actions[:horizon]
            actions[row, : len(recorded)] = recorded
        for c in range(actions.shape[1] // k):
            step = env.chunk_step(actions[:, c * k : (c + 1) * k])
            if step.info["num_active"] == 0:
                break
        success = step.info["success"]
        for row, (e, r) in enumerate(chunk_jobs):
            imagined[e, r] = bool(success[row])
    return imagined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="an RL run (its config.yaml gives env.train)")
    parser.add_argument("--episodes", type=Path, required=True, help="a directory of recorded real episodes")
    parser.add_argument("--replicas", type=int, default=4, help="world-model replays of each episode")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.replicas < 1:
        parser.error("--replicas must be >= 1")

    import torch
    from wm_policy_calibration import run_config

    from rlinf_wm.data.trajectories import load_episodes
    from rlinf_wm.envs import make_env

    env_cfg = dict(run_config(args.run_dir)["env"]["train"])
    torch.set_num_threads(args.threads)
    episodes = load_episodes(args.episodes)
    env_cfg.update(num_envs=args.num_envs, initial_states_path=str(args.episodes))  # one state per recorded episode
    env = make_env(env_cfg.pop("env_type"), **env_cfg)
    started = time.perf_counter()
    imagined = replay(env, episodes, args.replicas, args.seed)
    states = np.array([int(ep.attrs.get("task_id", -1)) for ep in episodes])
    report = {"run_dir": str(args.run_dir), "episodes_dir": str(args.episodes),
              "success_consecutive": env.success_consecutive, "reward_threshold": env.reward_threshold,
              "imagined_seconds": round(time.perf_counter() - started, 1),
              **discrimination(imagined, np.array([ep.success for ep in episodes]), states)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
