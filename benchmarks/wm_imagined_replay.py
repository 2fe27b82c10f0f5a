"""Are a policy's imagined successes real? Its imagined episodes' actions, replayed in the real simulator.

GRPO in the world model reinforces the action sequences the world model calls successes. This benchmark runs a
policy closed loop in the world model from Meta-World's real initial states (reset ids 0..N-1, the world model
conditioned on each state's real reset frame), records every imagined episode's actions, and replays them open
loop in the real simulator from the same state (Meta-World is deterministic per reset id). The same policy also
runs closed loop in the real simulator from the same states, at the same temperature. Per policy:

* ``imagined``: closed-loop success in the world model: what RL is rewarded by;
* ``replayed``: the same action sequences in the real simulator, success within the chunks the imagined episode
  ran: are the actions the world model rewarded really successful?
* ``real``: closed-loop success in the real simulator: what the policy achieves;

so ``imagined - real = (imagined - replayed) + (replayed - real)``: the world model's error on the policy's own
actions, plus the difference between acting on imagined and on real frames. An imagined success whose replay
fails is attributed to the reward model when its success rule (threshold, chunk-end frames in a row) also fires
on the *real* replay frames, and to the DiT otherwise (it generated a success the actions do not cause). Frame
PSNR of imagined against replayed chunk-end frames, per chunk index, shows where the two part. With ``--resample N``
every imagined episode's actions run open loop in the world model N more times with other sampler noise: is a false
success the DiT's belief about those actions, or a noise draw that a rule over several draws would filter? With
``--real-through-tokenizer`` the policy's real closed loop sees every frame through the world model's tokenizer
(encode, decode), as reconstructed frames look: does ``replayed - real`` come from reconstruction or from what the
DiT generates? With ``--save-replays DIR`` every real replay is written as world-model training data (kind
``imagined_replay``): the real outcome of the action sequences the policy was rewarded for, counterexamples
to the world model's false successes included, for a refit (``extra_data_dirs``). With ``--ensemble DIR...``
the world model runs those world models' DiTs beside its own (the env's ``ensemble_world_model_dirs``, never halting)
and the report says whether their disagreement tells false imagined successes from true ones: its AUC, and how many
of each an ``uncertainty_threshold`` at quantiles of the chunks' disagreement would halt (exactly: a halt ends the
same rollout). When the run's env has a state model, the report says the same of its members' spread on the object
(``state_spread``, the env's ``state_uncertainty_threshold``).

    .venv/bin/python benchmarks/wm_imagined_replay.py --run-dir outputs/drawer-open-v3/rl_grpo_wm \
        --policy outputs/drawer-open-v3/sft/model outputs/drawer-open-v3/rl_grpo_wm/final/model \
        [--states 50] [--episodes-per-state 1] [--temperature 4.0] [--resample N] [--save-frames DIR] [--threads 2]
        [--dtype auto|float32|bfloat16] [--real-through-tokenizer] [--save-replays DIR] [--ensemble DIR ... [--disagreement mean|sample]]

The world-model env is the RL run's ``env.train`` (its ``config.yaml``), the real env its ``env.eval``. Prints one
JSON object as its last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from wm_calibration import imagined_outcome, padded_chunks, psnr, run_imagined, side_by_side  # noqa: E402
from wm_policy_calibration import run_config  # noqa: E402


DISAGREEMENTS = ("disagreement", "state_spread")  # info keys: a DiT ensemble's, the state model's members'


class ThroughTokenizer:
    """A chunk env whose observed frames are the tokenizer's reconstructions of the real ones."""

    def __init__(self, env, tokenizer) -> None:
        self.env, self.tokenizer = env, tokenizer

    def __getattr__(self, name):
        return getattr(self.env, name)

    def _reconstruct(self, obs):
        import torch

        with torch.no_grad():
            frames = self.tokenizer.decode_to_uint8(self.tokenizer.encode(torch.from_numpy(obs.images)[:, None]))
        return dataclasses.replace(obs, images=np.ascontiguousarray(frames[:, 0].cpu().numpy()))

    def reset(self, *args, **kwargs):
        return self._reconstruct(self.env.reset(*args, **kwargs))

    def chunk_step(self, actions):
        step = self.env.chunk_step(actions)
        return dataclasses.replace(step, obs=self._reconstruct(step.obs))


def imagined_episodes(env, policy, starts: list[int], seed: int, temperature: float) -> list[dict]:
    """The policy closed loop in the world model: per episode its action chunks [C, K, A], chunk-end frames
    [C + 1, H, W, 3] (the reset frame first), success and each chunk's disagreement [C]: of an ensemble's DiTs
    (``disagreement``) and of the state model's members (``state_spread``); NaN where the env has none."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batch, episodes = env.num_envs, []
    max_chunks = math.ceil(env.max_episode_steps / env.chunk_size) + 2
    for round_index, begin in enumerate(range(0, len(starts), batch)):
        ids = starts[begin : begin + batch]
        used = len(ids)
        ids = ids + [ids[-1]] * (batch - used)  # a short last round: spare envs repeat a start, results dropped
        obs = env.reset(ids=np.asarray(ids), seed=seed + round_index)
        frames, actions = [obs.images], []
        spread = {key: [] for key in DISAGREEMENTS}
        done, chunks_run = np.zeros(batch, bool), np.zeros(batch, np.int64)
        for _ in range(max_chunks):
            if done.all():
                break
            chosen = np.asarray(policy.act(obs, deterministic=False, temperature=temperature, generator=generator).actions)
            step = env.chunk_step(chosen)
            chunks_run += ~done
            done |= (step.terminated | step.truncated).any(axis=1)
            actions.append(chosen)
            frames.append(step.obs.images)
            for key, values in spread.items():
                values.append(step.info.get(key, np.full(batch, np.nan, np.float32)))
            obs = step.obs
        actions, frames = np.stack(actions, 1), np.stack(frames, 1)
        spread = {key: np.stack(values, 1) for key, values in spread.items()}
        for b in range(used):
            n = int(chunks_run[b])
            episodes.append({"actions": actions[b, :n], "frames": frames[b, : n + 1],
                             "success": bool(step.info["success"][b]),
                             **{key: values[b, :n] for key, values in spread.items()}})
    return episodes


def replay(env, reset_ids: list[int], episodes: list[dict], record: bool = False) -> list[dict]:
    """Each episode's actions open loop in the real env from its reset id: success within the chunks the episode
    ran (a real success in the last chunk counts, as the imagined one did) and the chunk-end frames. With
    ``record`` (the env must render every step) also the replay as an :class:`Episode` under ``"episode"``
    (kind ``imagined_replay``): the real outcome of actions the world model was asked about, as training data."""
    from rlinf_wm.workers.eval_worker import append_steps, as_episode

    batch, out = env.num_envs, []
    for begin in range(0, len(episodes), batch):
        group = episodes[begin : begin + batch]
        ids = reset_ids[begin : begin + batch]
        ids = ids + [ids[-1]] * (batch - len(group))
        obs = env.reset(ids=np.asarray(ids))
        lengths = np.array([len(e["actions"]) for e in group])
        chunk_shape = group[0]["actions"].shape[1:]
        success = np.zeros(len(group), bool)
        frames = [[obs.images[b]] for b in range(len(group))]
        steps = [[obs.images[b]] for b in range(len(group))], [[] for _ in group], [[] for _ in group]
        ended = np.zeros(len(group), bool)
        for c in range(int(lengths.max())):
            chunk = np.zeros((batch, *chunk_shape), np.float32)  # zero actions: the arm holds still
            for b, episode in enumerate(group):
                if c < lengths[b]:
                    chunk[b] = episode["actions"][c]
            step = env.chunk_step(chunk)
            running = c < lengths
            if record:
                stops = (step.terminated | step.truncated)[: len(group)]
                first_stop = np.where(stops.any(1), stops.argmax(1) + 1, stops.shape[1])
                append_steps(steps, step, chunk, ended | ~running, first_stop)
                ended |= stops.any(1)
            success |= np.asarray(step.info["success"][: len(group)], bool) & running
            for b in np.flatnonzero(running):
                frames[b].append(step.obs.images[b])
        for b in range(len(group)):
            out.append({"success": bool(success[b]), "frames": np.stack(frames[b])})
            if record:
                out[-1]["episode"] = as_episode(env, [part[b] for part in steps], bool(success[b]), ids[b], -1,
                                                obs.instructions[b], kind="imagined_replay")
    return out


def attribute(imagined: np.ndarray, replayed: np.ndarray, reward_fires_on_real: np.ndarray) -> dict:
    """Split the imagined successes whose replay fails between the reward model (its rule fires on the real replay
    frames too) and the DiT (it does not: the generated frames show a success the real ones do not)."""
    false = imagined & ~replayed
    return {"imagined_successes": int(imagined.sum()), "false_imagined_successes": int(false.sum()),
            "false_by_reward_model": int((false & reward_fires_on_real).sum()),
            "false_by_dit": int((false & ~reward_fires_on_real).sum()),
            # the other way round: a replay succeeds that the world model did not call
            "missed_imagined_successes": int((~imagined & replayed).sum())}


def resampled_successes(env, reset_ids: list[int], episodes: list[dict], seeds: list[int]) -> np.ndarray:
    """Each episode's actions open loop in the world model again, with other sampler noise: bool [N, len(seeds)],
    success under the env's rule within the chunks the episode ran. Tells whether a false success is the DiT's
    systematic belief about these actions or one unlucky noise draw (which a rule over several draws would filter)."""
    batch, chunk = env.num_envs, env.chunk_size
    lengths = np.array([len(e["actions"]) for e in episodes])
    chunks = padded_chunks([e["actions"].reshape(-1, e["actions"].shape[-1]) for e in episodes],
                           int(lengths.max()) * chunk, chunk)
    out = np.zeros((len(episodes), len(seeds)), bool)
    for begin in range(0, len(episodes), batch):
        rows = np.arange(begin, min(begin + batch, len(episodes)))
        padded = np.concatenate([rows, np.full(batch - len(rows), rows[-1])])  # a short last batch repeats a row
        ids = np.asarray(reset_ids)[padded]
        for j, seed in enumerate(seeds):
            probs, _ = run_imagined(env, ids, chunks[padded], seed)
            # scores after an episode's last chunk never count
            ran = np.arange(probs.shape[1]) < lengths[rows, None]
            out[rows, j], _, _ = imagined_outcome(np.where(ran, probs[: len(rows)], -np.inf), env.reward_threshold,
                                                  env.success_consecutive, chunk)
    return out


def auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties half: the ROC AUC of a score separating the two."""
    if not len(positives) or not len(negatives):
        return None
    greater = (positives[:, None] > negatives[None]).mean()
    ties = (positives[:, None] == negatives[None]).mean()
    return round(float(greater + ties / 2), 4)


def disagreement_report(imagined: list[dict], i_success: np.ndarray, r_success: np.ndarray, key: str) -> dict:
    """Does a disagreement (``key``: the DiT ensemble's, or the state model's members') single out the false imagined
    successes? Per episode its largest chunk disagreement; halting at a threshold (the env's
    ``uncertainty_threshold`` or ``state_uncertainty_threshold``) ends exactly the episodes whose largest one exceeds
    it."""
    if not any(np.isfinite(e[key]).any() for e in imagined):
        return {}
    largest = np.array([float(np.nanmax(e[key])) for e in imagined])
    chunks = np.concatenate([e[key] for e in imagined])
    at_last = np.array([float(e[key][-1]) for e in imagined])  # a success's chunk is its last
    true, false = i_success & r_success, i_success & ~r_success
    halts = {}
    for q in (50, 75, 90, 95, 99):
        threshold = float(np.percentile(chunks, q))
        kept = largest <= threshold
        halts[f"p{q}"] = {"threshold": round(threshold, 5), "true_successes_kept": int((true & kept).sum()),
                          "false_successes_kept": int((false & kept).sum()), "episodes_kept": int(kept.sum())}
    return {key: {
        "chunk_quantiles": {f"p{q}": round(float(np.percentile(chunks, q)), 5) for q in (50, 90, 99)},
        "largest_mean": {"true_successes": rate(largest[true]) if true.any() else None,
                         "false_successes": rate(largest[false]) if false.any() else None,
                         "failures": rate(largest[~i_success]) if (~i_success).any() else None},
        # the largest disagreement as a detector of false among imagined successes (0.5: no better than chance)
        "auc_false_vs_true_successes": auc(largest[false], largest[true]),
        # the disagreement of the success chunk itself: would a rule that only checks successes tell them apart?
        "auc_at_success_chunk": auc(at_last[false], at_last[true]),
        "halted_at_chunk_quantile": halts,
    }}


def rate(x) -> float:
    return round(float(np.mean(x)), 4)


def resample_report(wm_env, reset_ids, imagined, i_success, r_success, args) -> dict:
    if not args.resample:
        return {}
    seeds = [args.seed + 1000 * (j + 1) for j in range(args.resample)]
    again = resampled_successes(wm_env, reset_ids, imagined, seeds)
    true, false = i_success & r_success, i_success & ~r_success
    return {"resample_seeds": len(seeds),
            # the share of the other noise draws that repeat the success, for real and for false imagined successes
            "resampled_success_of_true_successes": rate(again[true]) if true.any() else None,
            "resampled_success_of_false_successes": rate(again[false]) if false.any() else None,
            # successes that every other draw repeats too: what a rule "success under all draws" would keep
            "kept_by_all_draws": {"true": int(again[true].all(1).sum()), "false": int(again[false].all(1).sum())}}


def evaluate_policy(policy_dir: Path, wm_env, real_env, replay_env, reset_ids: list[int],
                    args) -> tuple[dict, list, list]:
    """``replay_env``: the real env the imagined actions replay in (it renders every step when they are saved)."""
    import torch

    from rlinf_wm.models.policy import load_policy
    from rlinf_wm.workers.eval_worker import run_episodes

    policy = load_policy(policy_dir)
    t0 = time.perf_counter()
    imagined = imagined_episodes(wm_env, policy, reset_ids, args.seed, args.temperature)
    t1 = time.perf_counter()
    replayed = replay(replay_env, reset_ids, imagined, record=args.save_replays is not None)
    t2 = time.perf_counter()
    closed_loop_env = ThroughTokenizer(real_env, wm_env.tokenizer) if args.real_through_tokenizer else real_env
    real = run_episodes(closed_loop_env, policy, reset_ids, seed=args.seed, deterministic=False, temperature=args.temperature)
    t3 = time.perf_counter()

    # The env's own success rule, applied by its reward model to the real replay's chunk-end frames.
    reward_model, threshold = wm_env.reward_model, wm_env.reward_threshold
    if reward_model.num_frames != 1:
        raise SystemExit("the reward model scores clips of several frames; this benchmark scores single frames")
    fires = []
    for episode in replayed:
        with torch.no_grad():
            probs = reward_model.predict_proba(torch.from_numpy(episode["frames"][1:])).numpy()
        fires.append(bool(imagined_outcome(probs[None], threshold, wm_env.success_consecutive, 1)[0][0]))
    i_success = np.array([e["success"] for e in imagined])
    r_success = np.array([e["success"] for e in replayed])
    c_success = np.array([bool(e["success"]) for e in real["episodes"]])
    # imagined vs replayed frames at each chunk index both episodes reached
    by_chunk: dict[int, list[float]] = {}
    for im, re in zip(imagined, replayed):
        for c in range(1, min(len(im["frames"]), len(re["frames"]))):
            by_chunk.setdefault(c, []).append(psnr(im["frames"][c], re["frames"][c]))
    marks = [c for c in (1, 5, 10, 20, 30) if c in by_chunk]
    report = {
        "policy": str(policy_dir), "episodes": len(reset_ids),
        "imagined_success": rate(i_success), "replayed_success": rate(r_success), "real_success": rate(c_success),
        "imagined_minus_real_pp": round(100 * (i_success.mean() - c_success.mean()), 1),
        "world_model_error_pp": round(100 * (i_success.mean() - r_success.mean()), 1),  # imagined - replayed
        "closed_loop_difference_pp": round(100 * (r_success.mean() - c_success.mean()), 1),  # replayed - real
        **attribute(i_success, r_success, np.array(fires)),
        "precision_of_imagined_success": rate(r_success[i_success]) if i_success.any() else None,
        "frame_psnr_db_by_chunk": {c: round(float(np.mean(by_chunk[c])), 2) for c in marks},
        **resample_report(wm_env, reset_ids, imagined, i_success, r_success, args),
        **disagreement_report(imagined, i_success, r_success, "disagreement"),
        **disagreement_report(imagined, i_success, r_success, "state_spread"),
        "seconds": {"imagined": round(t1 - t0, 1), "replay": round(t2 - t1, 1), "real": round(t3 - t2, 1)},
    }
    return report, imagined, replayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="an RL run (its config.yaml gives both envs)")
    parser.add_argument("--policy", type=Path, nargs="+", required=True, help="save_pretrained policy directories")
    parser.add_argument("--states", type=int, default=50, help="real reset ids 0..N-1")
    parser.add_argument("--episodes-per-state", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=None, help="default: the run's policy.temperature")
    parser.add_argument("--num-envs", type=int, default=50, help="imagined envs per sampler run")
    parser.add_argument("--real-envs", type=int, default=10, help="real simulator envs stepped together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, help="the world-model env's dtype (default: the run's env.train.dtype)")
    parser.add_argument("--resample", type=int, default=0, metavar="N",
                        help="replay each imagined episode's actions in the world model N more times with other noise")
    parser.add_argument("--save-frames", type=Path, default=None, metavar="DIR",
                        help="write <policy n>_false_successes.png: replayed over imagined frames of up to 4 of them")
    parser.add_argument("--save-replays", type=Path, default=None, metavar="DIR",
                        help="write every real replay (a frame per step) to DIR/policy<n>.hdf5: world-model data")
    parser.add_argument("--ensemble", type=Path, nargs="+", default=None, metavar="DIR",
                        help="world models whose DiTs run beside the env's (ensemble_world_model_dirs): is their "
                             "disagreement high on the false imagined successes?")
    parser.add_argument("--disagreement", choices=("mean", "sample"), default="mean",
                        help="what the ensemble compares (the env's disagreement setting)")
    parser.add_argument("--real-through-tokenizer", action="store_true",
                        help="the real closed loop observes the world model tokenizer's reconstructions of its frames")
    args = parser.parse_args()
    for name in ("states", "episodes_per_state", "num_envs", "real_envs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.resample < 0:
        parser.error("--resample must be >= 0")

    import torch

    from rlinf_wm.data.initial_states import InitialStates
    from rlinf_wm.data.trajectories import write_episodes
    from rlinf_wm.envs import make_env

    torch.set_num_threads(args.threads)
    config = run_config(args.run_dir)
    if args.temperature is None:
        args.temperature = float(config["policy"]["temperature"])
    episodes = args.states * args.episodes_per_state
    real_cfg = dict(config["env"]["eval"])
    real_type = real_cfg.pop("env_type")
    with make_env(real_type, **{**real_cfg, "num_envs": 1}) as single:
        resets = [single.reset(ids=[s]) for s in range(args.states)]
    reset_frames, instruction = np.stack([r.images[0] for r in resets]), resets[0].instructions[0]
    real_env = make_env(real_type, **{**real_cfg, "num_envs": min(args.real_envs, episodes)})
    replay_env = real_env
    if args.save_replays is not None:  # a frame per step, as collected trajectories have
        real_cfg["render_every_step"] = True
        replay_env = make_env(real_type, **{**real_cfg, "num_envs": min(args.real_envs, episodes)})
    reset_ids = [s for s in range(args.states) for _ in range(args.episodes_per_state)]
    with tempfile.TemporaryDirectory() as tmp:
        # the world model starts from each state's real reset frame: the same scene on both sides
        states_path = Path(tmp) / "initial_states.hdf5"
        InitialStates.from_frames(reset_frames, [instruction] * args.states, reset_ids=np.arange(args.states)).save(states_path)
        wm_cfg = {**config["env"]["train"], "num_envs": min(args.num_envs, episodes), "initial_states_path": str(states_path)}
        if args.dtype is not None:
            wm_cfg["dtype"] = args.dtype
        if args.ensemble:
            wm_cfg["ensemble_world_model_dirs"] = [str(p) for p in args.ensemble]
            wm_cfg["disagreement"] = args.disagreement
        wm_cfg["uncertainty_threshold"] = wm_cfg["state_uncertainty_threshold"] = None  # measure, never halt
        wm_env = make_env(wm_cfg.pop("env_type"), **wm_cfg)
        reports = []
        for n, policy_dir in enumerate(args.policy):
            report, imagined, replayed = evaluate_policy(policy_dir, wm_env, real_env, replay_env, reset_ids, args)
            reports.append(report)
            print(f"{policy_dir}: imagined {report['imagined_success']:.2f} replayed {report['replayed_success']:.2f} "
                  f"real {report['real_success']:.2f}; false imagined successes {report['false_imagined_successes']} "
                  f"(reward model {report['false_by_reward_model']}, DiT {report['false_by_dit']})", flush=True)
            if args.save_replays is not None:
                path = write_episodes(args.save_replays / f"policy{n}.hdf5", [r["episode"] for r in replayed],
                                      env_args={"env": real_cfg, "policy_path": str(policy_dir)})
                report["replays_file"] = str(path)
            false = [i for i, (im, re) in enumerate(zip(imagined, replayed)) if im["success"] and not re["success"]][:4]
            if args.save_frames and false:
                import imageio.v3 as iio

                args.save_frames.mkdir(parents=True, exist_ok=True)
                # two rows per episode: the real replay over the imagined frames at the same chunks
                image = np.concatenate([side_by_side([replayed[i]["frames"]], imagined[i]["frames"][None], [0])
                                        for i in false], 0)
                iio.imwrite(args.save_frames / f"policy{n}_false_successes.png", image)
    real_env.close()
    if replay_env is not real_env:
        replay_env.close()
    print(json.dumps({"run_dir": str(args.run_dir), "temperature": args.temperature, "states": args.states,
                      "dtype": str(wm_env.dtype).removeprefix("torch."),
                      "episodes_per_state": args.episodes_per_state, "real_through_tokenizer": args.real_through_tokenizer,
                      "success_rule": {"threshold": wm_env.reward_threshold, "consecutive": wm_env.success_consecutive},
                      "policies": reports}))


if __name__ == "__main__":
    main()
