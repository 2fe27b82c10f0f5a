"""Eager against ``torch.compile`` for the passes the project can compile, on this machine, in one run.

The DiT's training step (bfloat16 autocast where native, as ``train.dit.precision: auto``), the DiT's rollout
forward at the env's batch (both CFG branches, weights in the env's dtype), and the per-frame tokenizer's decode
of one frame per env, its encode of two frames per env and the reward model's scoring of one (each also in float32
eager, the env's path before they ran in its dtype; with how far the outputs move), as
``WorldModelEnv(compile=True)`` runs them; and, to show why they stay eager, the
tokenizer's and the reward model's training steps with their whole module compiled. Models are the shipped default configs,
randomly initialised (speed does not depend on the weights), at the drawer-open-v3 shapes. Each compiled variant's
first call (the compile) is timed on its own; then eager and compiled are timed alternately, so load from other
processes hits both alike; medians. Inductor's on-disk cache makes compiles after the first run of a machine
shorter: ``--cold`` points it at a fresh directory.

    .venv/bin/python benchmarks/compile_speed.py [--threads 2] [--repeats 7] [--env-batch 64] [--cold]
        [--world-model-dir outputs/drawer-open-v3/world_model]

Prints ``compiled_speedup`` (eager seconds / compiled seconds) and ``compile_seconds`` per measurement. Prints one
JSON object as its last line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def env_models(world_model_dir: str | None, tokenizer):
    """(tokenizer, reward model, uint8 reset frames [N, H, W, 3]) of a trained world model, or the default configs
    randomly initialised with random frames (speed only)."""
    import numpy as np

    from precision_speed import model_config

    from rlinf_wm.models.reward_model import RewardModel

    if world_model_dir and (Path(world_model_dir) / "world_model.json").is_file():
        from rlinf_wm.envs.world_model_parts import load_world_model_parts

        parts = load_world_model_parts(world_model_dir)
        return parts.tokenizer, parts.reward_model, parts.initial_states.frames[:, -1]
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    return tokenizer, RewardModel(**model_config("wm_reward_resnet")).eval(), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--env-batch", type=int, default=64, help="envs per DiT call at rollout (x2 with CFG)")
    parser.add_argument("--cold", action="store_true", help="compile without inductor's on-disk cache")
    parser.add_argument("--world-model-dir", default=None,
                        help="a trained world model: its tokenizer, reward model and reset frames for the env rows")
    args = parser.parse_args()
    if args.cold:  # before torch is imported, so inductor reads it
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")

    import numpy as np
    import torch
    from precision_speed import interleaved, model_config, training_step

    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.models.flow_matching import flow_matching_loss
    from rlinf_wm.models.reward_model import RewardModel, compiled_logits
    from rlinf_wm.models.tokenizer import VideoTokenizer, compiled_decode_to_uint8, compiled_encode
    from rlinf_wm.utils.compilation import compiler_available
    from rlinf_wm.utils.precision import autocast, resolve_dtype

    if not compiler_available("cpu"):
        raise SystemExit("compile_speed: torch.compile on CPU needs a C++ compiler (c++, g++ or clang++ on PATH)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = resolve_dtype("auto")
    results = {"threads": args.threads, "dtype": str(dtype).removeprefix("torch."), "cold_cache": args.cold}

    def compare(name: str, eager, compiled) -> None:
        start = time.perf_counter()
        compiled()
        compile_seconds = time.perf_counter() - start
        seconds = interleaved({"eager": eager, "compiled": compiled}, args.repeats)
        results[name] = {"eager_seconds": seconds["eager"], "compiled_seconds": seconds["compiled"],
                         "compiled_speedup": seconds["eager"] / seconds["compiled"], "compile_seconds": compile_seconds}
        print(f"{name}: eager {seconds['eager'] * 1e3:.1f} ms, compiled {seconds['compiled'] * 1e3:.1f} ms "
              f"({results[name]['compiled_speedup']:.2f}x); first compiled call {compile_seconds:.1f} s", flush=True)

    tokenizer = VideoTokenizer(**model_config("wm_tokenizer_per_frame")).eval()
    channels, size = tokenizer.latent_channels, tokenizer.latent_size
    cond, pred = 2, 4  # the drawer-open world model's window; 8 action inputs = 4 actions + their running sums
    dit = ActionDiT(**model_config("wm_dit_tiny", latent_channels=channels, action_dim=8, actions_per_latent_frame=1))

    def window(batch):
        x = torch.randn(batch, channels, cond + pred, size, size)
        mask = torch.zeros(batch, 1, cond + pred, size, size)
        mask[:, :, :cond] = 1
        return x, mask, torch.randn(batch, pred, 8)

    def training_variants(module, make_loss):
        """Eager and compiled training-step callables; ``make_loss(model, compiled)`` -> a no-argument loss."""
        variants = {}
        for flag in (False, True):
            model = copy.deepcopy(module)
            loss = make_loss(model, flag)
            step = training_step(model, loss)
            variants[flag] = lambda step=step: step(dtype)
        return variants[False], variants[True]

    # DiT training step: batch 32 as train.dit, optimizer included
    x0, mask, actions = window(32)

    def dit_step_loss(model, flag):
        model.compile_forward = flag
        return lambda: flow_matching_loss(model, x0, mask, actions)

    compare("dit_train_step", *training_variants(dit, dit_step_loss))

    # DiT rollout forward: both CFG branches of the env's batch in one call, weights cast as the env casts them
    rows = 2 * args.env_batch
    x, mask, actions = (t.to(dtype) for t in window(rows))
    level = torch.rand(rows, dtype=dtype)
    cast = {flag: copy.deepcopy(dit).to(dtype).eval() for flag in (False, True)}
    cast[True].compile_forward = True

    def forward(flag):
        def run():
            with torch.no_grad():
                cast[flag](x, level, actions, mask)
        return run

    compare(f"dit_rollout_forward_x{rows}", forward(False), forward(True))

    # decode one frame per env under the env's autocast
    latents = torch.randn(args.env_batch, channels, 1, size, size)

    def decode(fn):
        def run():
            with torch.no_grad(), autocast("cpu", dtype):
                fn(tokenizer, latents)
        return run

    compare(f"tokenizer_decode_x{args.env_batch}", decode(VideoTokenizer.decode_to_uint8), decode(compiled_decode_to_uint8()))

    # The env's re-encoding (two frames per env) and scoring (one per env): float32 eager (the env before they ran
    # in its dtype), in the env's dtype eager, and compiled as WorldModelEnv(compile=True) runs them; and how far
    # the compiled low-precision outputs are from float32's (meaningful with --world-model-dir's trained models)
    encoder, scorer, reset_frames = env_models(args.world_model_dir, tokenizer)
    frames = torch.from_numpy(np.resize(reset_frames, (2 * args.env_batch, *reset_frames.shape[1:])))[:, None]
    logits = compiled_logits()

    def env_part(fn, low_precision: bool):
        def run():
            with torch.no_grad(), autocast("cpu", dtype if low_precision else torch.float32):
                return fn()
        return run

    for name, eager, compiled in (
        (f"env_encode_x{len(frames)}", lambda: encoder.encode(frames), lambda: compiled_encode()(encoder, frames)),
        (f"env_reward_x{args.env_batch}", lambda: scorer(frames[: args.env_batch, 0]),
         lambda: logits(scorer, frames[: args.env_batch, 0])),
    ):
        start = time.perf_counter()
        low = env_part(compiled, True)()
        compile_seconds = time.perf_counter() - start
        full = env_part(eager, False)()
        seconds = interleaved({"float32_eager": env_part(eager, False), "eager": env_part(eager, True),
                               "compiled": env_part(compiled, True)}, args.repeats)
        if "encode" in name:
            error = float(((low.float() - full) ** 2).mean() / full.var())
            agreement = {"relative_mse": error, "snr_db": -10 * math.log10(error)}
        else:
            agreement = {"max_probability_difference": float((torch.sigmoid(low.float()) - torch.sigmoid(full)).abs().max())}
        results[name] = {**{f"{k}_seconds": v for k, v in seconds.items()}, "compile_seconds": compile_seconds,
                         "compiled_over_float32_eager": seconds["float32_eager"] / seconds["compiled"], **agreement}
        print(f"{name}: float32 eager {seconds['float32_eager'] * 1e3:.1f} ms, {results['dtype']} eager "
              f"{seconds['eager'] * 1e3:.1f} ms, compiled {seconds['compiled'] * 1e3:.1f} ms "
              f"({results[name]['compiled_over_float32_eager']:.2f}x); {agreement}", flush=True)

    # not compiled by the project: the tokenizer's training step (batch 16) and the reward model's (batch 64)
    frames = torch.rand(16, 3, 1, 64, 64) * 2 - 1
    images, labels = torch.rand(64, 3, 64, 64), (torch.rand(64) > 0.5).float()

    def tokenizer_step_loss(model, flag):
        forward = torch.compile(model) if flag else model  # the wrapper shares the parameters

        def loss():
            recon, kl = forward(frames)
            return (recon.float() - frames).abs().mean() + 1e-6 * kl
        return loss

    def reward_step_loss(model, flag):
        backbone = torch.compile(model.backbone) if flag else model.backbone

        def loss():
            logits = model.head(backbone(images).pooler_output.flatten(1)).squeeze(1)
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        return loss

    compare("tokenizer_train_step", *training_variants(tokenizer.train(), tokenizer_step_loss))
    compare("reward_train_step", *training_variants(RewardModel(**model_config("wm_reward_resnet")), reward_step_loss))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
