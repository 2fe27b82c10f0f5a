"""float32 against bfloat16 (autocast) for every network of the loop, on this machine, in one run.

For the tokenizer, the DiT, the reward model and the policy: one training step (forward under
``rlinf_wm.utils.precision.training_autocast``, backward, AdamW), and the inference passes the world-model env
runs (the DiT's forward at the env's batch with its weights cast, as ``WorldModelEnv(dtype=bfloat16)`` does, and
the tokenizer's decode under autocast). Models are the shipped default configs, randomly initialised (speed does
not depend on the weights); shapes are those of drawer-open-v3 at 64x64. Both precisions are timed alternately,
so load from other processes hits both alike; medians.

    .venv/bin/python benchmarks/precision_speed.py [--threads 2] [--repeats 7]

Prints ``bfloat16_speedup`` (float32 seconds / bfloat16 seconds) per measurement, and whether the hardware runs
bfloat16 natively (``auto`` picks it only then). Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlinf_wm.models.dit import ActionDiT  # noqa: E402
from rlinf_wm.models.flow_matching import flow_matching_loss  # noqa: E402
from rlinf_wm.models.reward_model import RewardModel  # noqa: E402
from rlinf_wm.models.tokenizer import VideoTokenizer  # noqa: E402
from rlinf_wm.utils.precision import autocast, native_bfloat16, training_autocast  # noqa: E402
from rlinf_wm.workers.policy_factory import build_policy  # noqa: E402

MODELS = ROOT / "examples" / "embodiment" / "config" / "model"
PRECISIONS = (torch.float32, torch.bfloat16)


def model_config(name: str, **resolved) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(MODELS / f"{name}.yaml"))
    cfg.update(resolved)
    return cfg


def training_step(model: torch.nn.Module, loss_fn):
    """One optimiser step per call; ``loss_fn(dtype)`` runs the forward under training autocast in ``dtype``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(dtype: torch.dtype) -> None:
        with training_autocast("cpu", dtype):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()

    return step


def interleaved(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds of each ``fns[name]()``, all timed in turn ``repeats`` times after one warm-up each."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def compare(name: str, per_dtype, repeats: int) -> dict:
    """``per_dtype(dtype)`` -> a no-argument function to time."""
    seconds = interleaved({str(d).removeprefix("torch."): per_dtype(d) for d in PRECISIONS}, repeats)
    result = {**{f"{k}_seconds": v for k, v in seconds.items()},
              "bfloat16_speedup": seconds["float32"] / seconds["bfloat16"]}
    print(f"{name}: float32 {seconds['float32'] * 1e3:.1f} ms, bfloat16 {seconds['bfloat16'] * 1e3:.1f} ms "
          f"({result['bfloat16_speedup']:.2f}x)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--env-batch", type=int, default=64, help="envs per DiT call at rollout (x2 with CFG)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"native_bfloat16": native_bfloat16("cpu"), "threads": args.threads}

    # tokenizer: a batch of 16 frames, as train.tokenizer; decode of one frame per env
    tokenizer = VideoTokenizer(**model_config("wm_tokenizer_per_frame"))
    frames = torch.rand(16, 3, 1, 64, 64) * 2 - 1

    def tokenizer_loss():
        recon, kl = tokenizer(frames)
        return (recon.float() - frames).abs().mean() + 1e-6 * kl

    step = training_step(tokenizer, tokenizer_loss)
    results["tokenizer_train_step"] = compare("tokenizer train step", lambda d: lambda: step(d), args.repeats)
    latents = torch.randn(args.env_batch, tokenizer.latent_channels, 1, tokenizer.latent_size, tokenizer.latent_size)

    def decode(dtype):
        def run():
            with torch.no_grad(), autocast("cpu", dtype):
                tokenizer.decode_to_uint8(latents)
        return run

    results["tokenizer_decode"] = compare(f"tokenizer decode x{args.env_batch}", decode, args.repeats)

    # DiT: 2 conditioning + 4 predicted latent frames, batch 32 as train.dit
    cond, pred, actions_per_frame = 2, 4, 1
    channels, size = tokenizer.latent_channels, tokenizer.latent_size
    dit = ActionDiT(**model_config("wm_dit_tiny", latent_channels=channels, action_dim=8,
                                   actions_per_latent_frame=actions_per_frame))

    def window(batch):
        x = torch.randn(batch, channels, cond + pred, size, size)
        mask = torch.zeros(batch, 1, cond + pred, size, size)
        mask[:, :, :cond] = 1
        return x, mask, torch.randn(batch, pred * actions_per_frame, 8)

    x0, mask, actions = window(32)
    step = training_step(dit, lambda: flow_matching_loss(dit, x0, mask, actions))
    results["dit_train_step"] = compare("DiT train step", lambda d: lambda: step(d), args.repeats)
    rollout_batch = 2 * args.env_batch  # both CFG branches in one call
    x, mask, actions = window(rollout_batch)
    level = torch.rand(rollout_batch)
    cast = {dtype: copy.deepcopy(dit).to(dtype).eval() for dtype in PRECISIONS}

    def dit_forward(dtype):
        def run():
            with torch.no_grad():
                cast[dtype](x.to(dtype), level.to(dtype), actions.to(dtype), mask.to(dtype))
        return run

    results["dit_rollout_forward"] = compare(f"DiT forward x{rollout_batch} (weights cast)", dit_forward, args.repeats)

    # reward model: a batch of 64 frames, as train.reward
    reward_model = RewardModel(**model_config("wm_reward_resnet"))
    images = torch.rand(64, 3, 64, 64)
    labels = (torch.rand(64) > 0.5).float()

    def reward_loss():
        logits = reward_model.head(reward_model.backbone(images).pooler_output.flatten(1)).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)

    step = training_step(reward_model, reward_loss)
    results["reward_train_step"] = compare("reward model train step", lambda d: lambda: step(d), args.repeats)

    # policy: a batch of 64 frames, as sft
    policy = build_policy({"model": model_config("tinyvla", image_size=64, action_dim=4, action_head="gaussian",
                                                 action_q01=[-1.0] * 4, action_q99=[1.0] * 4)})
    observations = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8)
    instructions = policy.instruction_tokenizer.encode(["open the drawer"] * 64)

    def policy_loss():
        logits, _ = policy(observations, instructions)
        return logits.float().logsumexp(-1).mean()

    step = training_step(policy, policy_loss)
    results["policy_train_step"] = compare("policy train step", lambda d: lambda: step(d), args.repeats)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
