"""Does the world model judge policies like the real simulator? Imagined vs real success rates, paired.

Protocol (the world model sees no state vector, so the scripted expert cannot run inside it):

1. For reset ids 0..N-1 (Meta-World ML1 train tasks: same object and goal positions in every process) each policy
   runs closed-loop in a render-free Meta-World env and its action sequence is recorded: the scripted expert,
   the expert with heavy Gaussian action noise, and random actions (held for a few steps, as in collection).
   Recording stops at success or after ``--horizon`` steps.
2. Every recorded sequence is replayed open-loop, in chunks of the world model's K, in BOTH
   * the real simulator (``MetaWorldEnv``, 64x64): Meta-World is deterministic, so this reproduces the recorded
     outcome (checked and reported), and renders the frame after each chunk; and
   * the world model (``WorldModelEnv``) started from the real reset frame of the same id.
   Steps after a recorded episode's end are zero actions (a zero action holds the arm still; training pads
   episode ends the same way). Both sides run ``--horizon`` steps and report success within it.
3. Per policy: real and imagined success rates and their gap (target: within 5 percentage points), per-episode
   agreement, and the reward model's false-success rate - imagined successes among episodes that really failed,
   and, on real frames, the fraction of really-failed episodes in which the reward model flags a chunk-end frame.

Same initial states and same actions on both sides, so the gap measures the world model (DiT + reward model), not
the policy's closed-loop reaction to imagined frames.

    .venv/bin/python benchmarks/wm_calibration.py [--world-model-dir outputs/drawer-open-v3/world_model]
        [--episodes 20] [--horizon 150] [--noise-std 1.0] [--num-steps N] [--threads T]

Without a trained world model it runs on randomly initialised models of the default config (to check the script;
its numbers then mean nothing). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rlinf_wm.data.initial_states import InitialStates  # noqa: E402
from rlinf_wm.envs.experts import ExpertPolicy, RandomActions  # noqa: E402
from rlinf_wm.envs.metaworld_env import MetaWorldEnv, _benchmark  # noqa: E402
from rlinf_wm.envs.world_model_env import WorldModelEnv  # noqa: E402

TASK = "drawer-open-v3"
POLICIES = ("expert", "noisy_expert", "random")


def record_actions(policy: str, reset_id: int, horizon: int, noise_std: float, seed: int) -> tuple[np.ndarray, bool]:
    """Closed-loop episode in a render-free Meta-World env: (actions [T, 4], success)."""
    benchmark = _benchmark(TASK)
    env = benchmark.train_classes[TASK]()
    env.max_path_length = horizon + 1
    env.set_task(benchmark.train_tasks[reset_id % len(benchmark.train_tasks)])
    rng = np.random.default_rng(seed)
    expert = ExpertPolicy(TASK, noise_std if policy == "noisy_expert" else 0.0, rng)
    random_actions = RandomActions(rng)
    state, _ = env.reset()
    actions, success = [], False
    for _ in range(horizon):
        state = np.array(state, np.float64)
        state[-3:] = env._get_pos_goal()  # ML1 hides the goal; the expert needs it (as MetaWorldEnv.raw_states)
        action = random_actions.next() if policy == "random" else expert.act(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _, _, _, info = env.step(action)
        actions.append(action)
        if info["success"]:
            success = True
            break
    env.close()
    return np.stack(actions).astype(np.float32), success


def padded_chunks(sequences: list[np.ndarray], horizon: int, chunk: int) -> np.ndarray:
    """[N, ceil(horizon / K), K, 4] with zero actions after each sequence's end."""
    num_chunks = -(-horizon // chunk)
    out = np.zeros((len(sequences), num_chunks * chunk, 4), np.float32)
    for i, actions in enumerate(sequences):
        out[i, : len(actions)] = actions
    return out.reshape(len(sequences), num_chunks, chunk, 4)


def run_real(reset_ids: np.ndarray, chunks: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Open-loop replay in MetaWorldEnv: (success [N], success step [N] or -1, chunk-end frames per episode)."""
    success, steps, frames = [], [], []
    with MetaWorldEnv(TASK, num_envs=1, max_episode_steps=horizon) as env:
        for reset_id, episode in zip(reset_ids.tolist(), chunks):
            obs = env.reset(ids=[reset_id])
            seen = [obs.images[0]]
            for actions in episode:
                step = env.chunk_step(actions[None])
                seen.append(step.obs.images[0])
                if step.done[0]:
                    break
            success.append(bool(step.info["success"][0]))
            steps.append(int(step.info["episode_length"][0]) - 1 if success[-1] else -1)
            frames.append(np.stack(seen))
    return np.array(success), np.array(steps), frames


def run_imagined(env: WorldModelEnv, reset_ids: np.ndarray, chunks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same chunks in the world model: (success [N], success step [N] or -1)."""
    env.reset(ids=reset_ids, seed=seed)
    for c in range(chunks.shape[1]):
        step = env.chunk_step(chunks[:, c])
        if step.done.all():
            break
    success = np.asarray(step.info["success"], bool)
    return success, np.where(success, step.info["episode_length"] - 1, -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model-dir", default=f"outputs/{TASK}/world_model")
    parser.add_argument("--episodes", type=int, default=20, help="reset ids 0..N-1, each run by every policy")
    parser.add_argument("--horizon", type=int, default=150)
    parser.add_argument("--noise-std", type=float, default=1.0, help="the noisy expert's Gaussian action noise")
    parser.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: as trained)")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--reward-frames", choices=["last", "all"], default="last")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    reset_ids = np.arange(args.episodes)
    recorded = {p: [record_actions(p, int(i), args.horizon, args.noise_std, args.seed * 1000 + int(i)) for i in reset_ids]
                for p in POLICIES}
    print(f"recorded {len(POLICIES)} x {args.episodes} episodes in {time.perf_counter() - started:.0f} s", flush=True)

    wm_dir = Path(args.world_model_dir)
    trained = (wm_dir / "world_model.json").is_file()
    with MetaWorldEnv(TASK, num_envs=1) as real:
        reset_frames = np.stack([real.reset(ids=[int(i)]).images[0] for i in reset_ids])
        instruction = real.instruction
    tmp = tempfile.TemporaryDirectory()
    if not trained:
        from wm_env_throughput import random_world_model

        wm_dir = random_world_model(Path(tmp.name) / "world_model", reset_frames, instruction)
    states_path = Path(tmp.name) / "calibration_states.hdf5"
    InitialStates.from_frames(reset_frames, [instruction] * len(reset_ids), reset_ids=reset_ids).save(states_path)
    sampler = {key: value for key, value in (("num_steps", args.num_steps), ("guidance", args.guidance)) if value is not None}
    env = WorldModelEnv(str(wm_dir), num_envs=args.episodes, initial_states_path=str(states_path),
                        max_episode_steps=args.horizon, sampler=sampler, reward_frames=args.reward_frames,
                        batch_size=args.episodes, seed=args.seed)

    results = {"world_model": "trained" if trained else "random default config (numbers meaningless)",
               "episodes_per_policy": args.episodes, "horizon": args.horizon, "noise_std": args.noise_std,
               "chunk_size": env.chunk_size, "solver": env.sampler.solver, "num_steps": env.sampler.num_steps,
               "guidance": env.sampler.guidance, "reward_frames": args.reward_frames, "policies": {}}
    for policy in POLICIES:
        sequences = [actions for actions, _ in recorded[policy]]
        recorded_success = np.array([s for _, s in recorded[policy]])
        chunks = padded_chunks(sequences, args.horizon, env.chunk_size)
        t0 = time.perf_counter()
        real_success, real_steps, real_frames = run_real(reset_ids, chunks, args.horizon)
        t1 = time.perf_counter()
        imagined_success, imagined_steps = run_imagined(env, reset_ids, chunks, args.seed)
        t2 = time.perf_counter()
        # the reward model alone, on the real chunk-end frames of really-failed episodes
        failed = np.flatnonzero(~real_success)
        flagged = [bool((env.reward_model.predict_proba(torch.from_numpy(real_frames[i][1:])) >= env.reward_threshold).any())
                   for i in failed] if env.reward_model.num_frames == 1 else []
        both = real_success & imagined_success
        entry = {
            "real_success_rate": float(real_success.mean()),
            "imagined_success_rate": float(imagined_success.mean()),
            "gap_percentage_points": float(100 * (imagined_success.mean() - real_success.mean())),
            "agreement": float((real_success == imagined_success).mean()),
            "imagined_false_success_rate": float(imagined_success[failed].mean()) if len(failed) else None,
            "imagined_missed_success_rate": float((~imagined_success[real_success]).mean()) if real_success.any() else None,
            "reward_model_false_success_on_real_frames": float(np.mean(flagged)) if flagged else None,
            "mean_abs_success_step_difference": float(np.abs(real_steps[both] - imagined_steps[both]).mean()) if both.any() else None,
            "replay_reproduces_recording": float((real_success == recorded_success).mean()),
            "real_seconds": t1 - t0,
            "imagined_seconds": t2 - t1,
        }
        results["policies"][policy] = entry
        print(f"{policy:13s} real {entry['real_success_rate']:.2f}  imagined {entry['imagined_success_rate']:.2f}  "
              f"gap {entry['gap_percentage_points']:+.0f} pp  agreement {entry['agreement']:.2f}  "
              f"false-success {entry['imagined_false_success_rate']}", flush=True)
    gaps = [abs(e["gap_percentage_points"]) for e in results["policies"].values()]
    results["max_abs_gap_percentage_points"] = max(gaps)
    results["within_5pp"] = max(gaps) <= 5.0
    results["wall_seconds"] = time.perf_counter() - started
    tmp.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
