"""Rendered Meta-World steps per second: in this process, and with 1 and 2 Ray collector actors.

Each measurement records fixed-length random-action episodes (random episodes never succeed, so
every episode is exactly ``--steps`` steps), each step rendering one image, after a warm-up episode
per actor. ``scaling`` = steps/s with 2 actors over steps/s with 1 (2.0 would be perfect on 2 free
cores; other processes on the machine lower it).

Usage: .venv/bin/python benchmarks/collect_throughput.py [--task drawer-open-v3] [--image-size 64]
       [--steps 100] [--episodes-per-actor 3]
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def in_process(env_kwargs: dict, episodes: int) -> float:
    from rlinf_wm.envs.experts import record_episode
    from rlinf_wm.envs.metaworld_env import MetaWorldEnv

    with MetaWorldEnv(**env_kwargs) as env:
        record_episode(env, "random", seed=12345, task_id=0)  # warm-up: GL context, caches
        start, steps = time.perf_counter(), 0
        for i in range(episodes):
            steps += record_episode(env, "random", seed=i, task_id=i).length
        return steps / (time.perf_counter() - start)


def with_actors(env_kwargs: dict, num_actors: int, episodes_per_actor: int) -> float:
    import ray

    from rlinf_wm.workers.collector_worker import CollectorWorker

    actors = [CollectorWorker.options(num_cpus=1).remote(env_kwargs, 0.0) for _ in range(num_actors)]
    try:
        ray.get([a.record.remote("random", 10**6 + i, 0) for i, a in enumerate(actors)])  # warm-up
        start = time.perf_counter()
        futures = [a.record.remote("random", i * 100 + j, j) for i, a in enumerate(actors) for j in range(episodes_per_actor)]
        steps = sum(episode.length for episode in ray.get(futures))
        return steps / (time.perf_counter() - start)
    finally:
        for actor in actors:
            ray.kill(actor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="drawer-open-v3")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--camera", default="corner3")
    parser.add_argument("--steps", type=int, default=100, help="steps per episode")
    parser.add_argument("--episodes-per-actor", type=int, default=3)
    args = parser.parse_args()
    env_kwargs = dict(task=args.task, num_envs=1, image_size=[args.image_size] * 2, camera=args.camera,
                      max_episode_steps=args.steps)

    single = in_process(env_kwargs, args.episodes_per_actor)
    print(f"in process: {single:.1f} steps/s", flush=True)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rates = {}
        for num_actors in (1, 2):
            rates[num_actors] = with_actors(env_kwargs, num_actors, args.episodes_per_actor)
            print(f"{num_actors} collector(s): {rates[num_actors]:.1f} steps/s", flush=True)
    finally:
        ray.shutdown()
    print(json.dumps({
        "benchmark": "collect_throughput",
        "task": args.task,
        "image_size": args.image_size,
        "camera": args.camera,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "steps_per_s_in_process": round(single, 1),
        "steps_per_s_1_collector": round(rates[1], 1),
        "steps_per_s_2_collectors": round(rates[2], 1),
        "scaling_2_over_1": round(rates[2] / rates[1], 2),
    }))


if __name__ == "__main__":
    main()
