"""Train the video tokenizer on recorded trajectories.

Run directory written by :func:`train_tokenizer` (``out_dir``)::

    model/                     the trained tokenizer (config.json + model.safetensors, latent stats inside)
    checkpoints/step_0000500/  model/ + state.pt (optimizer, scheduler, step, RNG); the newest resumes
    tensorboard/               scalars and a reconstruction grid (top: input, bottom: reconstruction)
    metrics.json               held-out PSNR, wall time, ...

The latent dataset format (pre-encoded episodes for the DiT) is in :mod:`rlinf_wm.data.latents`.

A "step" here is one optimizer update; helpers shared with the reward-model trainer live here too.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rlinf_wm.config.world_model_schema import TokenizerConfig, TokenizerTrainConfig
from rlinf_wm.data.trajectories import Episode, load_episodes
from rlinf_wm.models.tokenizer import VideoTokenizer, frames_to_model_input
from rlinf_wm.utils.checkpoint import load_model, load_state, save_model_atomic, save_state_atomic
from rlinf_wm.utils.io import json_round_trip, read_json, write_json_atomic
from rlinf_wm.utils.precision import require_finite, resolve_dtype, training_autocast



# ------------------------------------------------------------------------------ shared helpers
def split_episodes(episodes: Sequence[Episode], holdout_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Random split by episode (frames of one episode never straddle train and held-out).

    For one seed, the held-out set of a smaller fraction is a prefix of that of a larger one, so stages that
    hold out more episodes never train on an episode a later evaluation holds out.
    """
    if len(episodes) < 2:
        raise ValueError(f"need at least 2 episodes to hold some out for evaluation, got {len(episodes)}")
    order = np.random.default_rng(seed).permutation(len(episodes))
    num_held = min(len(episodes) - 1, max(1, round(holdout_fraction * len(episodes))))
    held = {int(i) for i in order[:num_held]}
    train = [ep for i, ep in enumerate(episodes) if i not in held]
    return train, [ep for i, ep in enumerate(episodes) if i in held]


def split_indices(num_episodes: int, holdout_fraction: float, seed: int,
                  segments: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of ``num_episodes`` episodes, as :func:`split_episodes` splits them.

    ``segments``: the episode counts at which a refit (``refine_from``) appended new episodes, in order. Segment k
    (from ``segments[k - 1]``, or 0, to the next) is split on its own with ``seed + k``, so each refit keeps the
    split its source made (segment 0 is the first world model's data, split as ``split_episodes`` splits it) and
    never holds out an episode its source trained on, which one permutation of the larger count would. Each
    segment keeps the prefix property.
    """
    bounds = [0, *[int(b) for b in segments if 0 < int(b) < num_episodes], num_episodes]
    if bounds != sorted(bounds):
        raise ValueError(f"split segments must increase, got {list(segments)}")
    train, held = [], []
    for k, (begin, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = list(range(begin, end))
        part_train, part_held = split_episodes(part, holdout_fraction, seed + k) if len(part) > 1 else (part, [])
        train += part_train
        held += part_held
    return train, held


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CheckpointManager:
    """``checkpoints/step_N/{model/, state.pt}``; state.pt is written last, so a directory without it is
    an interrupted save and is ignored on resume. Only the newest ``keep`` checkpoints are kept."""

    def __init__(self, root: str | os.PathLike, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def complete(self) -> list[tuple[int, Path]]:
        found = []
        if self.root.is_dir():
            for path in self.root.iterdir():
                match = re.fullmatch(r"step_(\d+)", path.name)
                if match and (path / "state.pt").is_file():
                    found.append((int(match.group(1)), path))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1][1] if found else None

    def save(self, model, state: dict, step: int) -> Path:
        path = self.root / f"step_{step:07d}"
        save_model_atomic(model, path / "model")
        save_state_atomic(state, path / "state.pt")
        for _, old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path


def rng_state(data_rng: np.random.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": data_rng.bit_generator.state,
        "python": repr(random.getstate()),  # repr keeps the state loadable with weights_only=True
    }


def restore_rng_state(state: dict, data_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_rng.bit_generator.state = state["numpy"]
    version, internal, gauss = ast.literal_eval(state["python"])
    random.setstate((version, tuple(internal), gauss))


def resume_latest(checkpoints: CheckpointManager, model_cls: type, model_kwargs: dict):
    """``(model, state)`` from the newest complete checkpoint, or ``None``; refuses a different architecture."""
    latest = checkpoints.latest()
    if latest is None:
        return None
    saved = read_json(latest / "model" / "config.json") if (latest / "model" / "config.json").is_file() else {}
    mismatched = sorted(k for k, v in model_kwargs.items() if k in saved and json_round_trip(saved[k]) != json_round_trip(v))
    if mismatched:
        raise ValueError(
            f"checkpoint {latest} was trained with a different model config ({mismatched}); "
            "use a new out_dir or delete its checkpoints/ to start over"
        )
    return load_model(model_cls, latest / "model"), load_state(latest / "state.pt")


def restore_training_state(state: dict, optimizer, scheduler, data_rng: np.random.Generator) -> int:
    """Restore optimizer, scheduler and RNG streams; returns the step to continue from."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"], data_rng)
    return int(state["step"])


def training_state(step: int, optimizer, scheduler, data_rng, elapsed: float) -> dict:
    return {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(data_rng),
        "elapsed_seconds": elapsed,
    }


def make_summary_writer(log_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


# -------------------------------------------------------------------------------- tokenizer data
class ClipSampler:
    """Random clips of ``clip_frames`` consecutive frames from a list of episodes."""

    def __init__(self, episodes: Sequence[Episode], clip_frames: int):
        self.frames = [ep.frames for ep in episodes]
        self.clip_frames = clip_frames
        self.starts = np.array(
            [(e, s) for e, f in enumerate(self.frames) for s in range(len(f) - clip_frames + 1)], dtype=np.int64
        )
        if len(self.starts) == 0:
            raise ValueError(f"no episode has {clip_frames} frames for a training clip")

    def __len__(self) -> int:
        return len(self.starts)

    def clips(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``[B, clip_frames, H, W, 3]``."""
        return np.stack([self.frames[e][s : s + self.clip_frames] for e, s in self.starts[indices]])

    def sample(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        return self.clips(rng.integers(0, len(self.starts), size=batch_size))

    def evenly_spaced(self, max_frames: int) -> np.ndarray:
        count = max(1, min(len(self.starts), max_frames // self.clip_frames))
        return np.linspace(0, len(self.starts) - 1, count).round().astype(np.int64)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, cfg: TokenizerTrainConfig) -> dict[str, torch.Tensor]:
    losses = {
        "l1": (recon - target).abs().mean(),
        "mse": (recon - target).pow(2).mean(),
    }
    if cfg.gradient_loss_weight > 0:
        # L1 between horizontal / vertical finite differences: penalises blurred edges more than plain L1.
        dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
        dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
        losses["gradient"] = (dx(recon) - dx(target)).abs().mean() + (dy(recon) - dy(target)).abs().mean()
    return losses


def psnr_uint8(original: np.ndarray | torch.Tensor, reconstructed: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB between uint8 frames ``[N, H, W, 3]``."""
    a = torch.as_tensor(original).float().flatten(1)
    b = torch.as_tensor(reconstructed).float().flatten(1)
    mse = (a - b).pow(2).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(255.0**2 / mse)


@torch.no_grad()
def evaluate_tokenizer(tokenizer: VideoTokenizer, sampler: ClipSampler, max_frames: int, batch_size: int = 32) -> dict:
    """Held-out reconstruction quality of the deterministic (posterior-mean) path, after uint8 rounding."""
    was_training = tokenizer.training
    tokenizer.eval()
    indices = sampler.evenly_spaced(max_frames)
    psnrs = []
    for chunk in np.array_split(indices, max(1, math.ceil(len(indices) / batch_size))):
        clips = sampler.clips(chunk)
        recon = tokenizer.decode_to_uint8(tokenizer.encode(clips))
        psnrs.append(psnr_uint8(clips.reshape(-1, *clips.shape[2:]), recon.reshape(-1, *recon.shape[2:])))
    tokenizer.train(was_training)
    psnr = torch.cat(psnrs)
    return {"psnr": float(psnr.mean()), "psnr_min": float(psnr.min()), "frames": int(psnr.numel())}


def reconstruction_grid(tokenizer: VideoTokenizer, clips: np.ndarray) -> np.ndarray:
    """uint8 ``[3, 2H, N*W]`` image: inputs on top, reconstructions below (first frame of each clip)."""
    with torch.no_grad():
        recon = tokenizer.decode_to_uint8(tokenizer.encode(clips))[:, 0].numpy()
    top = np.concatenate(list(clips[:, 0]), axis=1)
    bottom = np.concatenate(list(recon), axis=1)
    return np.concatenate([top, bottom], axis=0).transpose(2, 0, 1)


# ------------------------------------------------------------------------------------- training
def train_tokenizer(
    cfg: TokenizerTrainConfig,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_cfg: TokenizerConfig | None = None,
    episodes: Sequence[Episode] | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) a tokenizer on ``data_dir``; writes the run directory described above.

    ``episodes`` may be given instead of reading ``data_dir`` (tests). Returns the metrics dict that is
    also written to ``metrics.json``.
    """
    model_cfg = model_cfg or TokenizerConfig()
    model_cfg.check("model")
    cfg.check("train")
    if model_cfg.kind == "wan" and (cfg.clip_frames - 1) % model_cfg.temporal_compression:
        raise ValueError(
            f"train.clip_frames={cfg.clip_frames}: the wan tokenizer needs 1 + {model_cfg.temporal_compression}k frames"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    compute_dtype = resolve_dtype(cfg.precision, key="train.tokenizer.precision")
    start_time, start_cpu = time.time(), time.process_time()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data_rng = np.random.default_rng(cfg.seed)

    episodes = list(episodes) if episodes is not None else load_episodes(data_dir)
    train_eps, held_eps = split_episodes(episodes, cfg.holdout_fraction, cfg.seed)
    train_sampler = ClipSampler(train_eps, cfg.clip_frames)
    held_sampler = ClipSampler(held_eps, cfg.clip_frames)
    write_json_atomic(out_dir / "train_config.json", {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg)})

    model_kwargs = dataclasses.asdict(model_cfg)
    tokenizer = VideoTokenizer(**model_kwargs)
    if cfg.init_logvar is not None:
        tokenizer.init_posterior_logvar(cfg.init_logvar)
    checkpoints = CheckpointManager(out_dir / "checkpoints", cfg.keep_checkpoints)

    def build_optimizer(module):
        opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.min_lr / cfg.lr)
        )
        return opt, sched

    optimizer, scheduler = build_optimizer(tokenizer)
    step, elapsed_before = 0, 0.0
    resumed = resume_latest(checkpoints, VideoTokenizer, model_kwargs)
    if resumed is not None:
        tokenizer, state = resumed
        optimizer, scheduler = build_optimizer(tokenizer)
        step = restore_training_state(state, optimizer, scheduler, data_rng)
        elapsed_before = float(state.get("elapsed_seconds", 0.0))
    tokenizer.train()

    writer = make_summary_writer(out_dir / "tensorboard")
    grid_clips = held_sampler.clips(held_sampler.evenly_spaced(8 * cfg.clip_frames)[:8])
    deadline = start_time + cfg.max_minutes * 60 if cfg.max_minutes else None
    history = []
    bar = tqdm(total=cfg.steps, initial=step, desc="tokenizer", disable=not progress, dynamic_ncols=True)
    stopped_early = False
    while step < cfg.steps:
        x = frames_to_model_input(train_sampler.sample(data_rng, cfg.batch_size))
        with training_autocast("cpu", compute_dtype):
            recon, kl = tokenizer(x)
        parts = reconstruction_loss(recon.float(), x, cfg)
        loss = (
            cfg.l1_weight * parts["l1"]
            + cfg.mse_weight * parts["mse"]
            + cfg.gradient_loss_weight * parts.get("gradient", 0.0)
            + cfg.kl_weight * kl
        )
        require_finite(loss, "tokenizer loss", step + 1, "train.tokenizer.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), cfg.grad_clip)
        require_finite(grad_norm, "tokenizer gradient norm", step + 1, "train.tokenizer.lr")
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            train_psnr = 10 * math.log10(4.0 / max(parts["mse"].item(), 1e-10))  # [-1,1] range -> peak 2
            scalars = {"loss": loss.item(), "kl": kl.item(), "grad_norm": float(grad_norm), "psnr": train_psnr}
            scalars.update({k: v.item() for k, v in parts.items()})
            for key, value in scalars.items():
                writer.add_scalar(f"train/{key}", value, step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{train_psnr:.1f}")
        if step % cfg.eval_every == 0 and step < cfg.steps:
            result = evaluate_tokenizer(tokenizer, held_sampler, cfg.eval_max_frames)
            writer.add_scalar("eval/psnr", result["psnr"], step)
            writer.add_image("eval/reconstruction", reconstruction_grid(tokenizer, grid_clips), step)
            history.append({"step": step, **result})
        out_of_time = deadline is not None and time.time() > deadline
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            elapsed = elapsed_before + time.time() - start_time
            checkpoints.save(tokenizer, training_state(step, optimizer, scheduler, data_rng, elapsed), step)
        if out_of_time:
            stopped_early = True
            break
    bar.close()

    # Normalisation statistics from training frames only; the held-out PSNR below uses them too.
    tokenizer.eval()
    stats_index = train_sampler.evenly_spaced(cfg.stats_max_frames)
    tokenizer.fit_latent_statistics(train_sampler.clips(chunk) for chunk in np.array_split(stats_index, max(1, len(stats_index) // 64)))
    result = evaluate_tokenizer(tokenizer, held_sampler, cfg.eval_max_frames)
    train_result = evaluate_tokenizer(tokenizer, train_sampler, min(cfg.eval_max_frames, 256))
    writer.add_scalar("eval/psnr", result["psnr"], step)
    writer.add_image("eval/reconstruction", reconstruction_grid(tokenizer, grid_clips), step)
    writer.close()
    save_model_atomic(tokenizer, out_dir / "model")
    with torch.no_grad():
        sample_latents = tokenizer.encode(train_sampler.clips(stats_index[:64]))
    metrics = {
        "heldout_psnr": result["psnr"],
        "heldout_psnr_min": result["psnr_min"],
        "heldout_frames": result["frames"],
        "train_psnr": train_result["psnr"],
        "steps": step,
        "stopped_early": stopped_early,
        "wall_seconds": elapsed_before + time.time() - start_time,
        # CPU seconds of this process (all threads) since this call started: comparable on a shared machine
        "cpu_seconds": time.process_time() - start_cpu,
        "train_episodes": len(train_eps),
        "heldout_episodes": len(held_eps),
        "latent_shape_per_clip": list(sample_latents.shape[1:]),
        "normalised_latent_std": float(sample_latents.std()),
        "history": history,
        "model_dir": str(out_dir / "model"),
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics
