"""The world-model pipeline's stages, each a function of one :class:`StageRun` (what it trains on, where it writes):
tokenizer, encode, dit, distill, generate, reward and state. Which of them run, and when they are current, is
:func:`rlinf_wm.runners.world_model_pipeline.run_stage`'s; each returns the details its report shows."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rlinf_wm.config.world_model_config import DiTTrainConfig, WorldModelConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode
from rlinf_wm.data.world_model_layout import STATISTICS_FILE, Layout, world_model_settings
from rlinf_wm.utils.io import read_json, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRun:
    """What every stage of one pipeline run reads: the config, the output layout, the recorded episodes (loaded on
    the first call), their files, the world model a refit starts from and whether to show progress."""

    cfg: WorldModelConfig
    layout: Layout
    episodes: Callable[[], list[Episode]]
    data_files: list[Path]
    refined: Layout | None
    progress: bool
    cond_frames: int  # frames of each reset state


def dit_training_episodes(train_idx: list[int], cfg: DiTTrainConfig) -> list[int]:
    """The share ``cfg.episode_fraction`` of the training episodes (drawn with ``cfg.seed``, kept in order) the DiT
    trains on: all of them by default; fewer give an ensemble member fit to other data."""
    if cfg.episode_fraction >= 1:
        return list(train_idx)
    count = max(1, round(cfg.episode_fraction * len(train_idx)))
    picked = np.random.default_rng(cfg.seed).choice(len(train_idx), count, replace=False)
    return [train_idx[i] for i in sorted(picked)]


def heldout_indices(num_episodes: int, cfg: WorldModelConfig) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices of the world model's data, as every stage and the evaluation split it: by
    the split segments its ``training_data.json`` records (refits, :func:`split_segments`; none: one split)."""
    from rlinf_wm.runners.train_tokenizer import split_indices

    return split_indices(num_episodes, cfg.holdout_fraction, cfg.seed, recorded_split_segments(cfg.world_model_dir))


def recorded_split_segments(world_model_dir: str | Path) -> list[int]:
    """The split segments ``training_data.json`` records (none when it does not: a world model of older code)."""
    record = Layout(Path(world_model_dir)).training_data
    return list(read_json(record).get("split_segments", [])) if record.is_file() else []


def split_segments(cfg: WorldModelConfig, data_files: list[Path]) -> list[int]:
    """The split segments of a world model about to be encoded from ``data_files``: none for a first world model;
    under ``refine_from``, the source's plus its episode count, so the source's episodes keep its split. The source's
    training files must come first, in its order (new data in ``extra_data_dirs`` after them)."""
    if not cfg.refine_from:
        return []
    record = Layout(Path(cfg.refine_from)).training_data
    if not record.is_file():
        raise FileNotFoundError(f"refine_from: {record} is missing: which episodes the refined DiT trained on is "
                                "unknown (encode that world model again)")
    source = read_json(record)
    theirs = [Path(p).resolve() for p in source["files"]]  # older records may hold relative paths
    if not theirs or [p.resolve() for p in data_files[: len(theirs)]] != theirs:
        raise ValueError(f"refine_from: the training files must start with the {len(theirs)} files {record} lists, in "
                         "its order (new data in extra_data_dirs after them): otherwise the refit would hold out "
                         "episodes the refined DiT trained on")
    return [*source.get("split_segments", []), int(source["episodes"])]


def copy_statistics(data_dir: str | Path, layout: Layout, episodes: Callable[[], list[Episode]]) -> ActionStatistics:
    """``dataset_statistics.json`` from the data directory (computed from the episodes if it has none)."""
    source = Path(data_dir) / STATISTICS_FILE
    if source.is_file():
        statistics = ActionStatistics.load(source)
    else:
        logger.warning("%s not found: computing action statistics from the episodes", source)
        statistics = ActionStatistics.from_actions(np.concatenate([ep.actions for ep in episodes()]))
    statistics.save(layout.statistics)
    return statistics


def write_initial_states(path: Path, episodes: Sequence[Episode], num_frames: int) -> Path:
    """One reset state per episode (:class:`rlinf_wm.data.initial_states.InitialStates`): its first frame repeated
    ``num_frames`` times - nothing precedes a reset, and training windows pad an episode's start the same way."""
    from rlinf_wm.data.initial_states import InitialStates

    InitialStates.from_episodes(episodes, num_frames).save(path)
    return path


def _latent_windows(cfg: WorldModelConfig, layout: Layout, trained: dict, statistics: ActionStatistics):
    """(train, held-out) training windows of the encoded latents, as the trained DiT saw them (its window sizes,
    action scaler and running sums from ``trained``, world_model.json's settings)."""
    from rlinf_wm.data.action_inputs import DiTActionInputs
    from rlinf_wm.data.latents import load_encoded_dataset
    from rlinf_wm.runners.train_dit import LatentWindows

    episodes, attrs = load_encoded_dataset(layout.latents)
    train_idx, held_idx = heldout_indices(len(episodes), cfg)
    inputs = DiTActionInputs(statistics, trained["action_scaler"], trained["action_integral_scale"])

    def windows(indices):
        return LatentWindows([episodes[i] for i in indices], trained["num_cond_latent_frames"],
                             trained["num_pred_latent_frames"], int(attrs["temporal_compression"]), inputs,
                             cfg.train.dit.pad_start, cfg.train.dit.pad_end) if indices else None

    return windows(train_idx), windows(held_idx)


def _load_tokenizer(layout: Layout):
    from rlinf_wm.models.tokenizer import VideoTokenizer
    from rlinf_wm.utils.checkpoint import load_model

    if not (layout.tokenizer_model / "model.safetensors").is_file():
        raise FileNotFoundError(f"no trained tokenizer at {layout.tokenizer_model}: run stage=tokenizer first")
    return load_model(VideoTokenizer, layout.tokenizer_model).eval()


def _check_tokenizer_matches(cfg: WorldModelConfig, layout: Layout) -> None:
    """The saved tokenizer must have the configured architecture (else the latents/DiT would not fit)."""
    saved = read_json(layout.tokenizer_model / "config.json")
    wanted = json_roundtrip(dataclasses.asdict(cfg.tokenizer))
    different = sorted(k for k, v in wanted.items() if k in saved and saved[k] != v)
    if different:
        raise ValueError(
            f"{layout.tokenizer_model} was trained with another tokenizer config ({different}); "
            "rerun with stage=tokenizer force=true or use another world_model_dir"
        )


def json_roundtrip(value):
    return json.loads(json.dumps(value))


def tokenizer_stage(run: StageRun) -> dict:
    """Train the video tokenizer (a refit copies its source's, keeping the latent space)."""
    from rlinf_wm.runners.train_tokenizer import train_tokenizer

    cfg, layout = run.cfg, run.layout
    if run.refined is not None:  # refining keeps the latent space, so the DiT's weights still fit it
        # copied with new file times: the stages that read the tokenizer must see it as new
        shutil.copytree(run.refined.tokenizer_model, layout.tokenizer_model, dirs_exist_ok=True,
                        copy_function=shutil.copy)
        shutil.copy(run.refined.tokenizer_run / "metrics.json", layout.tokenizer_run / "metrics.json")
        return {"copied_from": str(run.refined.tokenizer_run)}

    metrics = train_tokenizer(cfg.train.tokenizer, cfg.data_dir, layout.tokenizer_run, cfg.tokenizer,
                              episodes=run.episodes(), progress=run.progress)
    return {"heldout_psnr": metrics["heldout_psnr"]}


def encode_stage(run: StageRun) -> dict:
    """Encode every episode once, write the reset states, the action statistics and ``training_data.json``."""
    from rlinf_wm.data.latents import encode_dataset

    cfg, layout = run.cfg, run.layout
    _check_tokenizer_matches(cfg, layout)
    segments = split_segments(cfg, run.data_files)
    tokenizer = _load_tokenizer(layout)
    episodes_list = run.episodes()
    copy_statistics(cfg.data_dir, layout, run.episodes)
    encode_dataset(tokenizer, episodes_list, layout.latents, progress=run.progress)
    write_initial_states(layout.initial_states, episodes_list, run.cond_frames)
    kinds = Counter(str(ep.attrs.get("kind", "unknown")) for ep in episodes_list)
    # What the world model learned from, in real env steps: what a same-data baseline may spend.
    write_json_atomic(layout.training_data, {
        "files": [str(p.resolve()) for p in run.data_files], "episodes": len(episodes_list),
        "split_segments": segments,
        "env_steps": int(sum(ep.length for ep in episodes_list)), "episodes_by_kind": dict(sorted(kinds.items())),
    })
    return {"episodes": len(episodes_list)}


def dit_stage(run: StageRun) -> dict:
    """Train the action-conditioned DiT on the latent windows (a refit continues from its source's weights)."""
    from rlinf_wm.data.action_inputs import DiTActionInputs
    from rlinf_wm.data.latents import load_encoded_dataset
    from rlinf_wm.runners.train_dit import train_dit

    cfg, layout = run.cfg, run.layout
    latent_episodes, attrs = load_encoded_dataset(layout.latents)
    if int(attrs["latent_channels"]) != cfg.tokenizer.latent_channels:
        raise ValueError(f"{layout.latents} has {attrs['latent_channels']} latent channels, "
                         f"tokenizer.latent_channels is {cfg.tokenizer.latent_channels}: rerun stage=encode")
    statistics = ActionStatistics.load(layout.statistics)
    if run.refined is not None and read_json(run.refined.statistics) != read_json(layout.statistics):
        raise ValueError(f"refine_from: {run.refined.statistics} differs from {layout.statistics} (another data_dir?): "
                         "the refined DiT's action inputs were normalised with other statistics")
    train_idx, held_idx = heldout_indices(len(latent_episodes), cfg)
    train_idx = dit_training_episodes(train_idx, cfg.train.dit)
    inputs = DiTActionInputs(statistics, cfg.train.dit.action_scaler, cfg.train.dit.action_integral_scale)
    model_cfg = cfg.dit.resolved(cfg.tokenizer, inputs.dim)
    metrics = train_dit(
        model_cfg, cfg.train.dit,
        [latent_episodes[i] for i in train_idx], [latent_episodes[i] for i in held_idx],
        statistics, layout.dit_run,
        temporal_compression=int(attrs["temporal_compression"]),
        tokenizer=_load_tokenizer(layout), progress=run.progress,
        init_weights=run.refined.dit_model if run.refined is not None else None,
    )
    return {"heldout_loss": metrics.get("heldout_loss"), "steps": metrics["steps"]}


def distill_stage(run: StageRun) -> dict:
    """Distil the DiT (with its guided sampler) into a few-step student."""
    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.models.samplers import FlowSampler
    from rlinf_wm.runners.distill_dit import distill_dit
    from rlinf_wm.utils.checkpoint import load_model

    cfg, layout = run.cfg, run.layout
    statistics = ActionStatistics.load(layout.statistics)
    trained = world_model_settings(cfg, layout, statistics)
    train_windows, held_windows = _latent_windows(cfg, layout, trained, statistics)
    metrics = distill_dit(load_model(ActionDiT, layout.dit_model), FlowSampler(**trained["sampler"]),
                          cfg.train.distill, train_windows, held_windows, layout.distilled_dit_run,
                          progress=run.progress)
    return {k: metrics.get(k) for k in ("heldout_student_teacher_mse", "heldout_teacher_at_student_cost_mse")}


def generate_stage(run: StageRun) -> dict:
    """Replay recorded episodes in the world model, labelled with their real outcome, for the reward model."""
    from rlinf_wm.data.action_inputs import DiTActionInputs
    from rlinf_wm.data.trajectories import write_episodes
    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.models.samplers import FlowSampler
    from rlinf_wm.runners.generate_episodes import generate_episodes, select_sources
    from rlinf_wm.utils.checkpoint import load_model
    from rlinf_wm.utils.precision import resolve_dtype

    cfg, layout = run.cfg, run.layout
    episodes_list = run.episodes()
    sources = select_sources(episodes_list, cfg.train.reward_generated_episodes, cfg.train.reward_generated_kinds,
                             cfg.seed)
    statistics = ActionStatistics.load(layout.statistics)
    trained = world_model_settings(cfg, layout, statistics)  # the DiT's own windows and scaler, as the env's
    # the DiT the env runs (distilled: auto): the student when there is one
    if run.cfg.train.distills and not (layout.distilled_dit_run / "metrics.json").is_file():
        raise FileNotFoundError(f"no distilled DiT in {layout.distilled_dit_run} (train.distill.steps > 0): "
                                "run stage=distill first")
    if run.cfg.train.distills and "distilled_sampler" not in trained:  # world_model_settings drops a stale student
        raise FileNotFoundError(f"the distilled DiT in {layout.distilled_dit_run} is older than the DiT it "
                                "distils: run stage=distill first")
    dit, sampler = ((layout.distilled_dit_model, trained["distilled_sampler"]) if run.cfg.train.distills
                    else (layout.dit_model, trained["sampler"]))
    generated = generate_episodes(
        _load_tokenizer(layout), load_model(ActionDiT, dit), FlowSampler(**sampler),
        DiTActionInputs(statistics, trained["action_scaler"], trained["action_integral_scale"]),
        trained["num_cond_latent_frames"], trained["num_pred_latent_frames"],
        [episodes_list[i] for i in sources], sources,
        batch_size=cfg.train.reward_generated_batch_size, seed=cfg.seed, progress=run.progress,
        dtype=resolve_dtype(cfg.train.reward_generated_dtype, key="train.reward_generated_dtype"),
    )
    write_episodes(layout.generated_episodes, generated)
    return {"episodes": len(generated), "failed": sum(not ep.success for ep in generated)}


def reward_stage(run: StageRun) -> dict:
    """Train the reward model on real frames, reconstructions and the generated replays."""
    from rlinf_wm.data.trajectories import read_episodes
    from rlinf_wm.runners.train_reward import train_reward_model

    cfg, layout = run.cfg, run.layout
    prob = cfg.train.reward_reconstruction_prob
    tokenizer = _load_tokenizer(layout) if prob > 0 else None
    if tokenizer is not None and tokenizer.temporal_compression != 1:
        logger.warning("reward model: the %s tokenizer is not per-frame; training on real frames only", tokenizer.kind)
        tokenizer = None
    if run.cfg.train.uses_generated_episodes and not layout.generated_episodes.is_file():
        raise FileNotFoundError(f"no generated episodes at {layout.generated_episodes}: run stage=generate first")
    generated = read_episodes(layout.generated_episodes) if run.cfg.train.uses_generated_episodes else []
    chunk_size = world_model_settings(cfg, layout, None)["chunk_size"]  # the env scores each chunk's last frame
    metrics = train_reward_model(cfg.train.reward, cfg.data_dir, layout.reward_run, cfg.reward_model,
                                 episodes=run.episodes(), tokenizer=tokenizer, tokenizer_reconstruction_prob=prob,
                                 generated=generated, chunk_size=chunk_size, progress=run.progress,
                                 split_segments=recorded_split_segments(layout.root))
    return {k: metrics[k] for k in ("heldout_accuracy", "heldout_auc", "heldout_generated_false_success_rate")
            if k in metrics}


def state_stage(run: StageRun) -> dict:
    """Train the state model (:mod:`rlinf_wm.models.state_dynamics`) on the recorded simulator states."""
    from rlinf_wm.runners.train_state_model import train_state_model

    cfg, layout = run.cfg, run.layout
    state = cfg.train.state
    metrics = train_state_model([str(f) for f in run.data_files], layout.state_model_run, members=state.members,
                                horizon=state.horizon, steps=state.steps, batch=state.batch_size,
                                holdout=state.holdout_fraction, seed=cfg.seed, progress=run.progress)
    return {k: metrics[k] for k in ("heldout_auc", "success_distance")}
