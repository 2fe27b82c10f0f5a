"""Distil the guided multi-step DiT (the teacher) into a student that samples in one or two Euler steps, no CFG.

The teacher's sampler (e.g. 4 "2ab" steps with guidance: 7-8 DiT row-passes per chunk) maps a noise draw ``z``,
clean conditioning latents and actions to one sample ``x0_T``. That map is deterministic, so it can be learnt
directly (Luhman & Luhman 2021, "Knowledge Distillation in Iterative Generative Models"). Here it is learnt as a
straight flow, as in rectified flow's reflow (Liu et al. 2022, "Flow Straight and Fast"): the student, initialised
with the teacher's weights, is trained with the ordinary flow-matching loss on the pairs, at the flow times of its
own Euler schedule only, on the straight line between ``x0_T`` and the noise end

    z' = (z - (1 - s0) x0_T) / s0        so that   s0 z' + (1 - s0) x0_T = z   at the first flow time s0.

The student's first Euler step from ``z`` at ``s0`` is then exactly the line's endpoint if it learns the pairs;
further steps land on the same line. Guidance is baked in (the pairs are guided samples), so the student runs
one branch (``guidance = 0``) and actions are never dropped. Its sampler settings go with it into
``world_model.json`` (``distilled_sampler``); the env uses them with ``distilled: true`` (or ``auto``).

The pairs come from training windows (real conditioning latents); a few from held-out windows measure the
student's distance to the teacher against the teacher's own one-step, unguided sample at the same cost.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlinf_wm.config.world_model_config import DistillConfig
from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.flow_matching import flow_matching_loss
from rlinf_wm.models.samplers import FlowSampler
from rlinf_wm.runners.train_dit import LatentWindows
from rlinf_wm.runners.train_tokenizer import make_summary_writer, warmup_cosine
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.utils.compilation import resolve_compile
from rlinf_wm.utils.io import write_json_atomic
from rlinf_wm.utils.precision import require_finite, resolve_dtype, training_autocast


def student_sampler(teacher: FlowSampler, num_steps: int) -> FlowSampler:
    """Euler on the teacher's flow-time schedule with ``num_steps`` steps, one branch (guidance baked in)."""
    return FlowSampler(solver="euler", num_steps=num_steps, guidance=0.0, sigma_min=teacher.sigma_min,
                       sigma_max=teacher.sigma_max, rho=teacher.rho)


@torch.no_grad()
def sample_windows(model: ActionDiT, sampler: FlowSampler, windows: LatentWindows, rows: np.ndarray,
                   noise: torch.Tensor, batch_size: int, dtype: torch.dtype, progress: bool = False,
                   desc: str = "teacher") -> torch.Tensor:
    """float32 samples ``[N, C, T, h, w]`` of ``model`` for window ``rows`` (clean conditioning frames kept) from
    ``noise`` ``[N, C, T, h, w]``, computed in ``dtype`` in batches of ``batch_size``."""
    was_training = model.training
    model.eval()
    out = []
    bounds = range(0, len(rows), batch_size)
    for start in tqdm(bounds, desc=desc, disable=not progress, dynamic_ncols=True):
        chunk = rows[start : start + batch_size]
        x0, actions = windows.batch(chunk)
        mask = windows.condition_mask(len(chunk), *x0.shape[-2:])
        sample = sampler.sample(model, x0.to(dtype), mask.to(dtype), actions.to(dtype),
                                noise=noise[start : start + len(chunk)].to(dtype))
        out.append(sample.float())
    model.train(was_training)
    return torch.cat(out)


def line_noise(noise: torch.Tensor, target: torch.Tensor, first_time: float) -> torch.Tensor:
    """The noise end ``z'`` of the straight line through ``target`` (s = 0) and ``noise`` (s = ``first_time``)."""
    return (noise - (1.0 - first_time) * target) / first_time


def predicted_mse(a: torch.Tensor, b: torch.Tensor, num_cond: int) -> float:
    """Mean squared difference over the predicted (non-conditioning) latent frames of ``[N, C, T, h, w]``."""
    return float(((a[:, :, num_cond:] - b[:, :, num_cond:]) ** 2).mean())


def distill_dit(
    teacher: ActionDiT,
    teacher_sampler: FlowSampler,
    cfg: DistillConfig,
    train_windows: LatentWindows,
    heldout_windows: LatentWindows | None,
    out_dir: str | Path,
    progress: bool = True,
) -> dict:
    """Train the student into ``out_dir/model``; returns the metrics also written to ``out_dir/metrics.json``.

    The run restarts from scratch when interrupted (no mid-run checkpoints: it is short next to the DiT's).
    """
    cfg.check("train.distill")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    started = time.time()
    dtype = resolve_dtype(cfg.precision, key="train.distill.precision")
    compiled = resolve_compile(cfg.compile, key="train.distill.compile")
    generator = torch.Generator().manual_seed(cfg.seed)
    data_rng = np.random.default_rng(cfg.seed)
    student_sampling = student_sampler(teacher_sampler, cfg.num_steps)
    flow_times = student_sampling.sigmas()[:-1].float()  # the student's own solver points, s0 first
    num_cond = train_windows.num_cond

    frozen = copy.deepcopy(teacher).to(dtype).eval()
    frozen.compile_forward = compiled
    shape = train_windows.window(*train_windows.index[0])[0].shape

    def teacher_pairs(windows: LatentWindows, rows: np.ndarray, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn((len(rows), *shape), generator=generator)
        target = sample_windows(frozen, teacher_sampler, windows, rows, noise, cfg.pair_batch_size, dtype,
                                progress, desc)
        return noise, target

    pair_started = time.time()
    rows = data_rng.choice(len(train_windows), cfg.num_pairs, replace=cfg.num_pairs > len(train_windows))
    noise, target = teacher_pairs(train_windows, rows, "teacher pairs")
    pair_seconds = time.time() - pair_started
    line = line_noise(noise, target, float(flow_times[0]))

    student = copy.deepcopy(teacher).float().train()
    student.compile_forward = compiled
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.steps, cfg.warmup_steps, cfg.min_lr / cfg.lr))
    writer = make_summary_writer(out_dir / "tensorboard")
    no_drop = torch.zeros(cfg.batch_size, dtype=torch.bool)
    height, width = shape[-2:]
    mask = train_windows.condition_mask(cfg.batch_size, height, width)
    losses = []
    for step in tqdm(range(1, cfg.steps + 1), desc="distill", disable=not progress, dynamic_ncols=True):
        batch = data_rng.integers(0, len(rows), cfg.batch_size)
        _, actions = train_windows.batch(rows[batch])
        times = flow_times[torch.from_numpy(data_rng.integers(0, len(flow_times), cfg.batch_size))]
        with training_autocast("cpu", dtype):
            loss = flow_matching_loss(student, target[batch], mask, actions, noise=line[batch], flow_time=times,
                                      drop_actions=no_drop)
        require_finite(loss, "distillation loss", step, "train.distill.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        require_finite(grad_norm, "distillation gradient norm", step, "train.distill.lr")
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
    writer.close()
    student.eval()
    student.compile_forward = False
    save_model_atomic(student, out_dir / "model")
    student.to(dtype)  # evaluated as the env runs it

    def compare(prefix: str, windows: LatentWindows, rows: np.ndarray, noise: torch.Tensor,
                teacher_samples: torch.Tensor) -> dict:
        """The student's distance to the teacher against the teacher's own at the student's cost (its sampler
        unguided); for scale, both samples' distance to the recorded latents and the teacher samples' variance."""
        cheap_teacher = sample_windows(frozen, student_sampling, windows, rows, noise, cfg.pair_batch_size, dtype)
        student_samples = sample_windows(student, student_sampling, windows, rows, noise, cfg.pair_batch_size, dtype)
        real = windows.batch(rows)[0]
        return {
            f"{prefix}_windows": len(rows),
            f"{prefix}_student_teacher_mse": predicted_mse(student_samples, teacher_samples, num_cond),
            f"{prefix}_teacher_at_student_cost_mse": predicted_mse(cheap_teacher, teacher_samples, num_cond),
            f"{prefix}_teacher_real_mse": predicted_mse(teacher_samples, real, num_cond),
            f"{prefix}_student_real_mse": predicted_mse(student_samples, real, num_cond),
            f"{prefix}_teacher_variance": float(teacher_samples[:, :, num_cond:].var()),
        }

    fitted = min(len(rows), max(cfg.heldout_pairs, 1))
    metrics: dict = {
        "steps": cfg.steps, "num_pairs": cfg.num_pairs, "student_sampler": dataclasses.asdict(student_sampling),
        "pair_seconds": pair_seconds, "first_train_loss": float(np.mean(losses[:cfg.log_every])),
        "final_train_loss": float(np.mean(losses[-cfg.log_every:])),
        **compare("train", train_windows, rows[:fitted], noise[:fitted], target[:fitted]),
    }
    if heldout_windows is not None and cfg.heldout_pairs > 0:
        held_rows = heldout_windows.evenly_spaced(cfg.heldout_pairs)
        held_noise, held_teacher = teacher_pairs(heldout_windows, held_rows, "held-out teacher")
        metrics.update(compare("heldout", heldout_windows, held_rows, held_noise, held_teacher))
    metrics.update(wall_seconds=time.time() - started, model_dir=str(out_dir / "model"))
    write_json_atomic(out_dir / "metrics.json", json.loads(json.dumps(metrics)))
    return metrics
