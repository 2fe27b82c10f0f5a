"""Train the action-conditioned DiT on pre-encoded latents (``encode_dataset``'s file).

A training window at latent index ``s`` of an episode (``c`` = the tokenizer's temporal compression, 1 for the
per-frame VAE, 4 for Wan)::

    conditioning   latent frames s - C + 1 .. s        (before the episode start: frame 0 repeated, as at a reset)
    predicted      latent frames s + 1 .. s + P        (past the end: the last frame repeated)
    actions        c * s .. c * (s + P) - 1            (past the end: zero actions, which hold the arm still)

Latent frame ``k >= 1`` shows the frames produced by actions ``c (k - 1) .. c k - 1``. Actions are normalised
with the dataset statistics (q01..q99 -> [-1, 1]) and multiplied by ``action_scaler`` (Cosmos Predict 2.5: 20);
with ``action_integral_scale > 0`` their running sum since the episode start rides along
(:mod:`rlinf_wm.data.action_inputs`).

Run directory (``out_dir``)::

    model/                     the trained DiT (EMA weights when enabled): config.json + model.safetensors
    checkpoints/step_0000250/  model/ (raw weights) + state.pt (optimizer, scheduler, EMA, step, RNG)
    tensorboard/               loss, lr, grad norm, held-out loss, generated-vs-real sample strips
    train_config.json, metrics.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from rlinf_wm.config.world_model_config import DiTConfig, DiTTrainConfig
from rlinf_wm.data.action_inputs import DiTActionInputs
from rlinf_wm.data.latents import LatentEpisode
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.world_model_layout import WINDOW_KEYS
from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.flow_matching import flow_matching_loss
from rlinf_wm.models.samplers import FlowSampler
from rlinf_wm.runners.train_tokenizer import (
    CheckpointManager,
    make_summary_writer,
    restore_training_state,
    resume_latest,
    training_state,
    warmup_cosine,
)
from rlinf_wm.utils.checkpoint import load_model, save_model_atomic
from rlinf_wm.utils.compilation import resolve_compile
from rlinf_wm.utils.io import read_json, write_json_atomic
from rlinf_wm.utils.precision import require_finite, resolve_dtype, training_autocast


class LatentWindows:
    """All training windows of a set of latent episodes (see the module docstring); batches are torch tensors."""

    def __init__(
        self,
        episodes: Sequence[LatentEpisode],
        num_cond: int,
        num_pred: int,
        temporal_compression: int,
        inputs: DiTActionInputs,
        pad_start: bool = True,
        pad_end: bool = True,
    ) -> None:
        if not episodes:
            raise ValueError("LatentWindows needs at least one episode")
        self.num_cond, self.num_pred, self.compression = int(num_cond), int(num_pred), int(temporal_compression)
        self.latents: list[torch.Tensor] = []  # per episode [T', C, h, w] (frame-major for indexing)
        self.actions: list[torch.Tensor] = []  # per episode [c (T' - 1 + P), inputs.dim], zero-padded at the end
        action_dim = inputs.statistics.action_dim
        index = []
        for number, ep in enumerate(episodes):
            if ep.latents.ndim != 4:
                raise ValueError(f"latent episode {number}: latents must be [C, T', h, w], got {ep.latents.shape}")
            if ep.actions.ndim != 2 or ep.actions.shape[1] != action_dim:
                raise ValueError(
                    f"latent episode {number}: actions {ep.actions.shape} do not match the statistics' "
                    f"action_dim={action_dim}"
                )
            latents = torch.from_numpy(np.ascontiguousarray(ep.latents, np.float32)).permute(1, 0, 2, 3).contiguous()
            num_latents = latents.shape[0]
            needed = self.compression * (num_latents - 1 + self.num_pred)
            recorded = np.asarray(ep.actions[: self.compression * (num_latents - 1)], np.float32)
            padded = np.concatenate([recorded, np.zeros((needed - len(recorded), action_dim), np.float32)])
            self.latents.append(latents)
            self.actions.append(torch.from_numpy(inputs(padded)))
            first = 0 if pad_start else self.num_cond - 1
            last = num_latents - 2 if pad_end else num_latents - 1 - self.num_pred
            starts = np.arange(first, last + 1)
            index.append(np.stack([np.full_like(starts, number), starts], axis=1))
        self.index = np.concatenate(index) if index else np.zeros((0, 2), np.int64)
        if len(self.index) == 0:
            raise ValueError(
                f"no training windows: episodes are too short for {num_cond} conditioning + {num_pred} predicted latent "
                "frames (enable pad_start / pad_end or shorten the window)"
            )

    def __len__(self) -> int:
        return len(self.index)

    @property
    def num_frames(self) -> int:
        return self.num_cond + self.num_pred

    def window(self, episode: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents [C, T, h, w], actions [K, A])`` of one window."""
        latents, actions = self.latents[episode], self.actions[episode]
        last = latents.shape[0] - 1
        frames = np.clip(np.arange(start - self.num_cond + 1, start + self.num_pred + 1), 0, last)
        c = self.compression
        return latents[frames].permute(1, 0, 2, 3), actions[c * start : c * (start + self.num_pred)]

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0 [B, C, T, h, w], actions [B, K, A])`` for window rows ``rows``."""
        pairs = [self.window(int(e), int(s)) for e, s in self.index[rows]]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def condition_mask(self, batch: int, height: int, width: int) -> torch.Tensor:
        mask = torch.zeros(batch, 1, self.num_frames, height, width)
        mask[:, :, : self.num_cond] = 1.0
        return mask

    def evenly_spaced(self, count: int) -> np.ndarray:
        return np.linspace(0, len(self) - 1, max(1, min(count, len(self)))).round().astype(np.int64)


@torch.no_grad()
def heldout_loss(model, windows: LatentWindows, rows: np.ndarray, seed: int = 0, batch_size: int = 32) -> float:
    """Mean flow-matching loss over fixed windows, noise and flow times (evenly spread in (0, 1)); no dropout."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for chunk in np.array_split(rows, max(1, math.ceil(len(rows) / batch_size))):
        x0, actions = windows.batch(chunk)
        b = x0.shape[0]
        flow_time = (torch.arange(count, count + b, dtype=torch.float32) * 0.618034) % 1.0 * 0.98 + 0.01
        loss = flow_matching_loss(
            model, x0, windows.condition_mask(b, *x0.shape[-2:]), actions,
            noise=torch.randn(x0.shape, generator=generator), flow_time=flow_time,
            drop_actions=torch.zeros(b, dtype=torch.bool),
        )
        total += float(loss) * b
        count += b
    model.train(was_training)
    return total / max(1, count)


@torch.no_grad()
def sample_strip(model, tokenizer, windows: LatentWindows, rows: np.ndarray, num_steps: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[3, H', W']`` image: for each window, the real frames (top) above the generated ones (bottom)."""
    was_training = model.training
    model.eval()
    x0, actions = windows.batch(rows)
    mask = windows.condition_mask(x0.shape[0], *x0.shape[-2:])
    sampler = FlowSampler(solver="2ab", num_steps=num_steps, guidance=0.0)
    generated = sampler.sample(model, x0, mask, actions, generator=torch.Generator().manual_seed(seed))
    model.train(was_training)
    real = tokenizer.decode_to_uint8(x0).numpy()  # [B, T, H, W, 3]
    fake = tokenizer.decode_to_uint8(generated).numpy()
    rows_img = [np.concatenate([np.concatenate(list(r), 1), np.concatenate(list(f), 1)], 0) for r, f in zip(real, fake)]
    return np.concatenate(rows_img, 0).transpose(2, 0, 1)


def _changed_window_settings(run_dir: Path, cfg: DiTTrainConfig) -> dict:
    """{key: saved value} of the WINDOW_KEYS the DiT run in ``run_dir`` was trained with other values of."""
    saved_path = run_dir / "train_config.json"
    saved = read_json(saved_path).get("train", {}) if saved_path.is_file() else {}
    return {k: saved[k] for k in WINDOW_KEYS if k in saved and saved[k] != getattr(cfg, k)}


def _check_resume_config(out_dir: Path, cfg: DiTTrainConfig) -> None:
    changed = _changed_window_settings(out_dir, cfg)
    if changed:
        raise ValueError(f"{out_dir} holds a DiT run with different {list(changed)} ({list(changed.values())}); "
                         "use a new output directory or delete it to start over")


def _initial_dit(path: str | Path, model_kwargs: dict, cfg: DiTTrainConfig) -> ActionDiT:
    """The saved DiT at ``path``, which must have exactly the configured architecture and have been trained on the
    same windows and action inputs (else its weights answer other inputs)."""
    saved = read_json(Path(path) / "config.json")
    different = sorted(k for k, v in json.loads(json.dumps(model_kwargs)).items() if saved.get(k) != v)
    if different:
        raise ValueError(f"init DiT {path} differs from the configured DiT in {different} "
                         f"(saved {[saved.get(k) for k in different]}); refine with the same dit.* settings")
    changed = _changed_window_settings(Path(path).parent, cfg)
    if changed:
        raise ValueError(f"init DiT {path} was trained with train.dit.{list(changed)} = {list(changed.values())}; "
                         "refine with the same settings")
    return load_model(ActionDiT, path)


def train_dit(
    model_cfg: DiTConfig,
    cfg: DiTTrainConfig,
    train_episodes: Sequence[LatentEpisode],
    heldout_episodes: Sequence[LatentEpisode],
    statistics: ActionStatistics,
    out_dir: str | Path,
    temporal_compression: int = 1,
    tokenizer=None,
    progress: bool = True,
    init_weights: str | Path | None = None,
) -> dict:
    """Train (or resume from ``out_dir/checkpoints``) the DiT; returns the metrics also written to metrics.json.

    ``model_cfg`` must be resolved (:meth:`DiTConfig.resolved`). ``tokenizer`` (optional) decodes the sample strips.
    ``init_weights``: a saved DiT of the same architecture to start from instead of a random initialisation.
    """
    model_cfg.check("dit")
    cfg.check("train.dit")
    for name in ("latent_channels", "action_dim", "actions_per_latent_frame"):
        if getattr(model_cfg, name) is None:
            raise ValueError(f"dit.{name} must be resolved before training (DiTConfig.resolved)")
    if model_cfg.actions_per_latent_frame != temporal_compression:
        raise ValueError(
            f"dit.actions_per_latent_frame={model_cfg.actions_per_latent_frame} but the latents have temporal "
            f"compression {temporal_compression}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resume_config(out_dir, cfg)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    compute_dtype = resolve_dtype(cfg.precision, key="train.dit.precision")
    compiled = resolve_compile(cfg.compile, key="train.dit.compile")
    start_time = time.time()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data_rng = np.random.default_rng(cfg.seed)
    inputs = DiTActionInputs(statistics, cfg.action_scaler, cfg.action_integral_scale)
    if model_cfg.action_dim != inputs.dim:
        raise ValueError(f"dit.action_dim={model_cfg.action_dim} but the DiT's action inputs have {inputs.dim} channels "
                         f"(action_dim {statistics.action_dim}, action_integral_scale {cfg.action_integral_scale})")

    def make_windows(episodes, pad_start, pad_end):
        return LatentWindows(episodes, cfg.num_cond_latent_frames, cfg.num_pred_latent_frames, temporal_compression,
                             inputs, pad_start, pad_end)

    train = make_windows(train_episodes, cfg.pad_start, cfg.pad_end)
    held = make_windows(heldout_episodes, cfg.pad_start, cfg.pad_end) if heldout_episodes else None
    write_json_atomic(out_dir / "train_config.json", {
        "train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg),
        "init_weights": str(init_weights) if init_weights is not None else None,
    })

    model_kwargs = dataclasses.asdict(model_cfg)
    model = ActionDiT(**model_kwargs) if init_weights is None else _initial_dit(init_weights, model_kwargs, cfg)

    def build_optimizer(module):
        opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.min_lr / cfg.lr)
        )
        return opt, sched

    optimizer, scheduler = build_optimizer(model)
    checkpoints = CheckpointManager(out_dir / "checkpoints", cfg.keep_checkpoints)
    step, elapsed_before = 0, 0.0
    # diffusers' EMA ramps its decay as (1 + step) / (10 + step) up to ema_decay. A constant decay from step 0
    # kept decay^steps of the random initialisation in the average (22 % after 1500 steps at 0.999): the shipped
    # DiT's held-out loss then lagged the raw weights' by 10x.
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay) if cfg.ema_decay else None
    resumed = resume_latest(checkpoints, ActionDiT, model_kwargs)
    if resumed is not None:
        model, state = resumed
        optimizer, scheduler = build_optimizer(model)
        step = restore_training_state(state, optimizer, scheduler, data_rng)
        elapsed_before = float(state.get("elapsed_seconds", 0.0))
        # the EMA's state holds its decay: a changed train.dit.ema_decay would be silently replaced by the old one
        saved_decay = float(state["ema"]["decay"]) if "ema" in state else 0.0
        if saved_decay != float(cfg.ema_decay or 0.0):
            raise ValueError(f"checkpoint at step {step} in {out_dir / 'checkpoints'} was trained with "
                             f"train.dit.ema_decay={saved_decay}, now {cfg.ema_decay}; resume with the same settings "
                             "or start over")
        if ema is not None:
            ema = EMAModel(model.parameters(), decay=cfg.ema_decay)
            ema.load_state_dict(state["ema"])
    model.train()
    model.compile_forward = compiled
    resumed_from = step

    def averaged_model():
        """The weights to evaluate and ship: the EMA when enabled."""
        if ema is None:
            return model
        averaged = ActionDiT(**model_kwargs)
        ema.copy_to(averaged.parameters())
        return averaged.eval()

    writer = make_summary_writer(out_dir / "tensorboard")
    held_rows = held.evenly_spaced(128) if held is not None else None
    strip_rows = held.evenly_spaced(4) if held is not None else train.evenly_spaced(4)
    strip_windows = held if held is not None else train
    deadline = start_time + cfg.max_minutes * 60 if cfg.max_minutes else None
    history, stopped_early = [], False
    height, width = train.latents[0].shape[-2:]
    mask = train.condition_mask(cfg.batch_size, height, width)
    bar = tqdm(total=cfg.steps, initial=step, desc="dit", disable=not progress, dynamic_ncols=True)
    while step < cfg.steps:
        x0, actions = train.batch(data_rng.integers(0, len(train), cfg.batch_size))
        if cfg.cond_noise_std > 0:
            x0 = x0 + mask * torch.randn_like(x0) * cfg.cond_noise_std
        with training_autocast("cpu", compute_dtype):
            loss = flow_matching_loss(
                model, x0, mask, actions,
                logit_mean=cfg.logit_mean, logit_std=cfg.logit_std, shift=cfg.shift, action_dropout=cfg.action_dropout,
            )
        require_finite(loss, "DiT loss", step + 1, "train.dit.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        require_finite(grad_norm, "DiT gradient norm", step + 1, "train.dit.lr")
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.step(model.parameters())
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if held is not None and step % cfg.eval_every == 0 and step < cfg.steps:
            value = heldout_loss(averaged_model(), held, held_rows)
            writer.add_scalar("eval/loss", value, step)
            history.append({"step": step, "heldout_loss": value, "train_loss": loss.item()})
        if tokenizer is not None and step % cfg.sample_every == 0 and step < cfg.steps:
            strip = sample_strip(averaged_model(), tokenizer, strip_windows, strip_rows, cfg.sample_steps)
            writer.add_image("eval/real_top_generated_bottom", strip, step)
        out_of_time = deadline is not None and time.time() > deadline
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            state = training_state(step, optimizer, scheduler, data_rng, elapsed_before + time.time() - start_time)
            if ema is not None:
                state["ema"] = ema.state_dict()
            checkpoints.save(model, state, step)
        if out_of_time:
            stopped_early = True
            break
    bar.close()

    final = averaged_model()
    metrics = {"steps": step, "resumed_from_step": resumed_from, "stopped_early": stopped_early}
    if held is not None:
        metrics["heldout_loss"] = heldout_loss(final, held, held_rows)
        writer.add_scalar("eval/loss", metrics["heldout_loss"], step)
    metrics["train_loss_fixed_noise"] = heldout_loss(final, train, train.evenly_spaced(128))
    if tokenizer is not None:
        strip = sample_strip(final, tokenizer, strip_windows, strip_rows, cfg.sample_steps)
        writer.add_image("eval/real_top_generated_bottom", strip, step)
    writer.close()
    save_model_atomic(final, out_dir / "model")
    metrics.update(
        wall_seconds=elapsed_before + time.time() - start_time,
        train_windows=len(train),
        heldout_windows=len(held) if held is not None else 0,
        train_episodes=len(train_episodes),
        heldout_episodes=len(heldout_episodes),
        parameters=sum(p.numel() for p in final.parameters()),
        history=history,
        model_dir=str(out_dir / "model"),
    )
    write_json_atomic(out_dir / "metrics.json", json.loads(json.dumps(metrics)))
    return metrics
