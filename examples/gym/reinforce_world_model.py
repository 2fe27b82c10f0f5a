"""REINFORCE through the gymnasium API: a third-party-style agent trained inside the world model.

RLlib and Stable-Baselines3 are not installed here (and this example must not need them); what they would use is
exactly this: ``ChunkVectorEnv`` is a ``gymnasium.vector.VectorEnv`` (``ChunkGymEnv`` a ``gymnasium.Env`` for one
env), with a ``Dict(image=Box uint8, instruction=Text)`` observation and a ``Box [K, A]`` action. Libraries that
only take ``Box`` observations need gymnasium's ``FilterObservation(env, ["image"])`` wrapper first.

The agent: a small CNN Gaussian policy over the whole action chunk; every iteration runs one episode in each of
the ``B`` envs (``DISABLED`` autoreset: finished envs wait, costing nothing, until all are done) and takes one
policy-gradient step on the batch-normalised returns.

    python examples/gym/reinforce_world_model.py --world-model-dir outputs/drawer-open-v3/world_model
    python examples/gym/reinforce_world_model.py --env metaworld          # the same agent in the real simulator
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from rlinf_wm.envs.gym_adapter import ChunkVectorEnv  # noqa: E402


class GaussianChunkPolicy(nn.Module):
    def __init__(self, chunk_size: int, action_dim: int) -> None:
        super().__init__()
        self.shape = (chunk_size, action_dim)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(),
        )
        self.mean = nn.Linear(64, chunk_size * action_dim)
        self.log_std = nn.Parameter(torch.full((chunk_size * action_dim,), -0.5))

    def distribution(self, images: np.ndarray) -> torch.distributions.Normal:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return torch.distributions.Normal(torch.tanh(self.mean(self.encoder(x))), self.log_std.exp())


def make_env(args) -> ChunkVectorEnv:
    if args.env == "metaworld":
        from rlinf_wm.envs.metaworld_env import MetaWorldEnv

        inner = MetaWorldEnv("drawer-open-v3", num_envs=args.num_envs, max_episode_steps=args.max_episode_steps)
        return ChunkVectorEnv(inner, chunk_size=args.chunk_size, autoreset_mode="disabled")
    from rlinf_wm.envs.world_model_env import WorldModelEnv

    inner = WorldModelEnv(args.world_model_dir, num_envs=args.num_envs, max_episode_steps=args.max_episode_steps,
                          sampler={"num_steps": args.num_steps} if args.num_steps else None)
    return ChunkVectorEnv(inner, autoreset_mode="disabled")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["world_model", "metaworld"], default="world_model")
    parser.add_argument("--world-model-dir", default="outputs/drawer-open-v3/world_model")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=4, help="actions per gym step (metaworld only)")
    parser.add_argument("--num-steps", type=int, default=None, help="sampler steps (default: as trained)")
    parser.add_argument("--max-episode-steps", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    envs = make_env(args)
    chunk_size, action_dim = envs.single_action_space.shape
    policy = GaussianChunkPolicy(chunk_size, action_dim)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    history = []
    for iteration in range(args.iterations):
        start = time.perf_counter()
        obs, _ = envs.reset(seed=args.seed + iteration)
        running = np.ones(envs.num_envs, bool)
        returns = np.zeros(envs.num_envs)
        logps = []
        while running.any():
            dist = policy.distribution(obs["image"])
            sample = dist.sample()
            logps.append(dist.log_prob(sample).sum(1) * torch.from_numpy(running).float())  # finished envs: 0
            actions = sample.clamp(-1, 1).reshape(-1, chunk_size, action_dim).numpy()
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            returns += rewards * running
            running &= ~(terminated | truncated)
        advantages = torch.from_numpy((returns - returns.mean()) / (returns.std() + 1e-6)).float()
        loss = -(torch.stack(logps).sum(0) * advantages).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record = {"iteration": iteration, "mean_return": float(returns.mean()), "chunks": len(logps),
                  "seconds": round(time.perf_counter() - start, 2)}
        history.append(record)
        print(json.dumps(record), flush=True)
    envs.close()
    return {"history": history}


if __name__ == "__main__":
    main()
