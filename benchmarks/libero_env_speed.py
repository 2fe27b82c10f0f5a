"""LIBERO-Spatial steps per second in one process: scene build and reset time, and stepping with one
rendered agentview frame per step (what collection does) or per 8-step chunk (what RL does), with
and without ``cheap_rendering`` (no reflections / multisampling), and without rendering.

CPU time (process_time, counting llvmpipe's render threads) is reported besides wall time: on a
shared machine wall time mostly measures the other processes.

Usage: .venv/bin/python benchmarks/libero_env_speed.py [--task 0] [--image-size 64] [--steps 40]
Needs the libero extra. Prints one JSON object as its last line.
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

import numpy as np  # noqa: E402


def measure(env, steps: int, chunk: int) -> dict:
    env.reset(ids=[0])
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (1, chunk, 7)).astype(np.float32)
    wall, cpu = time.perf_counter(), time.process_time()
    done = 0
    while done < steps:
        env.chunk_step(actions)
        done += chunk
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"steps_per_s_wall": round(done / wall, 2), "steps_per_s_cpu": round(done / cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    from rlinf_wm.envs.libero_env import LiberoEnv

    size = (args.image_size, args.image_size)
    result = {"task": args.task, "image_size": args.image_size}
    for cheap in (True, False):
        start = time.perf_counter()
        with LiberoEnv(task_ids=[args.task], image_size=size, cheap_rendering=cheap) as env:
            env.reset(ids=[0])
            if cheap:
                result["build_and_first_reset_s"] = round(time.perf_counter() - start, 1)
                start = time.perf_counter()
                env.reset(ids=[1])
                result["reset_s"] = round(time.perf_counter() - start, 2)
            tag = "cheap" if cheap else "default"
            result[f"render_every_step_{tag}"] = measure(env, args.steps, 1)
            if cheap:
                result["render_every_8_steps_cheap"] = measure(env, args.steps, 8)
                env.render_images = False
                result["no_render"] = measure(env, args.steps, 8)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
