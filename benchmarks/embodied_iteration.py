"""Seconds per RL iteration and their split (env, rollout, actor, sync) for an embodied config on Ray.

Runs ``--iterations`` iterations of the config (default: GRPO in real Meta-World) with evaluation
and checkpoints off, drops the first (warm-up) iteration and reports per-iteration means of the
``time/*`` metrics, including ``time/overlap_ratio`` = (env busy + policy busy) / rollout wall time.
Uses the config's SFT checkpoint when it exists, else a freshly initialised policy of the same
architecture (speed does not depend on the weights).

With ``--random-world-model`` (for a world-model config before a world model is trained), the train env
is a randomly initialised world model of the default architecture (benchmarks/wm_env_throughput.py:
same shapes, same cost) whose reward never fires, so every episode runs ``max_episode_steps``.

Usage: .venv/bin/python benchmarks/embodied_iteration.py [--config NAME] [--iterations 4] [key=value ...]
e.g.   .venv/bin/python benchmarks/embodied_iteration.py cluster.env.num_workers=1   # no pipelining
       .venv/bin/python benchmarks/embodied_iteration.py --config metaworld_drawer_open_grpo_tinyvla --random-world-model
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TIME_KEYS = ("time/iteration", "time/collect", "time/env", "time/rollout", "time/actor", "time/sync",
             "time/offload", "time/overlap_ratio")


def fresh_policy(cfg, directory: Path) -> str:
    """A random policy with the config's architecture, sized for its train env."""
    import torch

    from rlinf_wm.models.policy import TinyVLA
    from rlinf_wm.utils.checkpoint import save_model_atomic

    height, width = getattr(cfg.env.train, "image_size", None) or cfg.env.eval.image_size  # world models: eval env
    model = replace(cfg.policy.model, image_size=height, action_dim=4, action_q01=[-1.0] * 4, action_q99=[1.0] * 4)
    torch.manual_seed(0)
    save_model_atomic(TinyVLA(model), directory)
    return str(directory)


def random_world_model(artifacts_dir: Path) -> Path:
    """A random default-size world model under ``artifacts_dir/world_model``, reset frames from Meta-World."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from wm_env_throughput import TASK, random_world_model as build

    from rlinf_wm.envs.metaworld_env import MetaWorldEnv

    with MetaWorldEnv(TASK, num_envs=1) as real:
        frames = np.stack([real.reset(ids=[i]).images[0] for i in range(8)])
        build(artifacts_dir / "world_model", frames, real.instruction)
    return artifacts_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="metaworld_drawer_open_grpo_tinyvla_realsim")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--random-world-model", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from rlinf_wm.config.embodied_schema import EmbodiedConfig
    from rlinf_wm.config.validate import validate
    from rlinf_wm.models.policy import resolve_policy_dir
    from rlinf_wm.runners.embodied_runner import EmbodiedRunner
    from rlinf_wm.runners.metric_logger import read_metrics
    from rlinf_wm.runners.ray_setup import init_ray

    work = Path(tempfile.mkdtemp(prefix="embodied_bench_"))
    overrides = [f"runner.log_dir={work / 'run'}", f"runner.max_iterations={args.iterations}",
                 "runner.eval_interval=0", "runner.save_interval=0", "runner.progress_bar=false"]
    if args.random_world_model:
        overrides += [f"artifacts_dir={random_world_model(work / 'artifacts')}", "env.train.reward_threshold=2.0"]
    overrides += args.overrides
    with initialize_config_dir(config_dir=str(ROOT / "examples/embodiment/config"), version_base=None):
        raw = compose(args.config, overrides=overrides)
    from omegaconf import OmegaConf

    cfg = validate(OmegaConf.to_container(raw, resolve=True), EmbodiedConfig)
    policy_source = "sft checkpoint"
    try:
        resolve_policy_dir(cfg.policy.path)
    except (FileNotFoundError, TypeError):
        cfg.policy.path = fresh_policy(cfg, work / "policy")
        policy_source = "fresh policy (no SFT checkpoint yet)"
    started = time.perf_counter()
    print(init_ray(cfg), file=sys.stderr)
    EmbodiedRunner(cfg, asdict(cfg)).run()
    total = time.perf_counter() - started
    rows = read_metrics(cfg.runner.log_dir)[1:]  # the first iteration warms up (imports, GL contexts)
    means = {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in TIME_KEYS if rows and key in rows[0]}
    result = {
        "benchmark": "embodied_iteration",
        "config": args.config,
        "overrides": args.overrides,
        "policy": policy_source,
        "train_env": cfg.env.train.env_type + (" (random weights)" if args.random_world_model else ""),
        "num_envs": cfg.env.train.num_envs,
        "env_workers": cfg.cluster.env.num_workers,
        "rollout_workers": cfg.cluster.rollout.num_workers,
        "max_episode_steps": cfg.env.train.max_episode_steps,
        "iterations_measured": len(rows),
        "env_steps_per_iteration": rows[0]["env/episode_len"] * rows[0]["env/num_trajectories"] if rows else None,
        "wall_time_s_including_startup": round(total, 1),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        **means,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
