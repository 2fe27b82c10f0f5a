"""Does the world model judge a *policy's* episodes as the real simulator does, initial state by initial state?

GRPO's advantage for an initial state is the spread of its group's outcomes, so what RL in the world model learns
from is the imagined success rate of each state. This benchmark runs a policy closed loop in the world model from
the initial states recorded at each real reset id (Meta-World's 50 states) and compares the imagined rate of every
state with its real rate, read from real-simulator evaluations of the same policy at the same temperature
(``eval_embodied_agent.py``'s ``summary.json``: one entry per episode with its ``initial_state``).

It reports the overall imagined and real rates, the per-state correlation, the imagined rate on states that never
succeed for real (false successes) and on states that always do (misses), and the per-state rates. The world
model env is built from an RL run's ``config.yaml`` (``env.train``), so it is exactly the env the policy trained in.

    .venv/bin/python benchmarks/wm_policy_calibration.py --run-dir outputs/drawer-open-v3/rl_grpo_wm \
        --policy outputs/drawer-open-v3/sft/model --real outputs/drawer-open-v3/eval_base/summary.json \
        [--real more/summary.json ...] [--episodes-per-state 4] [--temperature 4.0] [--threads 2]
        [--imagined-from an_earlier_report.json]   # its imagined counts, against other real evaluations

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


def real_rates(summary_paths: list[Path], temperature: float) -> dict[int, tuple[int, int]]:
    """(successes, episodes) per real initial state over the evaluations' episodes."""
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for path in summary_paths:
        summary = json.loads(path.read_text())
        if summary.get("deterministic") or abs(float(summary["temperature"]) - temperature) > 1e-9:
            raise SystemExit(f"{path}: evaluated with deterministic={summary.get('deterministic')} temperature="
                             f"{summary['temperature']}, not sampled at --temperature {temperature}")
        for episode in summary["episodes"]:
            entry = counts[int(episode["initial_state"])]
            entry[0] += int(episode["success"])
            entry[1] += 1
    return {state: (k, n) for state, (k, n) in counts.items()}


def world_model_starts(state_reset_ids: np.ndarray, real_states: list[int], per_state: int) -> tuple[list[int], list[int]]:
    """World-model initial-state indices for ``per_state`` episodes of each real state (cycling over the recordings
    of that state), and the real state of each episode."""
    starts, states = [], []
    for state in real_states:
        recorded = np.flatnonzero(state_reset_ids == state)
        if len(recorded) == 0:
            continue
        starts += [int(recorded[i % len(recorded)]) for i in range(per_state)]
        states += [state] * per_state
    return starts, states


def run_config(run_dir: Path) -> dict:
    """An RL run's resolved ``config.yaml`` (its ``env.train`` is the world-model env the policy trained in)."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"--run-dir {run_dir}: no config.yaml (an RL run's log directory holds one)")
    return yaml.safe_load(path.read_text())


def compare(imagined: dict[int, tuple[int, int]], real: dict[int, tuple[int, int]]) -> dict:
    """Imagined against real success, overall and per state (only states both sides have)."""
    states = sorted(set(imagined) & set(real))
    if not states:
        raise ValueError("no initial state has both imagined and real episodes")
    im = np.array([imagined[s][0] / imagined[s][1] for s in states])
    re = np.array([real[s][0] / real[s][1] for s in states])
    never, always = re == 0.0, re == 1.0
    correlation = float(np.corrcoef(im, re)[0, 1]) if im.std() > 0 and re.std() > 0 else None
    return {
        "num_states": len(states),
        "imagined_success": round(sum(imagined[s][0] for s in states) / sum(imagined[s][1] for s in states), 4),
        "real_success": round(sum(real[s][0] for s in states) / sum(real[s][1] for s in states), 4),
        "per_state_correlation": None if correlation is None else round(correlation, 3),
        "mean_abs_state_gap": round(float(np.abs(im - re).mean()), 4),
        "imagined_on_real_never": None if not never.any() else round(float(im[never].mean()), 4),
        "imagined_on_real_always": None if not always.any() else round(float(im[always].mean()), 4),
        "states_real_never_always": [int(never.sum()), int(always.sum())],
        # GRPO learns only from groups with mixed outcomes: states whose episodes do not all end alike
        "mixed_states_imagined_real": [sum(0 < imagined[s][0] < imagined[s][1] for s in states),
                                       sum(0 < real[s][0] < real[s][1] for s in states)],
        "per_state": {int(s): {"imagined": list(imagined[s]), "real": list(real[s])} for s in states},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="an RL run (its config.yaml gives env.train)")
    parser.add_argument("--policy", type=Path, required=True, help="a save_pretrained policy directory")
    parser.add_argument("--real", type=Path, nargs="+", required=True, help="real evaluations' summary.json")
    parser.add_argument("--episodes-per-state", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=None, help="default: the run's policy.temperature")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imagined-from", type=Path, default=None,
                        help="take the imagined per-state counts from this earlier report (its last JSON line)")
    args = parser.parse_args()
    if args.episodes_per_state < 1:
        parser.error("--episodes-per-state must be >= 1")

    config = run_config(args.run_dir)
    temperature = config["policy"]["temperature"] if args.temperature is None else args.temperature
    real = real_rates(args.real, temperature)
    if args.imagined_from is not None:
        earlier = json.loads(args.imagined_from.read_text().strip().splitlines()[-1])
        imagined = {int(s): tuple(c["imagined"]) for s, c in earlier["per_state"].items()}
        print(json.dumps({**{k: earlier[k] for k in ("policy", "run_dir", "temperature", "success_consecutive")},
                          "imagined_from": str(args.imagined_from), "real_episodes": sum(n for _, n in real.values()),
                          **compare(imagined, real)}))
        return

    import torch  # only for the imagined episodes

    from rlinf_wm.envs import make_env
    from rlinf_wm.models.policy import load_policy
    from rlinf_wm.workers.eval_worker import run_episodes

    torch.set_num_threads(args.threads)
    env_cfg = dict(config["env"]["train"])
    env_cfg["num_envs"] = args.num_envs
    env = make_env(env_cfg.pop("env_type"), **env_cfg)
    starts, states = world_model_starts(env.initial_states.reset_ids, sorted(real), args.episodes_per_state)
    if not starts:
        raise SystemExit("the world model's initial states carry none of the real evaluations' reset ids")
    started = time.perf_counter()
    result = run_episodes(env, load_policy(args.policy), starts, seed=args.seed, deterministic=False,
                          temperature=temperature)
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for state, episode in zip(states, result["episodes"]):
        counts[state][0] += int(episode["success"])
        counts[state][1] += 1
    report = {"policy": str(args.policy), "run_dir": str(args.run_dir), "temperature": temperature,
              "success_consecutive": env_cfg.get("success_consecutive"), "imagined_episodes": len(starts),
              "real_episodes": sum(n for _, n in real.values()),
              "imagined_seconds": round(time.perf_counter() - started, 1),
              **compare({s: tuple(c) for s, c in counts.items()}, real)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
