"""Tokenizer reconstruction quality: train the default tokenizer on a dataset (or load a trained one) and
report held-out PSNR, wall and CPU time. The last line printed is one JSON object.

    python benchmarks/tokenizer_quality.py --data outputs/drawer-open-v3/data --out /tmp/tokenizer_bench
    python benchmarks/tokenizer_quality.py --data outputs/drawer-open-v3/data --model-dir outputs/drawer-open-v3/world_model/tokenizer/model

Options override the defaults of ``model/wm_tokenizer_per_frame.yaml`` / ``TokenizerTrainConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from rlinf_wm.config.validate import validate  # noqa: E402
from rlinf_wm.config.world_model_schema import TokenizerConfig, TokenizerTrainConfig  # noqa: E402

MODEL_YAML = Path(__file__).resolve().parents[1] / "examples/embodiment/config/model/wm_tokenizer_per_frame.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="directory of trajectory .hdf5 files")
    parser.add_argument("--out", default="/tmp/tokenizer_quality", help="training run directory")
    parser.add_argument("--model-yaml", default=str(MODEL_YAML), help="tokenizer architecture YAML")
    parser.add_argument("--model-dir", default=None, help="evaluate this trained tokenizer instead of training")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--holdout-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from rlinf_wm.data.trajectories import load_episodes
    from rlinf_wm.models.tokenizer import VideoTokenizer
    from rlinf_wm.runners.train_tokenizer import ClipSampler, evaluate_tokenizer, split_episodes, train_tokenizer
    from rlinf_wm.utils.checkpoint import load_model

    model_cfg = validate(OmegaConf.load(args.model_yaml), TokenizerConfig, "tokenizer")
    overrides = {"steps": args.steps, "batch_size": args.batch_size}
    train_cfg = TokenizerTrainConfig(
        **{k: v for k, v in overrides.items() if v is not None},
        num_threads=args.threads,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        checkpoint_every=10**9,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model_dir:
        tokenizer = load_model(VideoTokenizer, args.model_dir).eval()
        start = time.time()
        _, held = split_episodes(load_episodes(args.data), args.holdout_fraction, args.seed)
        result = evaluate_tokenizer(tokenizer, ClipSampler(held, train_cfg.clip_frames), max_frames=2048)
        report = {"heldout_psnr": result["psnr"], "heldout_frames": result["frames"], "eval_seconds": time.time() - start}
    else:
        metrics = train_tokenizer(train_cfg, args.data, args.out, model_cfg)
        report = {k: v for k, v in metrics.items() if k != "history"}
        report["train_config"] = dataclasses.asdict(train_cfg)
    report["model"] = dataclasses.asdict(model_cfg)
    report["torch_threads"] = torch.get_num_threads()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
