"""How close does the tiny ActionDiT get to this machine's fp32 matmul speed, and is its per-frame forward worth it?

Measures (no grad, fp32, CPU):
- peak-ish fp32 matmul FLOP/s (1024^3 matmuls),
- the tiny DiT's FLOPs per forward (torch.utils.flop_counter) and achieved FLOP/s at the requested batch sizes,
- ActionDiT's default per-frame forward (``_per_frame_forward``: same modules, AdaLN modulation once per latent
  frame, zero cross-attention skipped) against diffusers' own forward (``use_diffusers_forward = True``, which
  repeats the modulation for every token). The project rule: use the per-frame path only if >= 1.5x faster.
  The two are timed alternately so load from other processes hits both alike.

Usage: .venv/bin/python benchmarks/dit_flops.py [--threads 1] [--batches 16 64] [--frames 13] [--repeats 3]
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlinf_wm.models.dit import ActionDiT  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def timed_pair(first, second, repeats: int) -> tuple[float, float]:
    """Median times of two functions measured alternately, so load from other processes hits both alike."""
    first(), second()  # warm-up
    first_samples, second_samples = [], []
    for _ in range(repeats):
        for fn, samples in ((first, first_samples), (second, second_samples)):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return statistics.median(first_samples), statistics.median(second_samples)


def matmul_flops_per_second(size: int, repeats: int) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = timed(lambda: torch.mm(a, b), repeats)
    return 2 * size**3 / seconds


def forward_with(model: ActionDiT, use_diffusers: bool, *args):
    model.use_diffusers_forward = use_diffusers
    try:
        return model(*args)
    finally:
        model.use_diffusers_forward = False


def dit_inputs(model: ActionDiT, batch: int, frames: int, cond_frames: int = 1, size: int = 8):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.latent_channels, frames, size, size, generator=generator)
    mask = torch.zeros(batch, 1, frames, size, size)
    mask[:, :, :cond_frames] = 1
    actions = torch.randn(batch, model.actions_per_latent_frame * (frames - cond_frames), model.action_dim,
                          generator=generator)
    return x, torch.rand(batch, generator=generator), actions, mask


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--frames", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = ActionDiT.from_preset("tiny").eval()
    with torch.no_grad():  # random weights everywhere (a fresh model zeroes its output layers)
        generator = torch.Generator().manual_seed(0)
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)

    peak = matmul_flops_per_second(1024, max(args.repeats, 5))
    print(f"threads={args.threads}  fp32 matmul 1024^3: {peak / 1e9:.1f} GFLOP/s")
    results = {"threads": args.threads, "matmul_gflops": peak / 1e9, "frames": args.frames,
               "params_millions": sum(p.numel() for p in model.parameters()) / 1e6, "batches": {}}
    with torch.no_grad():
        for batch in args.batches:
            x, s, actions, mask = dit_inputs(model, batch, args.frames)
            diffusers_call = lambda: forward_with(model, True, x, s, actions, mask)  # noqa: E731
            per_frame_call = lambda: forward_with(model, False, x, s, actions, mask)  # noqa: E731
            max_difference = (diffusers_call() - per_frame_call()).abs().max().item()
            flops = count_flops(diffusers_call)
            per_frame_flops = count_flops(per_frame_call)
            seconds, per_frame_seconds = timed_pair(diffusers_call, per_frame_call, args.repeats)
            entry = {
                "forward_seconds": seconds,
                "gflop_per_forward": flops / 1e9,
                "achieved_gflops": flops / seconds / 1e9,
                "fraction_of_matmul_peak": flops / seconds / peak,
                "per_frame_forward_seconds": per_frame_seconds,
                "per_frame_gflop_per_forward": per_frame_flops / 1e9,
                "per_frame_achieved_gflops": per_frame_flops / per_frame_seconds / 1e9,
                "per_frame_speedup": seconds / per_frame_seconds,
                "per_frame_max_abs_difference": max_difference,
            }
            results["batches"][str(batch)] = entry
            print(
                f"B={batch:3d} T={args.frames}: diffusers {seconds:.3f} s/forward, {flops / 1e9:.1f} GFLOP, "
                f"{entry['achieved_gflops']:.1f} GFLOP/s ({entry['fraction_of_matmul_peak']:.0%} of matmul) | "
                f"per-frame (default) {per_frame_seconds:.3f} s, {per_frame_flops / 1e9:.1f} GFLOP, "
                f"speedup {entry['per_frame_speedup']:.2f}x (max |diff| {max_difference:.1e})"
            )
    speedups = [entry["per_frame_speedup"] for entry in results["batches"].values()]
    results["use_per_frame_implementation"] = min(speedups) >= 1.5
    print(json.dumps(results))


if __name__ == "__main__":
    main()
