"""Top-level schema of the world-model configs (``examples/embodiment/config/world_model_*.yaml``).

Composes the tokenizer and reward-model sections (:mod:`rlinf_wm.config.world_model_schema`) and the evaluation
(:mod:`rlinf_wm.config.world_model_eval_schema`) with the DiT, its training and the sampler. Layout of a composed
config::

    task, artifacts_dir, data_dir, world_model_dir     paths (derived from one root in the YAML)
    stage, force, seed, holdout_fraction, ...          what to run
    tokenizer:     TokenizerConfig      (model/wm_tokenizer_*.yaml)
    reward_model:  RewardModelConfig    (model/wm_reward_*.yaml)
    dit:           DiTConfig            (model/wm_dit_*.yaml)
    train.tokenizer / train.reward / train.dit         how each part is trained
    train.distill                                      the optional few-step student of the DiT
    train.state                                        the optional state model beside it (stage state)
    sampler:       SamplerConfig        (defaults written to world_model.json for the env)
    eval:          EvalConfig

One split for everything: episodes are held out with ``split_episodes(episodes, fraction, seed)``, whose held-out
set for a fraction is a prefix of the one for a larger fraction (same seed). So the DiT and evaluation hold out
``holdout_fraction`` of the episodes, and the tokenizer and reward model, which must use the same seed and at
least that fraction, never train on an episode the evaluation scores. A refit (``refine_from``) keeps this split
for its source's episodes and splits the new ones apart (``split_indices``; ``training_data.json`` records the
segments), so it never holds out an episode the DiT it continues trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rlinf_wm.config.validate import key_path, require
from rlinf_wm.config.world_model_env_schema import check_guidance_interval
from rlinf_wm.config.world_model_eval_schema import EvalConfig
from rlinf_wm.config.world_model_schema import (
    RewardModelConfig,
    RewardTrainConfig,
    TokenizerConfig,
    TokenizerTrainConfig,
)
from rlinf_wm.utils.precision import TRAIN_PRECISIONS

STAGES = ("tokenizer", "encode", "dit", "distill", "generate", "reward", "state", "all")


@dataclass
class DiTConfig:
    """``model/wm_dit_*.yaml``: the :class:`rlinf_wm.models.dit.ActionDiT` constructor arguments.

    ``latent_channels``, ``action_dim`` and ``actions_per_latent_frame`` follow from the tokenizer and the data;
    leave them ``null`` and :meth:`resolved` fills them (set, they must agree).
    """

    latent_channels: int | None = None
    action_dim: int | None = None
    actions_per_latent_frame: int | None = None
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 48
    mlp_ratio: float = 4.0
    adaln_lora_dim: int = 64
    text_embed_dim: int = 32
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    max_size: list[int] = field(default_factory=lambda: [32, 64, 64])
    rope_scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    extra_pos_embed_type: str | None = None
    action_hidden_dim: int | None = None
    condition_frame_timestep: float = 0.0
    timestep_scale: float = 1.0

    def check(self, path: str) -> None:
        at = key_path(path)
        for name in ("num_layers", "num_attention_heads", "attention_head_dim", "adaln_lora_dim", "text_embed_dim"):
            require(getattr(self, name) >= 1, at(name), f"must be >= 1, got {getattr(self, name)}")
        for name in ("latent_channels", "action_dim", "actions_per_latent_frame", "action_hidden_dim"):
            value = getattr(self, name)
            require(value is None or value >= 1, at(name), f"must be >= 1 (or null), got {value}")
        for name in ("patch_size", "max_size", "rope_scale"):
            require(len(getattr(self, name)) == 3, at(name), f"needs 3 entries (T, H, W), got {getattr(self, name)}")
        require(self.patch_size[0] == 1, at("patch_size"), f"the temporal patch must be 1, got {self.patch_size}")
        require(self.extra_pos_embed_type in (None, "learnable"), at("extra_pos_embed_type"),
                f"must be null or 'learnable', got {self.extra_pos_embed_type!r}")
        require(self.mlp_ratio > 0, at("mlp_ratio"), f"must be > 0, got {self.mlp_ratio}")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def resolved(self, tokenizer: TokenizerConfig, action_dim: int | None, path: str = "dit") -> "DiTConfig":
        """A copy with the tokenizer- and data-derived fields filled; mismatches raise naming the key."""
        from dataclasses import replace

        derived = {
            "latent_channels": tokenizer.latent_channels,
            "actions_per_latent_frame": tokenizer.temporal_compression,
            "action_dim": action_dim,
        }
        values = {}
        for name, value in derived.items():
            current = getattr(self, name)
            if current is not None and value is not None:
                require(current == value, f"{path}.{name}",
                        f"is {current} but the {'data' if name == 'action_dim' else 'tokenizer'} gives {value}")
            values[name] = current if value is None else value
        require(values["action_dim"] is not None, f"{path}.action_dim", "unknown: set it or provide dataset statistics")
        return replace(self, **values)


@dataclass
class DiTTrainConfig:
    """How the DiT is trained on pre-encoded latents (``train_dit``)."""

    # a window: num_cond_latent_frames clean latent frames, then num_pred_latent_frames to predict, driven by
    # num_pred_latent_frames * actions_per_latent_frame actions (the world model's chunk size)
    num_cond_latent_frames: int = 2
    num_pred_latent_frames: int = 4
    # normalised actions (q01..q99 -> [-1, 1]) are multiplied by this before the DiT (Cosmos Predict 2.5: 20)
    action_scaler: float = 20.0
    # > 0: the DiT also gets this x the running sum of the raw actions since the reset, the arm's absolute target
    # for delta-action robots (rlinf_wm.data.action_inputs); 0: the chunk's actions only
    action_integral_scale: float = 0.5
    steps: int = 6000
    batch_size: int = 32
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float | None = 0.999  # null: no EMA (the final weights are the raw ones)
    # flow-time distribution (shifted logit-normal) and condition dropout, see flow_matching_loss
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    action_dropout: float = 0.1
    # Gaussian noise added to the conditioning latents during training: at rollout time the model conditions on
    # its own (imperfect) predictions, so it should not rely on pixel-exact conditioning
    cond_noise_std: float = 0.0
    # windows whose conditioning starts before the episode (first frame repeated, as at a reset) / whose future
    # runs past the end (last frame repeated with zero actions)
    pad_start: bool = True
    pad_end: bool = True
    log_every: int = 25
    eval_every: int = 250  # held-out loss at fixed noise
    sample_every: int = 500  # generated-vs-real strip in TensorBoard (needs the tokenizer)
    sample_steps: int = 10
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    max_minutes: float | None = None  # stop early (finishing cleanly) after this long; null = no limit
    seed: int = 0
    # < 1: train on this share of the training episodes, drawn with `seed` (an ensemble member on other data)
    episode_fraction: float = 1.0
    num_threads: int = 0  # torch threads; 0 = torch's default
    precision: str = "auto"  # as train.tokenizer.precision (TokenizerTrainConfig)
    # torch.compile the DiT's forward (rlinf_wm.utils.compilation): auto = where a compiler is installed; the
    # first step then compiles (~60 s with inductor's cache cold), so the Python default stays off for short runs
    compile: bool | Literal["auto"] = False

    def check(self, path: str) -> None:
        at = key_path(path)
        require(self.precision in TRAIN_PRECISIONS, at("precision"),
                f"must be one of {list(TRAIN_PRECISIONS)}, got {self.precision!r}")
        for name in ("num_cond_latent_frames", "num_pred_latent_frames", "steps", "batch_size", "log_every",
                     "eval_every", "sample_every", "sample_steps", "checkpoint_every", "keep_checkpoints"):
            require(getattr(self, name) >= 1, at(name), f"must be >= 1, got {getattr(self, name)}")
        require(self.action_scaler > 0, at("action_scaler"), f"must be > 0, got {self.action_scaler}")
        require(self.action_integral_scale >= 0, at("action_integral_scale"),
                f"must be >= 0, got {self.action_integral_scale}")
        require(self.lr > 0, at("lr"), f"must be > 0, got {self.lr}")
        require(0 <= self.min_lr <= self.lr, at("min_lr"), f"must be in [0, lr={self.lr}], got {self.min_lr}")
        require(self.warmup_steps >= 0, at("warmup_steps"), f"must be >= 0, got {self.warmup_steps}")
        require(self.ema_decay is None or 0.0 < self.ema_decay < 1.0, at("ema_decay"),
                f"must be in (0, 1) or null, got {self.ema_decay}")
        require(self.logit_std > 0, at("logit_std"), f"must be > 0, got {self.logit_std}")
        require(self.shift > 0, at("shift"), f"must be > 0, got {self.shift}")
        require(0.0 <= self.action_dropout < 1.0, at("action_dropout"), f"must be in [0, 1), got {self.action_dropout}")
        require(self.cond_noise_std >= 0, at("cond_noise_std"), f"must be >= 0, got {self.cond_noise_std}")
        require(self.max_minutes is None or self.max_minutes > 0, at("max_minutes"), "must be > 0 or null")
        require(0 < self.episode_fraction <= 1, at("episode_fraction"), f"must be in (0, 1], got {self.episode_fraction}")


@dataclass
class DistillConfig:
    """A one- or two-step student of the guided DiT (``distill_dit``); ``steps: 0`` trains none."""

    steps: int = 0
    num_steps: int = 1  # the student's Euler steps per chunk (DiT row-passes, no CFG branch)
    num_pairs: int = 4096  # teacher samples (noise -> guided sample) from training windows
    pair_batch_size: int = 64  # windows per teacher sampler run
    heldout_pairs: int = 128  # held-out windows on which the student is compared with the teacher
    batch_size: int = 32
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 25
    seed: int = 0
    num_threads: int = 0
    precision: str = "auto"  # teacher sampling dtype and training autocast (as train.dit.precision)
    compile: bool | Literal["auto"] = False

    def check(self, path: str) -> None:
        at = key_path(path)
        require(self.steps >= 0, at("steps"), f"must be >= 0 (0: no student), got {self.steps}")
        for name in ("num_steps", "num_pairs", "pair_batch_size", "batch_size", "log_every"):
            require(getattr(self, name) >= 1, at(name), f"must be >= 1, got {getattr(self, name)}")
        require(self.heldout_pairs >= 0, at("heldout_pairs"), f"must be >= 0, got {self.heldout_pairs}")
        require(self.lr > 0, at("lr"), f"must be > 0, got {self.lr}")
        require(0 <= self.min_lr <= self.lr, at("min_lr"), f"must be in [0, lr={self.lr}], got {self.min_lr}")
        require(self.warmup_steps >= 0, at("warmup_steps"), f"must be >= 0, got {self.warmup_steps}")
        require(self.precision in TRAIN_PRECISIONS, at("precision"),
                f"must be one of {list(TRAIN_PRECISIONS)}, got {self.precision!r}")


@dataclass
class SamplerConfig:
    """:class:`rlinf_wm.models.samplers.FlowSampler` arguments (the env's defaults, written to world_model.json)."""

    solver: Literal["2ab", "euler", "unipc"] = "2ab"
    num_steps: int = 4
    guidance: float = 1.5  # w on the actions; 0 runs one branch
    # guide only solver steps with flow time s in (low, high]: the last step (s = 0.01) moves the data prediction by
    # 1 % of the guidance term, so skipping it saves 1 of 8 DiT row-passes with the same outcomes (results.md)
    guidance_interval: list[float] = field(default_factory=lambda: [0.05, 1.0])
    sigma_min: float = 0.01
    sigma_max: float = 200.0
    rho: float = 7.0

    def check(self, path: str) -> None:
        at = key_path(path)
        require(self.num_steps >= 1, at("num_steps"), f"must be >= 1, got {self.num_steps}")
        require(self.guidance >= 0, at("guidance"), f"must be >= 0, got {self.guidance}")
        check_guidance_interval(self.guidance_interval, at("guidance_interval"))
        require(0 < self.sigma_min < self.sigma_max, at("sigma_min"),
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        require(self.rho > 0, at("rho"), f"must be > 0, got {self.rho}")


@dataclass
class StateModelTrainConfig:
    """The state model beside the DiT (``train_state_model``, stage ``state``); ``steps: 0`` trains none."""

    steps: int = 0
    members: int = 3  # MLPs of the ensemble, each on its own random draws of windows
    horizon: int = 16  # steps each training window is unrolled on the model's own predictions
    batch_size: int = 128
    holdout_fraction: float = 0.1  # episodes the success distance is calibrated on

    def check(self, path: str) -> None:
        at = key_path(path)
        require(self.steps >= 0, at("steps"), f"must be >= 0 (0: no state model), got {self.steps}")
        for name in ("members", "horizon", "batch_size"):
            require(getattr(self, name) >= 1, at(name), f"must be >= 1, got {getattr(self, name)}")
        require(0.0 < self.holdout_fraction < 1.0, at("holdout_fraction"),
                f"must be in (0, 1), got {self.holdout_fraction}")


@dataclass
class TrainSection:
    tokenizer: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    reward: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    dit: DiTTrainConfig = field(default_factory=DiTTrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    state: StateModelTrainConfig = field(default_factory=StateModelTrainConfig)
    # probability that a reward-model training frame is replaced by its tokenizer reconstruction (the blur of
    # generated frames); 0 trains on real frames only
    reward_reconstruction_prob: float = 0.5
    # world-model replays of this many recorded episodes (drawn among those of reward_generated_kinds; []: any)
    # join the reward model's training data with the real outcome as label (stage generate); 0: off
    reward_generated_episodes: int = 0
    reward_generated_kinds: list[str] = field(default_factory=list)
    reward_generated_batch_size: int = 32
    # the dtype the replays are generated in: the RL env's (env dtype auto = bfloat16 where native)
    reward_generated_dtype: str = "auto"

    # which optional stages the pipeline runs
    @property
    def distills(self) -> bool:
        return self.distill.steps > 0

    @property
    def uses_generated_episodes(self) -> bool:
        return self.reward_generated_episodes > 0

    @property
    def trains_state_model(self) -> bool:
        return self.state.steps > 0

    def check(self, path: str) -> None:
        require(0.0 <= self.reward_reconstruction_prob <= 1.0, f"{path}.reward_reconstruction_prob",
                f"must be in [0, 1], got {self.reward_reconstruction_prob}")
        require(self.reward_generated_episodes >= 0, f"{path}.reward_generated_episodes",
                f"must be >= 0, got {self.reward_generated_episodes}")
        require(self.reward_generated_batch_size >= 1, f"{path}.reward_generated_batch_size",
                f"must be >= 1, got {self.reward_generated_batch_size}")
        require(self.reward_generated_dtype in TRAIN_PRECISIONS, f"{path}.reward_generated_dtype",
                f"must be one of {list(TRAIN_PRECISIONS)}, got {self.reward_generated_dtype!r}")


@dataclass
class WorldModelConfig:
    """``world_model_<task>.yaml``: train and evaluate the world model of one task."""

    task: str
    artifacts_dir: str
    data_dir: str
    world_model_dir: str
    tokenizer: TokenizerConfig
    reward_model: RewardModelConfig
    dit: DiTConfig
    train: TrainSection = field(default_factory=TrainSection)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stage: Literal["tokenizer", "encode", "dit", "distill", "generate", "reward", "state", "all"] = "all"
    force: bool = False  # re-run stages whose outputs exist
    seed: int = 0
    holdout_fraction: float = 0.1  # episodes held out from DiT training and scored by the evaluation
    progress: bool = True
    # more trajectory directories trained on after data_dir's episodes, e.g. the base policy's recorded real rollouts
    # (eval.save_episodes=true): the world model then sees the failures the policy really makes
    extra_data_dirs: list[str] = field(default_factory=list)
    # a trained world_model_dir to refine on more data (Dyna-style, e.g. after adding the RL policy's real rollouts
    # to extra_data_dirs): its tokenizer is copied and the DiT continues from its weights (lower train.dit.steps)
    refine_from: str | None = None

    def check(self, path: str) -> None:
        at = key_path(path)
        if self.refine_from is not None:
            require(Path(self.refine_from).resolve() != Path(self.world_model_dir).resolve(), at("refine_from"),
                    f"is world_model_dir itself ({self.world_model_dir}); refine into another directory")
        require(0.0 < self.holdout_fraction < 1.0, at("holdout_fraction"), f"must be in (0, 1), got {self.holdout_fraction}")
        for part in ("tokenizer", "reward"):
            train = getattr(self.train, part)
            require(train.seed == self.seed, at(f"train.{part}.seed"),
                    f"is {train.seed} but seed={self.seed}: the held-out episodes come from the seed, so they must agree")
            require(train.holdout_fraction >= self.holdout_fraction, at(f"train.{part}.holdout_fraction"),
                    f"{train.holdout_fraction} < holdout_fraction={self.holdout_fraction}: it would train on episodes "
                    "the evaluation holds out")
        require(self.reward_model.image_size == self.tokenizer.image_size, at("reward_model.image_size"),
                f"{self.reward_model.image_size} differs from tokenizer.image_size={self.tokenizer.image_size}")
        self.dit.resolved(self.tokenizer, self.dit.action_dim or 1, path=at("dit"))
        latent_size = self.tokenizer.image_size // self.tokenizer.spatial_compression
        for axis, name in ((1, "H"), (2, "W")):
            require(latent_size % self.dit.patch_size[axis] == 0, at("dit.patch_size"),
                    f"latent {name}={latent_size} is not divisible by the patch {self.dit.patch_size}")
        window = self.train.dit.num_cond_latent_frames + self.train.dit.num_pred_latent_frames
        require(window <= self.dit.max_size[0], at("dit.max_size"),
                f"{self.dit.max_size[0]} latent frames < the training window of {window}")
        chunk_frames = self.train.dit.num_pred_latent_frames * self.tokenizer.temporal_compression
        horizon = self.eval.num_chunks * chunk_frames
        require(self.eval.horizons[-1] <= horizon, at("eval.horizons"),
                f"{self.eval.horizons[-1]} frames exceed eval.num_chunks x chunk = {horizon} frames")
