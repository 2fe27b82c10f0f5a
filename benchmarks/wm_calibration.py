"""Does the world model judge policies like the real simulator? Imagined vs real success rates, paired.

Protocol (the world model sees no state vector, so the scripted expert cannot run inside it):

1. For reset ids 0..N-1 (Meta-World ML1 train tasks: same object and goal positions in every process) each policy
   runs closed-loop in a render-free Meta-World env and its action sequence is recorded: the scripted expert,
   the expert with heavy Gaussian action noise, and random actions (held for a few steps, as in collection).
   Recording stops at success (or ``--steps-after-success`` steps later: an imagined episode goes on until the
   world model calls it, and a policy acting on after a borderline success opens the drawer further) or after
   ``--horizon`` steps. The real success rate counts the first success either way.
2. Every recorded sequence is replayed open-loop, in chunks of the world model's K, in BOTH
   * the real simulator (``MetaWorldEnv``, 64x64): Meta-World is deterministic, so this reproduces the recorded
     outcome (checked and reported), and renders the frame after each chunk; and
   * the world model (``WorldModelEnv``) started from the real reset frame of the same id.
   Steps after a recorded episode's end are zero actions (a zero action holds the arm still; training pads
   episode ends the same way). Both sides run ``--horizon`` steps and report success within it.
3. Per policy: real and imagined success rates and their gap (target: within 5 percentage points), per-episode
   agreement, and the reward model's false-success rate - imagined successes among episodes that really failed,
   and, on real frames, the fraction of really-failed episodes in which the reward model flags a chunk-end frame
   (and of really-successful ones in which it detects the success: a miss there is the reward model's, not the
   DiT's).
4. The imagined rollouts run to the horizon with every chunk-end frame scored, so other success rules
   (``--rules THRESHOLD:CONSECUTIVE``: that many chunk-end frames in a row at or above the threshold) are
   compared on the same rollouts. Which rule keeps false successes down is a property of the reward model
   on generated frames, and a false success ends an imagined episode that RL then reinforces.

Same initial states and same actions on both sides, so the gap measures the world model (DiT + reward model), not
the policy's closed-loop reaction to imagined frames.

    .venv/bin/python benchmarks/wm_calibration.py [--task drawer-open-v3] [--world-model-dir outputs/<task>/world_model]
        [--episodes 20] [--horizon 150] [--noise-std 1.0] [--num-steps N | --steps-sweep 1 2 4 10] [--threads T]
        [--distilled]

With --steps-sweep the imagined side runs once per solver step count, with the PSNR of imagined against real
chunk-end frames: quality against steps, to choose the fewest steps at equal quality.

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

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rlinf_wm.data.initial_states import InitialStates  # noqa: E402
from rlinf_wm.envs.experts import ExpertPolicy, RandomActions  # noqa: E402
from rlinf_wm.envs.metaworld_env import MetaWorldEnv, _benchmark  # noqa: E402
from rlinf_wm.envs.world_model_env import WorldModelEnv  # noqa: E402
from rlinf_wm.models.samplers import FlowSampler  # noqa: E402

TASK = "drawer-open-v3"  # the default; --task picks another Meta-World task
POLICIES = ("expert", "noisy_expert", "random")
NEVER = 2.0  # a success threshold no probability reaches


def record_actions(policy: str, reset_id: int, horizon: int, noise_std: float, seed: int,
                   steps_after_success: int = 0, task: str = TASK) -> tuple[np.ndarray, bool]:
    """Closed-loop episode in a render-free Meta-World env: (actions [T, 4], success). The policy goes on acting
    ``steps_after_success`` steps past success (within the horizon), as it would in an imagined episode that has
    not yet been judged a success."""
    benchmark = _benchmark(task)
    env = benchmark.train_classes[task]()
    env.max_path_length = horizon + 1
    env.set_task(benchmark.train_tasks[reset_id % len(benchmark.train_tasks)])
    rng = np.random.default_rng(seed)
    expert = ExpertPolicy(task, noise_std if policy == "noisy_expert" else 0.0, rng)
    random_actions = RandomActions(rng)
    state, _ = env.reset()
    actions, success, stop = [], False, horizon
    for t in range(horizon):
        if t >= stop:
            break
        state = np.array(state, np.float64)
        state[-3:] = env._get_pos_goal()  # ML1 hides the goal; the expert needs it (as MetaWorldEnv.raw_states)
        action = random_actions.next() if policy == "random" else expert.act(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, _, _, _, info = env.step(action)
        actions.append(action)
        if info["success"] and not success:
            success, stop = True, t + 1 + steps_after_success
    env.close()
    return np.stack(actions).astype(np.float32), success


def padded_chunks(sequences: list[np.ndarray], horizon: int, chunk: int) -> np.ndarray:
    """[N, ceil(horizon / K), K, 4] with zero actions after each sequence's end."""
    num_chunks = -(-horizon // chunk)
    out = np.zeros((len(sequences), num_chunks * chunk, 4), np.float32)
    for i, actions in enumerate(sequences):
        out[i, : len(actions)] = actions
    return out.reshape(len(sequences), num_chunks, chunk, 4)


def run_real(reset_ids: np.ndarray, chunks: np.ndarray, horizon: int, task: str = TASK) -> tuple[np.ndarray, np.ndarray, list]:
    """Open-loop replay in MetaWorldEnv: (success [N], success step [N] or -1, chunk-end frames per episode)."""
    success, steps, frames = [], [], []
    with MetaWorldEnv(task, num_envs=1, max_episode_steps=horizon) as env:
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


def run_imagined(env: WorldModelEnv, reset_ids: np.ndarray, chunks: np.ndarray, seed: int):
    """The same chunks in the world model, scored but never stopped: (success probability of each chunk's last
    frame [N, C], chunk-end frames [N, C+1, H, W, 3]). The env's threshold is set out of reach for the run, so any
    success rule can be applied afterwards to the same rollouts (see :func:`imagined_outcome`)."""
    threshold, env.reward_threshold = env.reward_threshold, NEVER
    try:
        obs = env.reset(ids=reset_ids, seed=seed)
        frames, probs = [obs.images], []
        for c in range(chunks.shape[1]):
            step = env.chunk_step(chunks[:, c])
            frames.append(step.obs.images)
            probs.append(step.info["success_prob"])
    finally:
        env.reward_threshold = threshold
    return np.stack(probs, 1), np.stack(frames, 1)


def imagined_outcome(probs: np.ndarray, threshold: float, consecutive: int, chunk: int):
    """Success as an env would call it: ``consecutive`` chunk-end frames in a row scored >= ``threshold``.
    Returns (success [N], step of success [N] or -1, chunks run [N])."""
    hits = probs >= threshold
    run = np.zeros(probs.shape[0], np.int64)
    first = np.full(probs.shape[0], -1)
    for c in range(probs.shape[1]):
        run = np.where(hits[:, c], run + 1, 0)
        first = np.where((first < 0) & (run >= consecutive), c, first)
    success = first >= 0
    chunks_run = np.where(success, first + 1, probs.shape[1])
    return success, np.where(success, chunks_run * chunk - 1, -1), chunks_run


def side_by_side(real_frames: list[np.ndarray], imagined: np.ndarray, episodes: list[int], columns: int = 8) -> np.ndarray:
    """An image with two rows per episode, real chunk-end frames over imagined ones at the same chunks, ``columns``
    chunks spread over the real episode: [2 * len(episodes) * H, columns * W, 3]."""
    rows = []
    for i in episodes:
        picks = np.linspace(0, len(real_frames[i]) - 1, columns).astype(int)
        rows.append(np.concatenate([real_frames[i][c] for c in picks], 1))
        rows.append(np.concatenate([imagined[i, c] for c in picks], 1))
    return np.concatenate(rows, 0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=TASK, help="a Meta-World task")
    parser.add_argument("--world-model-dir", default=None, help="default: outputs/<task>/world_model")
    parser.add_argument("--episodes", type=int, default=20, help="reset ids 0..N-1, each run by every policy")
    parser.add_argument("--horizon", type=int, default=150)
    parser.add_argument("--noise-std", type=float, default=1.0, help="the noisy expert's Gaussian action noise")
    parser.add_argument("--steps-after-success", type=int, default=0,
                        help="actions recorded past the real success (0: zero actions from it on, the arm holds still)")
    parser.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: as trained)")
    parser.add_argument("--steps-sweep", type=int, nargs="*", default=[],
                        help="run the imagined side once per solver step count (quality vs steps)")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="guide only solver steps with flow time in (LOW, HIGH] (default: as trained)")
    parser.add_argument("--distilled", action="store_true",
                        help="the world model's distilled student DiT and its sampler (stage=distill)")
    parser.add_argument("--reward-frames", choices=["last", "all"], default="last")
    parser.add_argument("--rules", nargs="*", default=["0.5:1", "0.8:1", "0.8:2", "0.95:2", "0.95:3"],
                        help="success rules THRESHOLD:CONSECUTIVE applied to the same imagined rollouts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-misses", default=None, metavar="DIR",
                        help="write <policy>_misses.png: real over imagined frames of up to 4 real successes missed")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    reset_ids = np.arange(args.episodes)
    recorded = {p: [record_actions(p, int(i), args.horizon, args.noise_std, args.seed * 1000 + int(i),
                                   args.steps_after_success, args.task) for i in reset_ids]
                for p in POLICIES}
    print(f"recorded {len(POLICIES)} x {args.episodes} episodes in {time.perf_counter() - started:.0f} s", flush=True)

    wm_dir = Path(args.world_model_dir or f"outputs/{args.task}/world_model")
    trained = (wm_dir / "world_model.json").is_file()
    with MetaWorldEnv(args.task, num_envs=1) as real:
        reset_frames = np.stack([real.reset(ids=[int(i)]).images[0] for i in reset_ids])
        instruction = real.instruction
    tmp = tempfile.TemporaryDirectory()
    if not trained:
        from wm_env_throughput import random_world_model

        wm_dir = random_world_model(Path(tmp.name) / "world_model", reset_frames, instruction)
    states_path = Path(tmp.name) / "calibration_states.hdf5"
    InitialStates.from_frames(reset_frames, [instruction] * len(reset_ids), reset_ids=reset_ids).save(states_path)
    sampler = {"guidance": args.guidance, "guidance_interval": args.guidance_interval}
    env = WorldModelEnv(str(wm_dir), num_envs=args.episodes, initial_states_path=str(states_path),
                        max_episode_steps=args.horizon, sampler=sampler, reward_frames=args.reward_frames,
                        batch_size=args.episodes, seed=args.seed, distilled=args.distilled)
    trained_steps = env.sampler.num_steps
    sweep = args.steps_sweep or [args.num_steps or trained_steps]

    real = {}
    for policy in POLICIES:
        chunks = padded_chunks([actions for actions, _ in recorded[policy]], args.horizon, env.chunk_size)
        t0 = time.perf_counter()
        success, steps, frames = run_real(reset_ids, chunks, args.horizon, args.task)
        real[policy] = {"chunks": chunks, "success": success, "steps": steps, "frames": frames,
                        "seconds": time.perf_counter() - t0,
                        "reproduced": float((success == np.array([s for _, s in recorded[policy]])).mean())}
    # The reward model alone on real chunk-end frames (independent of the DiT): the share of really-failed episodes
    # it flags, and of really-successful ones it detects (their last frame is the success frame).
    reward_only, reward_detects = {}, {}
    for policy in POLICIES:
        flagged = {}
        for outcome in (False, True):
            episodes = np.flatnonzero(real[policy]["success"] == outcome)
            if env.reward_model.num_frames == 1 and len(episodes):
                with torch.no_grad():
                    flagged[outcome] = float(np.mean([
                        bool((env.reward_model.predict_proba(torch.from_numpy(real[policy]["frames"][i][1:]))
                              >= env.reward_threshold).any()) for i in episodes]))
        reward_only[policy], reward_detects[policy] = flagged.get(False), flagged.get(True)

    results = {"task": args.task, "world_model": "trained" if trained else "random default config (numbers meaningless)",
               "world_model_dir": str(wm_dir) if trained else None,
               "episodes_per_policy": args.episodes, "horizon": args.horizon, "noise_std": args.noise_std,
               "steps_after_success": args.steps_after_success,
               "distilled": args.distilled, "chunk_size": env.chunk_size, "solver": env.sampler.solver,
               "trained_num_steps": trained_steps,
               "guidance": env.sampler.guidance, "guidance_interval": list(env.sampler.guidance_interval),
               "reward_frames": args.reward_frames,
               "real": {p: {"success_rate": float(real[p]["success"].mean()), "replay_reproduces_recording":
                            real[p]["reproduced"], "seconds": real[p]["seconds"],
                            "reward_model_false_success_on_real_frames": reward_only[p],
                            "reward_model_detects_success_on_real_frames": reward_detects[p]} for p in POLICIES},
               "by_num_steps": {}}
    for num_steps in sweep:
        env.sampler = FlowSampler(**{**vars(env.sampler), "num_steps": num_steps})
        by_policy, rules = {}, {}
        for policy in POLICIES:
            r = real[policy]
            t0 = time.perf_counter()
            probs, frames = run_imagined(env, reset_ids, r["chunks"], args.seed)
            seconds = time.perf_counter() - t0
            success, steps, chunks_run = imagined_outcome(probs, env.reward_threshold, 1, env.chunk_size)
            failed, both = ~r["success"], r["success"] & success
            # frame fidelity: imagined vs real chunk-end frames while both episodes were running
            pairs = [(frames[i, c], r["frames"][i][c]) for i in range(len(reset_ids))
                     for c in range(1, min(chunks_run[i] + 1, len(r["frames"][i])))]
            by_policy[policy] = {
                "real_success_rate": float(r["success"].mean()),
                "imagined_success_rate": float(success.mean()),
                "gap_percentage_points": float(100 * (success.mean() - r["success"].mean())),
                "agreement": float((r["success"] == success).mean()),
                "imagined_false_success_rate": float(success[failed].mean()) if failed.any() else None,
                "imagined_missed_success_rate": float((~success[r["success"]]).mean()) if r["success"].any() else None,
                # how close the misses came: their highest imagined success probability over the horizon
                "missed_max_prob_median": (float(np.median(probs[r["success"] & ~success].max(1)))
                                           if (r["success"] & ~success).any() else None),
                # real success steps of the detected and the missed episodes: are late successes lost to drift?
                "real_success_steps_detected": sorted(r["steps"][r["success"] & success].tolist()),
                "real_success_steps_missed": sorted(r["steps"][r["success"] & ~success].tolist()),
                "mean_abs_success_step_difference": (float(np.abs(r["steps"][both] - steps[both]).mean())
                                                     if both.any() else None),
                "frame_psnr_db": float(np.mean([psnr(a, b) for a, b in pairs])) if pairs else None,
                "imagined_seconds": seconds,
            }
            missed = np.flatnonzero(r["success"] & ~success)[:4].tolist()
            if args.save_misses and missed:
                Path(args.save_misses).mkdir(parents=True, exist_ok=True)
                iio.imwrite(Path(args.save_misses) / f"{policy}_misses.png", side_by_side(r["frames"], frames, missed))
            e = by_policy[policy]
            print(f"steps={num_steps:2d} {policy:13s} real {e['real_success_rate']:.2f} imagined "
                  f"{e['imagined_success_rate']:.2f} gap {e['gap_percentage_points']:+.0f} pp agreement "
                  f"{e['agreement']:.2f} false-success {e['imagined_false_success_rate']} psnr {e['frame_psnr_db']}",
                  flush=True)
            for rule in args.rules:
                threshold, consecutive = rule.split(":")
                ruled, _, _ = imagined_outcome(probs, float(threshold), int(consecutive), env.chunk_size)
                rules.setdefault(rule, {})[policy] = {
                    "imagined_success_rate": float(ruled.mean()),
                    "gap_percentage_points": float(100 * (ruled.mean() - r["success"].mean())),
                    "imagined_false_success_rate": float(ruled[failed].mean()) if failed.any() else None,
                }
        gaps = [abs(e["gap_percentage_points"]) for e in by_policy.values()]
        for rule, per_policy in rules.items():
            worst = max(abs(e["gap_percentage_points"]) for e in per_policy.values())
            per_policy["max_abs_gap_percentage_points"] = worst
            print(f"steps={num_steps:2d} rule {rule:7s} " + ", ".join(
                f"{p} {per_policy[p]['imagined_success_rate']:.2f}" for p in POLICIES) + f" | max gap {worst:.0f} pp")
        results["by_num_steps"][str(num_steps)] = {"policies": by_policy, "max_abs_gap_percentage_points": max(gaps),
                                                   "within_5pp": max(gaps) <= 5.0, "success_rules": rules}
    results["wall_seconds"] = time.perf_counter() - started
    tmp.cleanup()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
