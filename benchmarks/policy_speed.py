"""TinyVLA speed on CPU: ``act`` (rollout/eval inference) and one SFT/learner step (forward + backward
+ AdamW) at batch size B, with the default architecture (``model/tinyvla.yaml``) on 64x64 images.

Usage: .venv/bin/python benchmarks/policy_speed.py [--batch 64] [--threads 1] [--repeats 10]
       [--chunk-size 4]
Prints one JSON object as its last line (milliseconds: median over repeats).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import torch

    from rlinf_wm.config.policy_schema import TinyVLAConfig
    from rlinf_wm.envs import Obs
    from rlinf_wm.models.policy import TinyVLA

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TinyVLAConfig(chunk_size=args.chunk_size, image_size=args.image_size, action_dim=4,
                           action_q01=[-1.0] * 4, action_q99=[1.0] * 4)
    policy = TinyVLA(config).eval()
    rng = np.random.default_rng(0)
    obs = Obs(images=rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8),
              instructions=["open the drawer"] * args.batch)

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    act_sample_ms = timed(lambda: policy.act(obs))
    act_greedy_ms = timed(lambda: policy.act(obs, deterministic=True))
    tokens = policy.act(obs).tokens
    images, instruction_ids = policy.obs_to_tensors(obs)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    policy.train()

    def train_step() -> None:
        evaluation = policy.evaluate_tensors(images, instruction_ids, tokens)
        loss = -evaluation.logprobs.mean() + evaluation.values.pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_step_ms = timed(train_step)
    print(json.dumps({
        "benchmark": "policy_speed",
        "batch": args.batch,
        "threads": args.threads,
        "chunk_size": args.chunk_size,
        "image_size": args.image_size,
        "parameters_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 3),
        "act_sample_ms": round(act_sample_ms, 1),
        "act_greedy_ms": round(act_greedy_ms, 1),
        "train_step_ms": round(train_step_ms, 1),
    }))


if __name__ == "__main__":
    main()
