"""Open-loop evaluation of the world model on held-out episodes (the episodes the DiT never trained on).

A rollout starts at a recorded frame ``f0`` of a held-out episode: the DiT conditions on the recorded latents up to
``f0`` and generates ``num_chunks`` chunks driven by the episode's recorded actions; from the second chunk on, the
newest generated latent frames are its conditioning (autoregressive, as in the world-model env). The generated
frames are compared with the recorded ones ``f0 + 1 .. f0 + horizon``.

Methods scored side by side (same conditioning, same noise):

- ``model``: the world model with the recorded actions;
- ``shuffled_actions``: the same model driven by the actions of a rollout from another episode - the gap to
  ``model`` is what following the actions is worth;
- ``repeat``: the last real conditioning frame repeated (a world where nothing moves);
- ``reconstruction``: the tokenizer's encode/decode of the real frames (the ceiling any generated frame can reach).

Metrics per horizon ``h`` (frames after ``f0``): PSNR and SSIM of frame ``h`` and their means over frames
``1..h``, over whole frames and over *moving pixels* only (pixels where some real frame ``1..h`` differs from the
conditioning frame by more than ``moving_threshold``). PSNR is capped at 60 dB (identical frames).

The reward model is scored on the real held-out frames (accuracy, AUC) and on each rollout's final frame:
agreement of its success prediction with the true success of the recorded frame, overall and on the rollouts whose
true success changes within the horizon.

Outputs in ``output_dir``: ``eval_summary.json``, ``rollouts.gif`` (and ``.mp4`` when an ffmpeg plugin is
installed) with real | generated side by side, and ``rollouts_grid.png`` (per rollout: real row, generated row).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rlinf_wm.config.world_model_config import WorldModelConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode, success_frame_labels, success_step
from rlinf_wm.runners.world_model_rollout import autoregressive_rollout, pixel_reencoder
from rlinf_wm.utils.frame_metrics import FrameErrors, gaussian_window, horizon_metrics, moving_masks
from rlinf_wm.utils.io import write_json_atomic
from rlinf_wm.utils.media import image_grid, mp4_available, side_by_side_frames, write_png, write_video

logger = logging.getLogger(__name__)

METHODS = ("model", "shuffled_actions", "repeat", "reconstruction")


# ----------------------------------------------------------------------------------------------- rollouts
@dataclasses.dataclass(frozen=True)
class RolloutPlan:
    episode: int  # index into the held-out episode list
    start_latent: int  # latent index of the last conditioning frame
    start_frame: int  # frame index of the last conditioning frame (= start_latent * temporal compression)
    success_aligned: bool


def first_success_frame(episode: Episode) -> int | None:
    """Index of the first frame showing success (the frame after the step that reached it), None if never."""
    step = success_step(episode.rewards, episode.dones, episode.success)
    return None if step < 0 else step + 1


def plan_rollouts(
    episodes: Sequence[Episode], horizon_frames: int, compression: int, stride: int, success_aligned: bool,
    max_rollouts: int, seed: int,
) -> list[RolloutPlan]:
    """Evenly strided starts in every held-out episode, plus (optionally) one start per successful episode whose
    horizon covers the moment success is reached. Every rollout's horizon lies inside its episode."""
    regular, aligned = [], []
    for number, ep in enumerate(episodes):
        last_start = min(len(ep.frames) - 1, len(ep.actions)) - horizon_frames  # frames and actions must exist
        if last_start < 0:
            continue
        starts = set(range(0, last_start + 1, stride * compression))
        for start in sorted(starts):
            start -= start % compression
            regular.append(RolloutPlan(number, start // compression, start, False))
        success = first_success_frame(ep)
        if success_aligned and success is not None:
            # the horizon ends a quarter horizon after success (or at the episode end), so success happens inside
            end = min(success + horizon_frames // 4, last_start + horizon_frames)
            start = end - horizon_frames
            start -= start % compression
            if 0 <= start < success:
                aligned.append(RolloutPlan(number, start // compression, start, True))
    rng = np.random.default_rng(seed)
    room = max(0, max_rollouts - len(aligned))
    if len(regular) > room:
        regular = [regular[i] for i in sorted(rng.choice(len(regular), room, replace=False))]
    plans = aligned[:max_rollouts] + regular
    if not plans:
        raise ValueError(
            f"no held-out episode is long enough for a {horizon_frames}-frame rollout; lower eval.num_chunks"
        )
    return plans


def shuffled_partner(episode_of: Sequence[int], seed: int = 0) -> tuple[np.ndarray, float]:
    """For each rollout, a random other rollout whose actions it gets, from another episode whenever possible.

    A random permutation, then every rollout paired with its own episode swaps partners with a random rollout for
    which the swap pairs both with other episodes. Returns (partner index, fraction from another episode)."""
    episode_of = np.asarray(episode_of)
    n = len(episode_of)
    if n < 2:
        raise ValueError("the shuffled-actions baseline needs at least 2 rollouts")
    rng = np.random.default_rng(seed)
    partner = rng.permutation(n)
    for i in rng.permutation(n):
        if episode_of[partner[i]] != episode_of[i]:
            continue
        for j in rng.permutation(n):
            if episode_of[partner[j]] != episode_of[i] and episode_of[partner[i]] != episode_of[j]:
                partner[i], partner[j] = partner[j], partner[i]
                break
    return partner, float((episode_of[partner] != episode_of).mean())


def _decode_horizon(tokenizer, cond: torch.Tensor, generated: torch.Tensor, horizon_frames: int) -> np.ndarray:
    """uint8 ``[B, horizon, H, W, 3]`` frames after the conditioning. A causal video tokenizer decodes the generated
    latents after their conditioning (its first latent frame is a single video frame)."""
    if tokenizer.temporal_compression == 1:
        return tokenizer.decode_to_uint8(generated).numpy()[:, :horizon_frames]
    frames = tokenizer.decode_to_uint8(torch.cat([cond, generated], dim=2)).numpy()
    return frames[:, -horizon_frames:]


# ------------------------------------------------------------------------------------------------- driver
def _reward_metrics(reward_model, plans, held, real, predicted, horizon_frames):
    """Reward-model accuracy/AUC on real held-out frames, and agreement of its prediction on each rollout's final
    frame with the true success of the recorded frame (overall and where success changes within the horizon)."""
    from rlinf_wm.runners.reward_scoring import classification_metrics, label_episodes, predict_probs

    k = reward_model.num_frames

    def final_inputs(source: np.ndarray) -> np.ndarray:
        """uint8 [R, k, H, W, 3]: the last k frames ending at the horizon (conditioning frames before the rollout)."""
        history = []
        for i, plan in enumerate(plans):
            before = held[plan.episode].frames[max(0, plan.start_frame - k + 1) : plan.start_frame + 1]
            seq = np.concatenate([before, source[i]])
            seq = np.concatenate([np.repeat(seq[:1], max(0, k - len(seq)), axis=0), seq])
            history.append(seq[-k:])
        return np.stack(history)

    truth_end, truth_start = [], []
    for plan in plans:
        ep = held[plan.episode]
        labels = success_frame_labels(len(ep.frames), success_step(ep.rewards, ep.dones, ep.success))
        truth_end.append(labels[plan.start_frame + horizon_frames])
        truth_start.append(labels[plan.start_frame])
    truth_end, truth_start = np.array(truth_end), np.array(truth_start)
    changed = truth_end != truth_start
    held_frames = label_episodes(held, k)
    reward = {
        "real_heldout_frames": classification_metrics(
            held_frames.labels, predict_probs(reward_model, held_frames), reward_model.threshold
        ),
        "rollouts": int(len(plans)),
        "changed_outcome_rollouts": int(changed.sum()),
        "final_frame_success_rate": float(truth_end.mean()),
    }
    for name, source in (("real", real), *((m, predicted[m]) for m in METHODS)):
        probs = reward_model.predict_proba(final_inputs(source)).numpy()
        agree = (probs >= reward_model.threshold) == truth_end
        reward[f"agreement_{name}"] = float(agree.mean())
        reward[f"agreement_{name}_changed"] = float(agree[changed].mean()) if changed.any() else None
    return reward


def evaluate_world_model(
    cfg: WorldModelConfig,
    episodes: Sequence[Episode] | None = None,
    output_dir: str | Path | None = None,
    progress: bool | None = None,
) -> dict:
    """Run the evaluation described in the module docstring; returns the summary also written to
    ``<output_dir>/eval_summary.json``. ``episodes`` may be given instead of reading ``cfg.data_dir``."""
    from rlinf_wm.data.latents import load_encoded_dataset
    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.models.reward_model import RewardModel
    from rlinf_wm.models.samplers import FlowSampler
    from rlinf_wm.models.tokenizer import VideoTokenizer
    from rlinf_wm.data.action_inputs import DiTActionInputs
    from rlinf_wm.data.world_model_layout import Layout, load_world_model_settings
    from rlinf_wm.runners.world_model_pipeline import load_training_episodes
    from rlinf_wm.runners.world_model_stages import heldout_indices
    from rlinf_wm.utils.checkpoint import load_model

    ecfg = cfg.eval
    progress = cfg.progress if progress is None else progress
    output_dir = Path(output_dir or ecfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if ecfg.num_threads > 0:
        torch.set_num_threads(ecfg.num_threads)
    started = time.time()
    layout = Layout(Path(cfg.world_model_dir))
    settings = load_world_model_settings(layout.root)
    tokenizer = load_model(VideoTokenizer, layout.tokenizer_model).eval()
    if ecfg.distilled and "distilled_sampler" not in settings:
        raise ValueError(f"eval.distilled=true but {layout.world_model_json} has no distilled DiT: run stage=distill")
    model = load_model(ActionDiT, layout.distilled_dit_model if ecfg.distilled else layout.dit_model).eval()
    # the frame metrics do not need the reward model: without one (not trained yet) its section is skipped
    reward_model = load_model(RewardModel, layout.reward_model).eval() if layout.reward_model.is_dir() else None
    if reward_model is None:
        logger.warning("no reward model at %s: reward metrics skipped", layout.reward_model)
    statistics = ActionStatistics.load(layout.statistics)
    sampler_kwargs = dict(settings["distilled_sampler"]) if ecfg.distilled else dataclasses.asdict(cfg.sampler)
    sampler_kwargs.update({k: v for k, v in (("num_steps", ecfg.num_steps), ("guidance", ecfg.guidance)) if v is not None})
    sampler = FlowSampler(**sampler_kwargs)

    num_cond, num_pred = settings["num_cond_latent_frames"], settings["num_pred_latent_frames"]
    compression = settings["temporal_compression"]
    action_scaler = settings["action_scaler"]
    action_inputs = DiTActionInputs(statistics, action_scaler, settings.get("action_integral_scale", 0.0))
    chunk_frames = num_pred * compression
    horizon_frames = ecfg.num_chunks * chunk_frames
    horizons = [h for h in ecfg.horizons if h <= horizon_frames]

    all_episodes = list(episodes) if episodes is not None else load_training_episodes(cfg)
    latent_episodes, _ = load_encoded_dataset(layout.latents)
    # the same episodes in the same order: a rollout pairs an episode's latents with its frames and actions
    if len(latent_episodes) != len(all_episodes) or any(
            not np.array_equal(z.actions, np.asarray(ep.actions, np.float32))
            for z, ep in zip(latent_episodes, all_episodes)):
        sources = ", ".join([cfg.data_dir, *cfg.extra_data_dirs]) if episodes is None else "the given episodes"
        raise ValueError(f"{layout.latents} holds {len(latent_episodes)} episodes that are not the "
                         f"{len(all_episodes)} of {sources} in order: rerun the encode stage (force=true)")
    _, held_idx = heldout_indices(len(all_episodes), cfg)
    held = [all_episodes[i] for i in held_idx]
    held_latents = [latent_episodes[i] for i in held_idx]
    plans = plan_rollouts(held, horizon_frames, compression, ecfg.start_stride, ecfg.success_aligned_starts,
                          ecfg.max_rollouts, ecfg.seed)
    partner, partner_other_episode = shuffled_partner([p.episode for p in plans], ecfg.seed)
    logger.info("evaluating %d rollouts of %d frames on %d held-out episodes", len(plans), horizon_frames, len(held))
    per_frame = tokenizer.temporal_compression == 1
    reencode_context = per_frame if ecfg.reencode_context is None else ecfg.reencode_context
    if reencode_context and not per_frame:
        raise ValueError("eval.reencode_context needs a per-frame tokenizer (temporal_compression 1)")

    reencode = pixel_reencoder(tokenizer) if reencode_context else None

    def cond_latents_of(plan: RolloutPlan) -> torch.Tensor:
        latents = torch.from_numpy(held_latents[plan.episode].latents)  # [C, T', h, w]
        index = np.clip(np.arange(plan.start_latent - num_cond + 1, plan.start_latent + 1), 0, None)
        return latents[:, index]

    def actions_of(plan: RolloutPlan) -> torch.Tensor:
        actions = held[plan.episode].actions
        before = action_inputs.advance(np.zeros(actions.shape[1]), actions[: plan.start_frame])  # sum up to the start
        return torch.from_numpy(action_inputs(actions[plan.start_frame : plan.start_frame + horizon_frames], before))

    def real_latents_of(plan: RolloutPlan) -> torch.Tensor:
        latents = torch.from_numpy(held_latents[plan.episode].latents)
        return latents[:, plan.start_latent + 1 : plan.start_latent + 1 + ecfg.num_chunks * num_pred]

    real = np.stack([held[p.episode].frames[p.start_frame + 1 : p.start_frame + 1 + horizon_frames] for p in plans])
    cond_frames = np.stack([held[p.episode].frames[p.start_frame] for p in plans])
    predicted = {m: np.empty_like(real) for m in METHODS}
    predicted["repeat"][:] = cond_frames[:, None]
    generator = torch.Generator().manual_seed(ecfg.seed)
    batches = [np.arange(s, min(s + ecfg.batch_size, len(plans))) for s in range(0, len(plans), ecfg.batch_size)]
    for rows in tqdm(batches, desc="rollouts", disable=not progress, dynamic_ncols=True):
        cond = torch.stack([cond_latents_of(plans[i]) for i in rows])
        actions = torch.stack([actions_of(plans[i]) for i in rows])
        shuffled = torch.stack([actions_of(plans[partner[i]]) for i in rows])
        noise = [torch.randn(len(rows), *cond.shape[1:2], num_cond + num_pred, *cond.shape[3:], generator=generator)
                 for _ in range(ecfg.num_chunks)]
        # model and shuffled-actions rollouts in one batch, with the same noise
        generated = autoregressive_rollout(
            model, sampler, torch.cat([cond, cond]), torch.cat([actions, shuffled]), ecfg.num_chunks, num_pred,
            compression, [torch.cat([n, n]) for n in noise], reencode=reencode,
        )
        frames = _decode_horizon(tokenizer, torch.cat([cond, cond]), generated, horizon_frames)
        predicted["model"][rows] = frames[: len(rows)]
        predicted["shuffled_actions"][rows] = frames[len(rows) :]
        with torch.no_grad():
            recon_latents = torch.stack([real_latents_of(plans[i]) for i in rows])
            predicted["reconstruction"][rows] = _decode_horizon(tokenizer, cond, recon_latents, horizon_frames)
    generation_seconds = time.time() - started

    # ---- frame metrics
    window = gaussian_window(ecfg.ssim_window, ecfg.ssim_sigma)
    masks = moving_masks(real, cond_frames, ecfg.moving_threshold)
    metrics = {m: horizon_metrics(FrameErrors(predicted[m], real, window), masks, horizons) for m in METHODS}
    gaps = {
        str(h): {
            f"model_minus_{base}_{key}": (
                None if metrics["model"][str(h)][key] is None or metrics[base][str(h)][key] is None
                else metrics["model"][str(h)][key] - metrics[base][str(h)][key]
            )
            for base in ("repeat", "shuffled_actions")
            for key in ("psnr", "psnr_mean", "psnr_moving", "ssim", "ssim_moving")
        }
        for h in horizons
    }

    # ---- reward model
    reward = None
    if reward_model is not None:
        reward = _reward_metrics(reward_model, plans, held, real, predicted, horizon_frames)

    # ---- video and image grid: rollouts reaching success first
    aligned = [i for i, plan in enumerate(plans) if plan.success_aligned]
    shown = aligned[: max(1, ecfg.num_videos // 2)] if aligned else []
    shown += [i for i in np.linspace(0, len(plans) - 1, ecfg.num_videos).round().astype(int) if i not in shown]
    shown = shown[: ecfg.num_videos]
    media = {}
    if shown:
        video = side_by_side_frames(real[shown], predicted["model"][shown], cond_frames[shown])
        formats = ("gif", "mp4") if mp4_available() else ("gif",)
        media["video"] = [str(write_video(output_dir / "rollouts", video, ecfg.video_fps, f)) for f in formats]
        grid = image_grid(real[shown], predicted["model"][shown], cond_frames[shown], every=max(1, chunk_frames))
        write_png(output_dir / "rollouts_grid.png", grid)
        media["grid"] = str(output_dir / "rollouts_grid.png")

    summary = {
        "task": cfg.task,
        "world_model_dir": str(layout.root),
        "heldout_episodes": len(held),
        "rollouts": len(plans),
        "success_aligned_rollouts": int(sum(p.success_aligned for p in plans)),
        "horizon_frames": horizon_frames,
        "chunk_frames": chunk_frames,
        "num_chunks": ecfg.num_chunks,
        "num_cond_latent_frames": num_cond,
        "action_scaler": action_scaler,
        "sampler": sampler_kwargs,
        "moving_threshold": ecfg.moving_threshold,
        "shuffled_partner_other_episode_fraction": partner_other_episode,
        "metrics": metrics,
        "gaps": gaps,
        "reward": reward,
        "shown_rollouts": [dataclasses.asdict(plans[i]) for i in shown],
        "media": media,
        "generation_seconds": generation_seconds,
        "wall_seconds": time.time() - started,
    }
    write_json_atomic(output_dir / "eval_summary.json", _finite(summary))
    return summary


def _finite(value):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def headline(summary: dict) -> dict:
    """The numbers worth a glance: PSNR/SSIM of the model and both baselines per horizon, gaps, reward agreement."""
    metrics, reward = summary["metrics"], summary["reward"] or {}
    per_horizon = {}
    for h in metrics["model"]:
        row = {}
        for method in METHODS:
            row[f"{method}_psnr"] = _round(metrics[method][h]["psnr"])
            row[f"{method}_psnr_moving"] = _round(metrics[method][h]["psnr_moving"])
        row["model_ssim"] = _round(metrics["model"][h]["ssim"])
        row.update({k: _round(v) for k, v in summary["gaps"][h].items() if k.endswith(("_psnr", "_psnr_moving"))})
        per_horizon[h] = row
    return {
        "rollouts": summary["rollouts"],
        "horizons": per_horizon,
        "reward_real_accuracy": _round(reward.get("real_heldout_frames", {}).get("accuracy"), 4),
        "reward_real_auc": _round(reward.get("real_heldout_frames", {}).get("auc"), 4),
        "reward_agreement_generated": _round(reward.get("agreement_model"), 4),
        "reward_agreement_generated_changed": _round(reward.get("agreement_model_changed"), 4),
        "changed_outcome_rollouts": reward.get("changed_outcome_rollouts"),
        "wall_seconds": _round(summary["wall_seconds"], 1),
    }


def _round(value, digits: int = 2):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), digits)
