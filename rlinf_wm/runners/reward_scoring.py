"""Scoring a reward model: frames labelled from episodes, frame metrics (accuracy, AUC), and per episode, the
replays that the world-model env's success rule would flag - false successes, detections - and the threshold that
separates them best. Shared by the reward model's training (:mod:`rlinf_wm.runners.train_reward`) and the world
model's evaluation (:mod:`rlinf_wm.runners.eval_world_model`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from rlinf_wm.data.trajectories import Episode, success_frame_labels, success_step
from rlinf_wm.models.reward_model import RewardModel, stack_frame_history


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
        """uint8 ``[B, num_frames, H, W, 3]``; samples flagged in ``use_recon`` whose every frame was reconstructed
        take the reconstructions (a sample mixing real and reconstructed frames is never what the world model shows)."""
        rows = self.history[index]
        out = self.frames[rows]
        if recon is not None:
            use = np.ones(len(index), bool) if use_recon is None else use_recon
            recon_rows = recon.rows[rows]
            take = use & (recon_rows >= 0).all(axis=1)
            out[take] = recon.frames[recon_rows[take]]
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
