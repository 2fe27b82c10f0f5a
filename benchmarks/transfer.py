"""Does RL in the world model transfer to the real simulator? The comparison behind the project's claim.

For one task and each RL seed, starting from the quickstart's SFT base policy and world model:

* ``base``               the SFT policy, evaluated in the real simulator;
* ``grpo_world_model``   after GRPO in the world model (``metaworld_<task>_grpo_tinyvla``) for ``--iterations``;
* ``grpo_real_updates``  after GRPO in the real simulator for the same number of iterations, i.e. the same number
                         of policy updates on batches of the same size (``..._grpo_tinyvla_realsim``);
* ``grpo_real_steps``    after GRPO in the real simulator until it has used as many real env steps as the world
                         model was trained on (``runner.max_env_steps`` = ``world_model/training_data.json``'s
                         steps: the scripted collection plus the base policy's recorded rollouts; another world
                         model, e.g. one trained on more real data, with ``--world-model-dir``);
* ``imagined``           the world-model-trained policy evaluated inside the world model (same protocol as the
                         real evaluations), beside its real success: the calibration gap at the end of RL.

Every real evaluation runs ``--eval-episodes`` episodes (>= 100) with actions sampled at the world-model run's
rollout temperature (``policy.temperature``: the RL policy is a stochastic policy; sampling also makes the episodes
independent, whereas greedy actions repeat on Meta-World's 50 initial states) and reports a 95 % Wilson interval.
Beside this primary protocol, each policy (and the imagined success) is measured with its mode (mean actions, once on
each of the 50 real initial states; ``--no-mean-actions`` skips it) and, with ``--eval-temperatures``, sampled at
other temperatures (one of RLinf's config pairs samples at 1.0 in training, 0.6 in evaluation). Each gets the same
comparison under its name: GRPO can move the mode without moving the sampled policy that it trains and the targets
measure.
Each RL run goes through ``run_embodiment.sh``, exactly as a user launches it; every finished piece is cached under
``--out`` so an interrupted benchmark resumes, and a cached piece made with other settings (seed, iterations, step
budget, episodes, temperature, overrides, base policy, world model) is refused with the setting that differs.

    .venv/bin/python benchmarks/transfer.py [--seeds 0 1 2] [--iterations 20] [--eval-episodes 100]
        [--artifacts outputs/drawer-open-v3] [--out outputs/drawer-open-v3/transfer] [--skip grpo_real_steps]
        [--world-model-dir outputs/drawer-open-v3/world_model]
        [--eval-temperatures 2.4]
        [key=value ...]          # Hydra overrides for every RL run (e.g. actor.lr=1e-4)

Needs the quickstart's artifacts (``bash scripts/quickstart.sh``). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlinf_wm.utils.io import write_json_atomic  # noqa: E402
from rlinf_wm.utils.machine import describe_machine  # noqa: E402

CONFIGS = ROOT / "examples" / "embodiment" / "config"
RL_RUNS = ("grpo_world_model", "grpo_real_updates", "grpo_real_steps")
# Mean actions are deterministic: one episode on each of Meta-World's 50 initial states says all there is.
MEAN_ACTION_EPISODES = 50
# Targets of issue 7, in percentage points.
TARGETS = {"gain_over_base_pp": 20.0, "fraction_of_real_gain": 0.6, "abs_imagined_minus_real_pp": 5.0}


def task_configs(task: str) -> tuple[str, list[str]]:
    """The config slug of a Meta-World task (``metaworld_<slug>_grpo_tinyvla``, ``eval_metaworld_<slug>``) and the
    env overrides that retarget it: a task without configs of its own runs drawer-open's, pointed at the task."""
    slug = task.removesuffix("-v3").replace("-", "_")
    if (CONFIGS / f"metaworld_{slug}_grpo_tinyvla.yaml").is_file():
        return slug, []
    from rlinf_wm.envs.metaworld_env import available_tasks

    if task not in available_tasks():
        raise SystemExit(f"[transfer] {task!r} is not a Meta-World task: {', '.join(available_tasks())}")
    return "drawer_open", [f"env.train.task={task}", f"env.eval.task={task}"]


def run_logged(command: list[str], log_path: Path, env: dict | None = None) -> float:
    """Run a command with its output in ``log_path``; fail with the log's tail. Returns wall seconds."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise SystemExit(f"command failed (exit {result.returncode}): {' '.join(command)}\n"
                         f"last lines of {log_path}:\n{log_path.read_text()[-3000:]}")
    return time.perf_counter() - start


def drop_if_stale(result: Path, output: Path, *inputs: Path) -> None:
    """Delete ``output`` (a file or directory) when its ``result`` file was written before one of ``inputs`` (a
    policy's weights, a world model): it is then of another input at the same path, e.g. of an RL run since redone."""
    if not result.exists():
        return
    newer = [str(path) for path in inputs if path.exists() and path.stat().st_mtime > result.stat().st_mtime]
    if newer:
        print(f"[transfer] {result} predates {', '.join(newer)}: redone", flush=True)
        shutil.rmtree(output) if output.is_dir() else output.unlink()


def setting_mismatches(cached: dict, expected: dict) -> list[str]:
    """The settings of a cached result that differ from this run's (dotted keys into ``cached``; paths compare
    by where they resolve to, so a run reached through a symlinked artifacts directory still matches)."""
    from omegaconf import OmegaConf

    config = OmegaConf.create(cached)
    mismatches = []
    for key, want in expected.items():
        got = OmegaConf.select(config, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        if isinstance(got, dict) and isinstance(want, str):
            continue  # a config-group choice (``algorithm=ppo``): the saved config holds the group's contents
        same = (got is not None and Path(got).resolve() == Path(want).resolve()) if isinstance(want, Path) else got == want
        if not same:
            mismatches.append(f"{key}={got!r} (this run: {str(want) if isinstance(want, Path) else repr(want)})")
    return mismatches


def require_same_settings(cached_file: Path, cached: dict, expected: dict) -> None:
    """A cached result answers the question it was run for: refuse one made with other settings."""
    mismatches = setting_mismatches(cached, expected)
    if mismatches:
        raise SystemExit(f"{cached_file} was made with other settings: {'; '.join(mismatches)}. "
                         f"Delete {cached_file.parent} or pass another --out.")


def override_settings(overrides: list[str]) -> dict:
    """Hydra ``key=value`` overrides as the values the saved config holds, parsed by Hydra itself (``+``/``~``
    ones add or delete keys and are not checked)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group: o.value() for o in parsed if not (o.is_add() or o.is_delete() or o.is_force_add())}


# The protocols beside the primary one: every name they go by is made and recognised from these two.
MEAN_ACTIONS = "mean_actions"
TEMPERATURE_PREFIX = "temperature_"


def protocol_settings(args, protocol: str | None) -> tuple[dict, int]:
    """How a protocol acts and how many real episodes it runs. ``None`` is the primary protocol the targets are set on:
    ``--eval-episodes`` sampled at the rollout temperature. ``mean_actions``: the mode, once on each initial state.
    ``temperature_<T>``: ``--eval-episodes`` sampled at T."""
    if protocol is None:
        return {"deterministic": False, "temperature": args.temperature}, args.eval_episodes
    if protocol == MEAN_ACTIONS:
        return {"deterministic": True}, MEAN_ACTION_EPISODES
    return {"deterministic": False, "temperature": float(protocol.removeprefix(TEMPERATURE_PREFIX))}, args.eval_episodes


def extra_protocols(args) -> list[str]:
    """The protocols reported beside the primary one."""
    return ([MEAN_ACTIONS] if args.mean_actions else []) + [f"{TEMPERATURE_PREFIX}{t:g}" for t in args.eval_temperatures]


def real_eval(policy_dir: Path, out_dir: Path, args, seed: int, protocol: str | None = None) -> dict:
    """Real-simulator success of a policy under a protocol (``protocol_settings``), cached in
    ``out_dir/summary.json``."""
    summary_path = out_dir / "summary.json"
    sampling, episodes = protocol_settings(args, protocol)
    drop_if_stale(summary_path, out_dir, policy_dir / "model.safetensors")
    if summary_path.is_file():
        require_same_settings(summary_path, json.loads(summary_path.read_text()),
                              {"policy_path": policy_dir, "num_episodes": episodes, "seed": seed, **sampling})
    else:
        run_logged([sys.executable, "examples/embodiment/eval_embodied_agent.py", "--config-name",
                    f"eval_metaworld_{args.slug}", f"task={args.task}", f"artifacts_dir={args.artifacts}",
                    *[o for o in args.retarget if o.startswith("env.eval.")],
                    f"policy_path={policy_dir}", f"eval.output_dir={out_dir}", f"eval.num_episodes={episodes}",
                    f"eval.seed={seed}", *[f"eval.{k}={str(v).lower()}" for k, v in sampling.items()],
                    f"eval.num_videos={2 if protocol is None else 0}"],
                   out_dir.parent / f"{out_dir.name}.log")
    summary = json.loads(summary_path.read_text())
    return {"success_rate": summary["success_rate"], "ci95": summary["success_rate_ci95"],
            "num_episodes": summary["num_episodes"], "mean_episode_length": summary["mean_episode_length"]}


def rl_run(name: str, args, seed: int, run_dir: Path, extra: list[str]) -> dict:
    """One GRPO run through run_embodiment.sh (cached: skipped when its final policy exists)."""
    config = f"metaworld_{args.slug}_grpo_tinyvla" + ("" if name == "grpo_world_model" else "_realsim")
    final = run_dir / "final" / "model"
    wall = None
    inputs = [args.artifacts / "sft" / "model" / "model.safetensors"]
    if name == "grpo_world_model":
        inputs.append(args.world_model_dir / "world_model.json")
    drop_if_stale(final / "model.safetensors", run_dir, *inputs)
    if (final / "model.safetensors").is_file():
        import yaml

        defaults = {"policy.path": args.artifacts / "sft"}  # what the configs point at unless overridden
        if name == "grpo_world_model":
            defaults["env.train.world_model_dir"] = args.world_model_dir
        expected = {**defaults, **override_settings([*args.retarget, f"runner.seed={seed}", *extra, *args.overrides])}
        require_same_settings(run_dir / "config.yaml", yaml.safe_load((run_dir / "config.yaml").read_text()), expected)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run's metrics.jsonl would be appended to
        overrides = [f"task={args.task}", f"artifacts_dir={args.artifacts}", *args.retarget, f"runner.seed={seed}",
                     "runner.eval_interval=0", "runner.save_interval=0", "runner.progress_bar=false", *extra]
        wall = run_logged(["bash", "examples/embodiment/run_embodiment.sh", config, *overrides, *args.overrides],
                          run_dir.parent / f"{run_dir.name}.log", env={"LOG_DIR": str(run_dir), "PYTHON": sys.executable})
    from rlinf_wm.runners.metric_logger import read_metrics

    rows = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "iterations": summary["iterations"], "env_steps": summary["env_steps"], "episodes": summary["episodes"],
        "optimizer_steps": int(sum(r.get("train/actor/num_updates", 0) or 0 for r in rows)),
        "train_success_first": rows[0]["env/success_once"], "train_success_last": rows[-1]["env/success_once"],
        "wall_seconds": wall if wall is not None else sum(r.get("time/iteration", 0) or 0 for r in rows),
        "final_policy": str(final),
    }


def imagined_eval(run_dir: Path, out_path: Path, args, seed: int, protocol: str | None = None) -> dict:
    """The world-model-trained policy evaluated inside the world model it trained in (cached): ``--eval-episodes``
    episodes acting as the protocol does (the world model's sampler makes even mean-action episodes differ)."""
    sampling, _ = protocol_settings(args, protocol)
    drop_if_stale(out_path, out_path, run_dir / "final" / "model" / "model.safetensors",
                  args.world_model_dir / "world_model.json")
    if not out_path.is_file():
        import numpy as np
        import torch
        import yaml

        from rlinf_wm.envs import make_env
        from rlinf_wm.models.policy import load_policy
        from rlinf_wm.workers.eval_worker import run_episodes

        torch.set_num_threads(2)
        env_cfg = dict(yaml.safe_load((run_dir / "config.yaml").read_text())["env"]["train"])
        env_cfg["num_envs"] = min(env_cfg.get("num_envs") or 16, args.eval_episodes)
        env = make_env(env_cfg.pop("env_type"), **env_cfg)
        reset_ids = np.random.default_rng(seed).integers(0, env.num_initial_states, args.eval_episodes).tolist()
        started = time.perf_counter()
        result = run_episodes(env, load_policy(run_dir / "final" / "model"), reset_ids, seed=seed, **sampling)
        successes = [bool(e["success"]) for e in result["episodes"]]
        write_json_atomic(out_path, {**sampling, "successes": successes, "wall_seconds": time.perf_counter() - started})
    from rlinf_wm.utils.stats import wilson_interval

    data = json.loads(out_path.read_text())
    k, n = sum(data["successes"]), len(data["successes"])
    require_same_settings(out_path, {**data, "num_episodes": n}, {**sampling, "num_episodes": args.eval_episodes})
    return {"success_rate": k / n, "ci95": list(wilson_interval(k, n)), "num_episodes": n}


def run_seed(seed: int, args, data_steps: int) -> dict:
    out = args.out / f"seed_{seed}"
    base_policy = args.artifacts / "sft" / "model"
    result: dict = {"seed": seed, "base": real_eval(base_policy, out / "eval_base", args, seed)}
    for protocol in extra_protocols(args):
        # the base's mode is the same in every RL seed: evaluated once
        base_dir, base_seed = ((args.out / "eval_base_mean_actions", 0) if protocol == MEAN_ACTIONS
                               else (out / f"eval_base_{protocol}", seed))
        result["base"][protocol] = real_eval(base_policy, base_dir, args, base_seed, protocol)
    extra = {"grpo_world_model": [f"runner.max_iterations={args.iterations}",
                                  f"env.train.world_model_dir={args.world_model_dir}"],
             "grpo_real_updates": [f"runner.max_iterations={args.iterations}"],
             "grpo_real_steps": ["runner.max_iterations=100000", f"runner.max_env_steps={data_steps}"]}
    for name in RL_RUNS:
        if name in args.skip:
            continue
        run_dir = out / name
        policy = run_dir / "final" / "model"
        result[name] = {"train": rl_run(name, args, seed, run_dir, extra[name]),
                        **real_eval(policy, out / f"eval_{name}", args, seed)}
        for protocol in extra_protocols(args):
            result[name][protocol] = real_eval(policy, out / f"eval_{name}_{protocol}", args, seed, protocol)
        print(f"[transfer] seed {seed} {name}: real success {result[name]['success_rate']:.2f}", flush=True)
    if "grpo_world_model" in result:
        result["imagined"] = imagined_eval(out / "grpo_world_model", out / "eval_imagined.json", args, seed)
        for protocol in extra_protocols(args):
            result["imagined"][protocol] = imagined_eval(
                out / "grpo_world_model", out / f"eval_imagined_{protocol}.json", args, seed, protocol)
    return result


def pp(x: float) -> float:
    return round(100.0 * x, 1)


def is_protocol(key: str) -> bool:
    return key == MEAN_ACTIONS or key.startswith(TEMPERATURE_PREFIX)


def under_protocol(result: dict, protocol: str) -> dict:
    """The measures of one protocol, laid out as the primary ones are."""
    return {name: entry[protocol] for name, entry in result.items() if isinstance(entry, dict) and protocol in entry}


def compare(result: dict) -> dict:
    """Gains in percentage points and the issue's targets for one seed (or the seed mean); each protocol beside the
    primary one (``mean_actions``, ``temperature_<T>``) gets the same comparison under its name."""
    base = result["base"]["success_rate"]
    out = {}
    if "grpo_world_model" in result:
        wm = result["grpo_world_model"]["success_rate"]
        out["gain_world_model_pp"] = pp(wm - base)
        if "imagined" in result:
            out["imagined_minus_real_pp"] = pp(result["imagined"]["success_rate"] - wm)
        for name in ("grpo_real_updates", "grpo_real_steps"):
            if name in result:
                real_gain = result[name]["success_rate"] - base
                out[f"gain_{name}_pp"] = pp(real_gain)
                out[f"fraction_of_{name}_gain"] = round((wm - base) / real_gain, 3) if real_gain > 0 else None
        # A fraction of a gain that is within noise means nothing: the real-sim run must beat the base's rate
        # with its whole 95 % interval first. A target whose runs were skipped is None (not measured), not False.
        real = result.get("grpo_real_updates")
        real_gain_significant = None if real is None else "ci95" in real and real["ci95"][0] > base
        out["real_gain_at_equal_updates_significant"] = real_gain_significant
        out["targets_met"] = {
            "gain_over_base": out["gain_world_model_pp"] >= TARGETS["gain_over_base_pp"],
            "fraction_of_real_gain_at_equal_updates": real_gain_significant  # None stays None: not measured
            and (out.get("fraction_of_grpo_real_updates_gain") or 0) >= TARGETS["fraction_of_real_gain"],
            "imagined_close_to_real": None if "imagined_minus_real_pp" not in out
            else abs(out["imagined_minus_real_pp"]) <= TARGETS["abs_imagined_minus_real_pp"],
        }
        protocols = {key for entry in result.values() if isinstance(entry, dict) for key in entry if is_protocol(key)}
        for protocol in sorted(protocols):
            projected = under_protocol(result, protocol)
            if "base" in projected and "grpo_world_model" in projected:
                out[protocol] = compare(projected)
    return out


def mean_over_seeds(results: list[dict]) -> dict:
    """Each measure's success rate averaged over the seeds, with the Wilson interval of the seeds' episodes pooled:
    the seed mean's real-simulator gain is then tested as one seed's is. (The pooled interval is of the episodes;
    it does not widen for RL runs that differ by seed.) The base's mean actions are one evaluation, shared by the
    seeds: nothing to pool."""
    from rlinf_wm.utils.stats import wilson_interval

    def average(runs: list[dict], pooled: bool) -> dict:
        mean = {"success_rate": sum(run["success_rate"] for run in runs) / len(runs)}
        if pooled:
            episodes = sum(run["num_episodes"] for run in runs)
            successes = sum(round(run["success_rate"] * run["num_episodes"]) for run in runs)
            mean.update(num_episodes=episodes, ci95=list(wilson_interval(successes, episodes)))
        return mean

    keys = [k for k in ("base", *RL_RUNS, "imagined") if all(k in r for r in results)]
    mean = {}
    for key in keys:
        runs = [r[key] for r in results]
        mean[key] = average(runs, pooled=True)
        for protocol in runs[0]:
            if is_protocol(protocol) and all(protocol in r for r in runs):
                shared = protocol == MEAN_ACTIONS and key == "base"
                mean[key][protocol] = average([r[protocol] for r in runs], pooled=not shared)
    return mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="drawer-open-v3", help="a Meta-World task (the quickstart's --task)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iterations", type=int, default=None,
                        help="RL iterations of the world-model run and of grpo_real_updates (default: the config's)")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--artifacts", type=Path, default=None, help="default: outputs/<task> (the quickstart's)")
    parser.add_argument("--out", type=Path, default=None, help="default: <artifacts>/transfer")
    parser.add_argument("--world-model-dir", type=Path, default=None,
                        help="the world model GRPO trains in (default: <artifacts>/world_model)")
    parser.add_argument("--skip", nargs="*", default=[], choices=RL_RUNS)
    parser.add_argument("--mean-actions", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also evaluate each policy's mean actions, once on each of {MEAN_ACTION_EPISODES} "
                             "initial states (reported beside the sampled success, not in the targets)")
    parser.add_argument("--eval-temperatures", type=float, nargs="*", default=[], metavar="T",
                        help="also evaluate every policy, in the real simulator and in the world model, with "
                             "actions sampled at each T (one RLinf config pair evaluates at 0.6 of its rollout "
                             "temperature); reported beside the primary protocol, not in its targets")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every RL run")
    args = parser.parse_args()
    args.slug, args.retarget = task_configs(args.task)
    args.artifacts = (args.artifacts or ROOT / "outputs" / args.task).resolve()
    args.out = (args.out or args.artifacts / "transfer").resolve()
    if args.eval_episodes < 1:
        parser.error("--eval-episodes must be >= 1")
    if any(t <= 0 for t in args.eval_temperatures):
        parser.error(f"--eval-temperatures must be > 0, got {args.eval_temperatures}")
    if any(o.lstrip("+").startswith("env.train.world_model_dir=") for o in args.overrides):
        parser.error("give the world model with --world-model-dir: an override would reach the real-simulator runs "
                     "too, and the equal-real-steps budget would be the default world model's")
    args.world_model_dir = (args.world_model_dir or args.artifacts / "world_model").resolve()
    training_data = args.world_model_dir / "training_data.json"
    for needed in (args.artifacts / "sft" / "model" / "model.safetensors",
                   args.world_model_dir / "world_model.json", training_data):
        if not needed.is_file():
            raise SystemExit(f"[transfer] missing {needed}: run `bash scripts/quickstart.sh` first")
    import yaml

    config = yaml.safe_load((CONFIGS / f"metaworld_{args.slug}_grpo_tinyvla.yaml").read_text())
    if args.iterations is None:
        args.iterations = config["runner"]["max_iterations"]
    # the rollout temperature, as the RL runs get it (an override wins over the config)
    args.temperature = float(next((o.split("=", 1)[1] for o in args.overrides if o.startswith("policy.temperature=")),
                                  config["policy"]["temperature"]))
    # every real env step behind the world model: scripted collection + the base policy's recorded rollouts
    data_steps = json.loads(training_data.read_text())["env_steps"]

    results = [run_seed(seed, args, data_steps) for seed in args.seeds]
    for result in results:
        result["comparison"] = compare(result)
    mean = mean_over_seeds(results)
    report = {"task": args.task, "seeds": args.seeds, "iterations": args.iterations,
              "eval_episodes": args.eval_episodes, "eval_actions": f"sampled (temperature {args.temperature:g})",
              "mean_action_episodes": MEAN_ACTION_EPISODES if args.mean_actions else 0,
              "other_protocols": extra_protocols(args),
              "world_model_dir": str(args.world_model_dir), "world_model_data_env_steps": data_steps,
              "overrides": args.overrides, "targets": TARGETS,
              "machine": describe_machine(),  # the same commit builds other models on other CPUs
              "per_seed": results, "mean": {**mean, "comparison": compare(mean) if "imagined" in mean else {}}}
    write_json_atomic(args.out / "transfer.json", report)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
