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
from rlinf_wm.models.reward_model import RewardModel, stack_frame_history, success_frame_labels, success_step
from rlinf_wm.models.tokenizer import VideoTokenizer
from rlinf_wm.runners.train_tokenizer import (
    CheckpointManager,
    make_summary_writer,
    restore_training_state,
    resume_latest,
    split_episodes,
    training_state,
    warmup_cosine,
)
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.utils.io import write_json_atomic


@dataclasses.dataclass
class Reconstructions:
    """Tokenizer reconstructions (encode -> decode) of some frames of a :class:`LabelledFrames`."""

    rows: np.ndarray  # int64 [N]: row of `frames` holding frame i's reconstruction, -1 if not reconstructed
    frames: np.ndarray  # uint8 [M, H, W, 3]
    samples: np.ndarray  # int64: samples whose frames (with their history) are all reconstructed


@dataclasses.dataclass
class LabelledFrames:
    frames: np.ndarray  # uint8 [N, H, W, 3], all frames of all episodes, concatenated
    labels: np.ndarray  # bool [N]
    history: np.ndarray  # int64 [N, num_frames]: rows of `frames` forming each sample (oldest first)

    def inputs(self, index: np.ndarray, recon: Reconstructions | None = None, use_recon: np.ndarray | None = None) -> np.ndarray:
        """uint8 ``[B, num_frames, H, W, 3]``; samples flagged in ``use_recon`` take reconstructed frames where available."""
        rows = self.history[index]
        out = self.frames[rows]
        if recon is not None:
            use = np.ones(len(index), bool) if use_recon is None else use_recon
            recon_rows = recon.rows[rows]
            mask = use[:, None] & (recon_rows >= 0)
            out[mask] = recon.frames[recon_rows[mask]]
        return out


def label_episodes(episodes: Sequence[Episode], num_frames: int) -> LabelledFrames:
    frames, labels, history, offset = [], [], [], 0
    for ep in episodes:
        step = success_step(ep.rewards, ep.dones, ep.success)
        frames.append(ep.frames)
        labels.append(success_frame_labels(len(ep.frames), step))
        history.append(stack_frame_history(np.arange(len(ep.frames)), num_frames) + offset)
        offset += len(ep.frames)
    return LabelledFrames(np.concatenate(frames), np.concatenate(labels), np.concatenate(history))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half); NaN when one class is missing."""
    labels = np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), np.float64)
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels, bool)
    predicted = np.asarray(probs) >= threshold
    pos, neg = labels, ~labels
    recall = float((predicted & pos).sum() / max(1, pos.sum()))
    specificity = float((~predicted & neg).sum() / max(1, neg.sum()))
    return {
        "accuracy": float((predicted == labels).mean()),
        "balanced_accuracy": 0.5 * (recall + specificity),
        "auc": roc_auc(labels, probs),
        "recall": recall,
        "specificity": specificity,
        "precision": float((predicted & pos).sum() / max(1, predicted.sum())),
        "positive_fraction": float(labels.mean()),
        "frames": int(len(labels)),
    }


@torch.no_grad()
def predict_probs(
    model: RewardModel, data: LabelledFrames, samples: np.ndarray | None = None, recon: Reconstructions | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    samples = np.arange(len(data.labels)) if samples is None else samples
    model.eval()
    out = [model.predict_proba(data.inputs(samples[s : s + batch_size], recon)).numpy() for s in range(0, len(samples), batch_size)]
    model.train()
    return np.concatenate(out) if out else np.zeros(0, np.float32)


THRESHOLD_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)


@dataclasses.dataclass(frozen=True)
class SuccessRule:
    """How the world-model env turns frame probabilities into a success: it scores every ``scored_every``-th frame
    after the reset frame (with ``reward_frames=last``, the last frame of each chunk) and the episode's last frame,
    and needs ``consecutive`` scored frames in a row at or above the threshold (``success_consecutive``). The
    default scores every frame once: the strictest count of false successes."""

    scored_every: int = 1
    consecutive: int = 1

    def fires(self, probs: np.ndarray, threshold: float) -> bool:
        """Whether an episode with these frame probabilities (frame 0 = the reset frame) would be a success."""
        scored = np.unique(np.append(np.arange(self.scored_every, len(probs), self.scored_every), len(probs) - 1))
        run = 0
        for hit in probs[scored[scored > 0]] >= threshold:
            run = run + 1 if hit else 0
            if run >= self.consecutive:
                return True
        return False


def _episode_outcomes(
    episodes: Sequence[Episode], probs: np.ndarray, threshold: float, rule: SuccessRule = SuccessRule(),
) -> tuple[np.ndarray, np.ndarray]:
    """Per episode: (succeeded for real, flagged). A failed replay is flagged when ``rule`` fires on it (it would end
    an imagined episode as a false success); a successful one when its success frame (the last) reaches the
    threshold - the recording stops there, so the later frames a multi-frame rule would need do not exist."""
    succeeded, flagged, start = [], [], 0
    for ep in episodes:
        p = probs[start : start + len(ep.frames)]
        start += len(ep.frames)
        succeeded.append(bool(ep.success))
        flagged.append(bool(p[-1] >= threshold) if ep.success else rule.fires(p, threshold))
    return np.array(succeeded, bool), np.array(flagged, bool)


def _rates(succeeded: np.ndarray, flagged: np.ndarray) -> tuple[float | None, float | None]:
    """(false-success rate over failed episodes, detection rate over successful ones); None without any."""
    false = float(flagged[~succeeded].mean()) if (~succeeded).any() else None
    detected = float(flagged[succeeded].mean()) if succeeded.any() else None
    return false, detected


def generated_episode_metrics(
    model: RewardModel, episodes: Sequence[Episode], threshold: float | None = None, probs: np.ndarray | None = None,
    env_rule: SuccessRule | None = None,
) -> dict:
    """Frame metrics on generated episodes, and per episode how often replays of failed episodes are flagged as a
    success at any frame (``false_success_rate``), and under ``env_rule`` (``env_rule_false_success_rate``), and
    how often replays of successful ones are flagged at their success frame (``success_detected_rate``).
    ``probs``: the model's frame probabilities on ``episodes`` if already computed."""
    threshold = model.threshold if threshold is None else threshold
    data = label_episodes(episodes, model.num_frames)
    probs = predict_probs(model, data) if probs is None else probs
    succeeded, flagged = _episode_outcomes(episodes, probs, threshold)
    false, detected = _rates(succeeded, flagged)
    result = classification_metrics(data.labels, probs, threshold)
    metrics = {
        **{k: result[k] for k in ("balanced_accuracy", "auc", "recall", "specificity", "frames")},
        "false_success_rate": false,
        "success_detected_rate": detected,
        "failed_episodes": int((~succeeded).sum()),
        "successful_episodes": int(succeeded.sum()),
    }
    if env_rule is not None:
        metrics["env_rule_false_success_rate"] = _rates(*_episode_outcomes(episodes, probs, threshold, env_rule))[0]
    return metrics


def choose_threshold(
    model: RewardModel, episodes: Sequence[Episode], grid: Sequence[float] = THRESHOLD_GRID, probs: np.ndarray | None = None,
    rule: SuccessRule = SuccessRule(),
) -> float | None:
    """The threshold of ``grid`` that best separates the replays under ``rule`` (detection rate minus false-success
    rate; the lower threshold on ties); None unless both outcomes are present."""
    if probs is None:
        probs = predict_probs(model, label_episodes(episodes, model.num_frames))
    best, best_score = None, -np.inf
    for threshold in sorted(grid):
        false, detected = _rates(*_episode_outcomes(episodes, probs, threshold, rule))
        if false is None or detected is None:
            return None
        if detected - false > best_score:
            best, best_score = float(threshold), detected - false
    return best


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
) -> dict:
    """Train (or resume) the reward model; returns the metrics also written to ``metrics.json``.

    ``chunk_size``: actions per world-model step; the env scores the last frame of each chunk, so held-out replays
    are judged, and the threshold calibrated, by that rule (with ``cfg.calibrate_success_consecutive``).
    """
    model_cfg = model_cfg or RewardModelConfig()
    model_cfg.check("model")
    cfg.check("train")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    start_time = time.time()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data_rng = np.random.default_rng(cfg.seed)
    shift_generator = torch.Generator().manual_seed(cfg.seed)

    episodes = list(episodes) if episodes is not None else load_episodes(data_dir)
    train_idx, held_idx = split_episodes(list(range(len(episodes))), cfg.holdout_fraction, cfg.seed)
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
        logits = model.head(model.backbone(x).pooler_output.flatten(1)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
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
