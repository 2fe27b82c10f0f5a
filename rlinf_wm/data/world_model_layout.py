"""What a trained world-model directory holds: its file layout and ``world_model.json``, the file the env reads.

``world_model_pipeline`` writes this layout; the env (``world_model_parts``) and the evaluation read it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlinf_wm.config.world_model_config import WorldModelConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.utils.io import read_json

WORLD_MODEL_FORMAT_VERSION = 1
# DiT training settings that change what a window or an action input means (resuming must not mix two)
WINDOW_KEYS = ("num_cond_latent_frames", "num_pred_latent_frames", "action_scaler", "action_integral_scale")
LEGACY_WINDOW_VALUES = {"action_integral_scale": 0.0}  # what a train_config.json without the key was trained with
STATISTICS_FILE = "dataset_statistics.json"
LATENTS_FILE = "latents.hdf5"
INITIAL_STATES_FILE = "initial_states.hdf5"
WORLD_MODEL_FILE = "world_model.json"
TIMINGS_FILE = "timings.json"
STAGE_SETTINGS_FILE = "stage_settings.json"  # per stage, the settings that define its inputs (caching compares them)
TRAINING_DATA_FILE = "training_data.json"
GENERATED_EPISODES_FILE = "generated_episodes.hdf5"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Paths inside ``world_model_dir`` (relative names are what world_model.json records)."""

    root: Path

    @property
    def tokenizer_run(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_model(self) -> Path:
        return self.tokenizer_run / "model"

    @property
    def latents(self) -> Path:
        return self.root / LATENTS_FILE

    @property
    def initial_states(self) -> Path:
        return self.root / INITIAL_STATES_FILE

    @property
    def statistics(self) -> Path:
        return self.root / STATISTICS_FILE

    @property
    def dit_run(self) -> Path:
        return self.root / "dit"

    @property
    def dit_model(self) -> Path:
        return self.dit_run / "model"

    @property
    def distilled_dit_run(self) -> Path:
        return self.root / "dit_distilled"

    @property
    def distilled_dit_model(self) -> Path:
        return self.distilled_dit_run / "model"

    @property
    def generated_episodes(self) -> Path:
        return self.root / GENERATED_EPISODES_FILE

    @property
    def reward_run(self) -> Path:
        return self.root / "reward_model"

    @property
    def reward_model(self) -> Path:
        return self.reward_run / "model"

    @property
    def state_model_run(self) -> Path:
        return self.root / "state_model"

    @property
    def state_model(self) -> Path:
        return self.state_model_run / "model"

    @property
    def training_data(self) -> Path:
        return self.root / TRAINING_DATA_FILE

    @property
    def world_model_json(self) -> Path:
        return self.root / WORLD_MODEL_FILE


def num_cond_frames(num_cond_latent_frames: int, temporal_compression: int) -> int:
    """Video frames behind ``num_cond_latent_frames`` latent frames (a causal tokenizer's first latent is 1 frame)."""
    return 1 + temporal_compression * (num_cond_latent_frames - 1)


def world_model_settings(cfg: WorldModelConfig, layout: Layout, statistics: ActionStatistics | None) -> dict:
    """The contents of world_model.json: everything the env needs beyond the component directories.

    Window sizes and action_scaler come from the trained DiT's run (``dit/train_config.json``) when it exists, so
    the file describes the model on disk even if the config changed since.
    """
    train = cfg.train.dit
    trained = layout.dit_run / "train_config.json"
    if trained.is_file():
        saved = read_json(trained).get("train", {})
        # a DiT trained before the running sums existed has none (LEGACY_WINDOW_VALUES), whatever the config says now
        train = dataclasses.replace(train, **{k: saved.get(k, LEGACY_WINDOW_VALUES.get(k, getattr(train, k)))
                                              for k in WINDOW_KEYS})
    compression = cfg.tokenizer.temporal_compression
    latent_size = cfg.tokenizer.image_size // cfg.tokenizer.spatial_compression
    reward_config = layout.reward_model / "config.json"
    # the few-step student of the DiT (stage distill), which the env runs with distilled: true / auto; one older
    # than the DiT's weights is a stale student of an earlier DiT and is not offered
    distilled, teacher = layout.distilled_dit_run / "metrics.json", layout.dit_model / "model.safetensors"
    has_student = cfg.train.distills and distilled.is_file() and (
        not teacher.is_file() or distilled.stat().st_mtime >= teacher.stat().st_mtime)
    # the state model (stage state), which the env runs with state_model_path: auto; only while the config trains one
    has_state_model = cfg.train.trains_state_model and (layout.state_model_run / "metrics.json").is_file()
    return {
        "format_version": WORLD_MODEL_FORMAT_VERSION,
        "task": cfg.task,
        "paths": {  # relative to the directory holding world_model.json
            "tokenizer": str(layout.tokenizer_model.relative_to(layout.root)),
            "dit": str(layout.dit_model.relative_to(layout.root)),
            "reward_model": str(layout.reward_model.relative_to(layout.root)),
            "dataset_statistics": STATISTICS_FILE,
            "initial_states": INITIAL_STATES_FILE,
            "latents": LATENTS_FILE,
            **({"distilled_dit": str(layout.distilled_dit_model.relative_to(layout.root))} if has_student else {}),
            **({"state_model": str(layout.state_model.relative_to(layout.root))} if has_state_model else {}),
        },
        "image_size": cfg.tokenizer.image_size,
        "latent_shape": [cfg.tokenizer.latent_channels, latent_size, latent_size],
        "temporal_compression": compression,
        "num_cond_latent_frames": train.num_cond_latent_frames,
        # video frames per reset state (initial_states.hdf5) = frames behind the conditioning latents
        "num_cond_frames": num_cond_frames(train.num_cond_latent_frames, compression),
        "num_pred_latent_frames": train.num_pred_latent_frames,
        # actions per world-model step = frames generated per step
        "chunk_size": train.num_pred_latent_frames * compression,
        "action_dim": None if statistics is None else statistics.action_dim,
        "action_scaler": train.action_scaler,
        "action_integral_scale": train.action_integral_scale,
        "sampler": dataclasses.asdict(cfg.sampler),
        **({"distilled_sampler": read_json(distilled)["student_sampler"]} if has_student else {}),
        # the trained model's own (calibrate_threshold may have moved it), informational: the env reads the model
        "reward_threshold": float(read_json(reward_config).get("threshold", cfg.reward_model.threshold))
        if reward_config.is_file() else cfg.reward_model.threshold,
        "reward_num_frames": cfg.reward_model.num_frames,
    }


def load_world_model_settings(world_model_dir: str | Path) -> dict:
    path = Path(world_model_dir) / WORLD_MODEL_FILE
    settings = read_json(path)
    if settings.get("format_version") != WORLD_MODEL_FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {settings.get('format_version')!r}")
    return settings
