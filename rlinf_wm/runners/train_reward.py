"""Train the reward model (success classifier) on recorded trajectories.

Run directory (``out_dir``)::

    model/                     the trained RewardModel (config.json + model.safetensors)
    checkpoints/step_0000500/  model/ + state.pt; the newest resumes
    tensorboard/               train/eval scalars
    metrics.json               held-out accuracy, balanced accuracy, AUC, wall time

If a tokenizer is given, training frames are also passed through it (encode -> decode) with probability
``tokenizer_reconstruction_prob``, so the classifier sees the blur of world-model frames; held-out metrics
are then reported on both the real and the reconstructed frames. To keep this cheap, only every success
frame plus random others (``reconstruction_max_frames`` in all) are reconstructed.

``generated`` episodes (world-model replays of recorded ones, :mod:`rlinf_wm.runners.generate_episodes`) join the
training frames with their source's labels; those whose source episode is held out are held out too and scored
per episode: how often a replay of a failed episode is flagged as a success at some frame (what would end an
imagined episode as a false success), and how often a replay of a successful one is.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlinf_wm.config.world_model_schema import RewardModelConfig, RewardTrainConfig
from rlinf_wm.data.trajectories import Episode, load_episodes
from rlinf_wm.models.reward_model import RewardModel
from rlinf_wm.models.tokenizer import VideoTokenizer
from rlinf_wm.runners.reward_scoring import (
    LabelledFrames,
    Reconstructions,
    SuccessRule,
    choose_threshold,
    classification_metrics,
    generated_episode_metrics,
    label_episodes,
    predict_probs,
)
from rlinf_wm.runners.train_tokenizer import (
    CheckpointManager,
    make_summary_writer,
    restore_training_state,
    resume_latest,
    split_indices,
    training_state,
    warmup_cosine,
)
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.utils.io import write_json_atomic
from rlinf_wm.utils.precision import require_finite, resolve_dtype, training_autocast


@torch.no_grad()
def reconstruct_frames(tokenizer: VideoTokenizer, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 frames -> uint8 frames after the tokenizer's encode/decode (per frame; frames are independent)."""
    tokenizer.eval()
    if tokenizer.temporal_compression != 1:
        raise ValueError("reconstruction augmentation needs a per-frame tokenizer (temporal_compression == 1)")
    chunks = [
        tokenizer.decode_to_uint8(tokenizer.encode(frames[s : s + batch_size][:, None]))[:, 0].numpy()
        for s in range(0, len(frames), batch_size)
    ]
    return np.concatenate(chunks)


def reconstruct_subset(
    tokenizer: VideoTokenizer, data: LabelledFrames, max_samples: int, rng: np.random.Generator
) -> Reconstructions:
    """Reconstruct success samples (usually all: they are few; at most half the budget) and random others, up to
    ``max_samples`` samples in all, with the history frames they stack. The tokenizer's forward pass over a
    whole dataset would cost minutes."""
    positives, negatives = rng.permutation(np.flatnonzero(data.labels)), rng.permutation(np.flatnonzero(~data.labels))
    positives = positives[: max(max_samples // 2, max_samples - len(negatives))]
    chosen = np.sort(np.concatenate([positives, negatives[: max_samples - len(positives)]]))
    needed = np.unique(data.history[chosen])
    rows = np.full(len(data.labels), -1, np.int64)
    rows[needed] = np.arange(len(needed))
    return Reconstructions(rows, reconstruct_frames(tokenizer, data.frames[needed]), chosen)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each sample by up to ``max_shift`` pixels (replicate-padded crop), ``x``: ``[B, C, H, W]``."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def train_reward_model(
    cfg: RewardTrainConfig,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_cfg: RewardModelConfig | None = None,
    episodes: Sequence[Episode] | None = None,
    tokenizer: VideoTokenizer | None = None,
    tokenizer_reconstruction_prob: float = 0.5,
    generated: Sequence[Episode] = (),
    chunk_size: int = 1,
    progress: bool = True,
    split_segments: Sequence[int] = (),
) -> dict:
    """Train (or resume) the reward model; returns the metrics also written to ``metrics.json``.

    ``chunk_size``: actions per world-model step; the env scores the last frame of each chunk, so held-out replays
    are judged, and the threshold calibrated, by that rule (with ``cfg.calibrate_success_consecutive``).
    ``split_segments``: the world model's refit segments, split apart as every stage splits them (``split_indices``).
    """
    model_cfg = model_cfg or RewardModelConfig()
    model_cfg.check("model")
    cfg.check("train")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    compute_dtype = resolve_dtype(cfg.precision, key="train.reward.precision")
    start_time = time.time()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data_rng = np.random.default_rng(cfg.seed)
    shift_generator = torch.Generator().manual_seed(cfg.seed)

    episodes = list(episodes) if episodes is not None else load_episodes(data_dir)
    train_idx, held_idx = split_indices(len(episodes), cfg.holdout_fraction, cfg.seed, split_segments)
    train_eps, held_eps = [episodes[i] for i in train_idx], [episodes[i] for i in held_idx]
    held_set = set(held_idx)
    for ep in generated:
        if not 0 <= int(ep.attrs.get("source_episode", -1)) < len(episodes):
            raise ValueError(f"a generated episode's attrs['source_episode']={ep.attrs.get('source_episode')} is not "
                             f"one of the {len(episodes)} training episodes: regenerate them from this data")
    held_generated = [ep for ep in generated if int(ep.attrs["source_episode"]) in held_set]
    train_generated = [ep for ep in generated if int(ep.attrs["source_episode"]) not in held_set]
    train = label_episodes([*train_eps, *train_generated], model_cfg.num_frames)
    held = label_episodes(held_eps, model_cfg.num_frames)
    positives, negatives = np.flatnonzero(train.labels), np.flatnonzero(~train.labels)
    if len(positives) == 0 or len(negatives) == 0:
        raise ValueError(
            f"training split has {len(positives)} success and {len(negatives)} failure frames; "
            "the reward model needs both (are rewards recorded? see success_step)"
        )
    train_recon = held_recon = None
    if tokenizer is not None and tokenizer_reconstruction_prob > 0:
        recon_rng = np.random.default_rng(cfg.seed + 1)  # separate stream: resuming must not depend on it
        train_recon = reconstruct_subset(tokenizer, train, cfg.reconstruction_max_frames, recon_rng)
        held_recon = reconstruct_subset(tokenizer, held, cfg.reconstruction_max_frames // 4, recon_rng)
    write_json_atomic(out_dir / "train_config.json", {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg)})

    model_kwargs = dataclasses.asdict(model_cfg)
    model = RewardModel(**model_kwargs)

    def build_optimizer(module):
        opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.steps, min(100, cfg.steps // 10), 0.02))
        return opt, sched

    optimizer, scheduler = build_optimizer(model)
    checkpoints = CheckpointManager(out_dir / "checkpoints", cfg.keep_checkpoints)
    step, elapsed_before = 0, 0.0
    resumed = resume_latest(checkpoints, RewardModel, model_kwargs)
    if resumed is not None:
        model, state = resumed
        optimizer, scheduler = build_optimizer(model)
        step = restore_training_state(state, optimizer, scheduler, data_rng)
        shift_generator.set_state(state["shift_rng"])
        elapsed_before = float(state.get("elapsed_seconds", 0.0))
    model.train()
    # Without balanced sampling, weight the rarer class up in the loss instead.
    pos_weight = None if cfg.balance_classes else torch.tensor(len(negatives) / len(positives))

    writer = make_summary_writer(out_dir / "tensorboard")
    deadline = start_time + cfg.max_minutes * 60 if cfg.max_minutes else None
    history, stopped_early = [], False
    bar = tqdm(total=cfg.steps, initial=step, desc="reward", disable=not progress, dynamic_ncols=True)
    while step < cfg.steps:
        if cfg.balance_classes:
            half = cfg.batch_size // 2
            index = np.concatenate(
                [data_rng.choice(positives, half), data_rng.choice(negatives, cfg.batch_size - half)]
            )
        else:
            index = data_rng.integers(0, len(train.labels), cfg.batch_size)
        use_recon = data_rng.random(len(index)) < tokenizer_reconstruction_prob if train_recon is not None else None
        batch = train.inputs(index, train_recon, use_recon)
        x = random_shift(model.prepare(batch), cfg.augment_shift, shift_generator)
        labels = torch.from_numpy(train.labels[index].astype(np.float32))
        with training_autocast("cpu", compute_dtype):
            logits = model.head(model.backbone(x).pooler_output.flatten(1)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pos_weight)
        require_finite(loss, "reward model loss", step + 1, "train.reward.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        require_finite(grad_norm, "reward model gradient norm", step + 1, "train.reward.lr")
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            accuracy = float(((logits > 0).float() == labels).float().mean())
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/accuracy", accuracy, step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{accuracy:.3f}")
        if step % cfg.eval_every == 0 and step < cfg.steps:
            result = classification_metrics(held.labels, predict_probs(model, held), model.threshold)
            for key in ("accuracy", "balanced_accuracy", "auc"):
                writer.add_scalar(f"eval/{key}", result[key], step)
            history.append({"step": step, **result})
        out_of_time = deadline is not None and time.time() > deadline
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
            state = training_state(step, optimizer, scheduler, data_rng, elapsed_before + time.time() - start_time)
            state["shift_rng"] = shift_generator.get_state()
            checkpoints.save(model, state, step)
        if out_of_time:
            stopped_early = True
            break
    bar.close()

    model.eval()
    result = classification_metrics(held.labels, predict_probs(model, held), model.threshold)
    for key in ("accuracy", "balanced_accuracy", "auc"):
        writer.add_scalar(f"eval/{key}", result[key], step)
    metrics = {f"heldout_{k}": v for k, v in result.items()}
    if held_recon is not None:
        # a subset: every success frame and random others, so compare balanced accuracy and AUC, not accuracy
        subset = held_recon.samples
        recon_result = classification_metrics(
            held.labels[subset], predict_probs(model, held, subset, held_recon), model.threshold
        )
        metrics.update({f"heldout_reconstructed_{k}": recon_result[k] for k in ("balanced_accuracy", "auc", "recall", "specificity")})
    if held_generated:
        probs = predict_probs(model, label_episodes(held_generated, model.num_frames))  # once, for every threshold
        rule = SuccessRule(scored_every=chunk_size, consecutive=cfg.calibrate_success_consecutive)
        metrics.update({f"heldout_generated_{k}": v for k, v in
                        generated_episode_metrics(model, held_generated, probs=probs, env_rule=rule).items()})
        threshold = choose_threshold(model, held_generated, probs=probs, rule=rule) if cfg.calibrate_threshold else None
        if threshold is not None and threshold != model.threshold:
            metrics["threshold_before_calibration"] = model.threshold
            model_kwargs["threshold"] = threshold
            calibrated = RewardModel(**model_kwargs)
            calibrated.load_state_dict(model.state_dict())
            model = calibrated.eval()
            metrics.update({f"heldout_generated_calibrated_{k}": v for k, v in
                            generated_episode_metrics(model, held_generated, probs=probs, env_rule=rule).items()})
    metrics["threshold"] = model.threshold
    writer.close()
    save_model_atomic(model, out_dir / "model")
    metrics.update(
        steps=step,
        stopped_early=stopped_early,
        wall_seconds=elapsed_before + time.time() - start_time,
        train_episodes=len(train_eps),
        heldout_episodes=len(held_eps),
        train_generated_episodes=len(train_generated),
        heldout_generated_episodes=len(held_generated),
        train_positive_fraction=float(train.labels.mean()),
        history=history,
        model_dir=str(out_dir / "model"),
    )
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics
