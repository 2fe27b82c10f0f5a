"""Schemas for the tokenizer and reward-model sections of the world-model config.

The DiT / sampler sections live with their owner; the top-level world-model schema composes these.
Field names equal the constructor arguments of the models, so a validated section is passed on as
``VideoTokenizer(**asdict(cfg))`` / ``RewardModel(**asdict(cfg))`` with nothing renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlinf_wm.config.validate import require
from rlinf_wm.utils.precision import TRAIN_PRECISIONS


@dataclass
class TokenizerConfig:
    """``model/wm_tokenizer_*.yaml``: the video tokenizer's architecture."""

    kind: Literal["per_frame_kl", "wan"] = "per_frame_kl"
    image_size: int = 64
    latent_channels: int = 16
    # per_frame_kl: 2x2 pixel blocks -> channels, then an AutoencoderKL with len(block_out_channels) levels
    space_to_depth: int = 2
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    norm_num_groups: int = 32
    mid_block_attention: bool = False
    # wan: AutoencoderKLWan (Wan2.1 causal video VAE); spatial compression 2^(len(dim_mult)-1)
    wan_base_dim: int = 96
    wan_dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    wan_num_res_blocks: int = 2
    wan_temporal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])

    @property
    def spatial_compression(self) -> int:
        if self.kind == "wan":
            return 2 ** (len(self.wan_dim_mult) - 1)
        return self.space_to_depth * 2 ** (len(self.block_out_channels) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.wan_temporal_downsample) if self.kind == "wan" else 1

    def check(self, path: str) -> None:
        p = f"{path}." if path else ""
        require(self.image_size > 0, f"{p}image_size", "must be positive")
        require(self.latent_channels > 0, f"{p}latent_channels", "must be positive")
        require(
            self.image_size % self.spatial_compression == 0,
            f"{p}image_size",
            f"{self.image_size} is not divisible by the spatial compression {self.spatial_compression}",
        )
        if self.kind == "per_frame_kl":
            require(self.space_to_depth >= 1, f"{p}space_to_depth", "must be >= 1")
            require(len(self.block_out_channels) >= 1, f"{p}block_out_channels", "needs at least one level")
            for i, channels in enumerate(self.block_out_channels):
                require(
                    channels % self.norm_num_groups == 0,
                    f"{p}block_out_channels[{i}]",
                    f"{channels} is not divisible by norm_num_groups={self.norm_num_groups}",
                )
        else:
            require(
                len(self.wan_temporal_downsample) == len(self.wan_dim_mult) - 1,
                f"{p}wan_temporal_downsample",
                f"needs len(wan_dim_mult) - 1 = {len(self.wan_dim_mult) - 1} entries",
            )


@dataclass
class TokenizerTrainConfig:
    """How the tokenizer is trained (``train_tokenizer``)."""

    # defaults: ~30.5 dB held-out PSNR on drawer-open-v3 64x64 in ~5 min on 2 CPU cores
    steps: int = 1500
    batch_size: int = 16
    # frames per training clip: 1 for per_frame_kl; 1 + 4k for wan (4x temporal compression)
    clip_frames: int = 1
    lr: float = 5e-3  # 2e-3 -> 4e-3 gave +0.5 dB at 600 steps; 8e-3 no further gain
    min_lr: float = 5e-5  # cosine decay floor
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    # image-gradient (edge) L1 term, a cheap stand-in for a perceptual loss; it did not raise PSNR here (0.5 -> 0:
    # +0.1 dB), so it is off by default
    gradient_loss_weight: float = 0.0
    kl_weight: float = 1e-6
    # initial posterior log-variance of a fresh model: with a tiny kl_weight the encoder ends near-deterministic
    # anyway (std ~0.01); starting there skips the early steps where unit-variance noise swamps the latents.
    # null = diffusers' initialisation (log-variance ~0)
    init_logvar: float | None = -6.0
    # fraction of episodes held out for evaluation (split by episode, never by frame)
    holdout_fraction: float = 0.1
    eval_every: int = 500
    eval_max_frames: int = 512
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    # clips used to measure the latent mean/std after training
    stats_max_frames: int = 2048
    # stop early (and still finish cleanly) after this many minutes; null = no limit
    max_minutes: float | None = None
    seed: int = 0
    num_threads: int = 0  # torch threads; 0 = leave torch's default
    # forward passes under autocast in this dtype, weights and optimizer in float32; auto = bfloat16 where the
    # hardware computes it natively (rlinf_wm.utils.precision)
    precision: str = "auto"

    def check(self, path: str) -> None:
        p = f"{path}." if path else ""
        require(self.steps > 0, f"{p}steps", "must be positive")
        require(self.batch_size > 0, f"{p}batch_size", "must be positive")
        require(self.precision in TRAIN_PRECISIONS, f"{p}precision",
                f"must be one of {list(TRAIN_PRECISIONS)}, got {self.precision!r}")
        require(self.clip_frames >= 1, f"{p}clip_frames", "must be >= 1")
        require(0.0 < self.holdout_fraction < 1.0, f"{p}holdout_fraction", "must be in (0, 1)")
        require(self.lr > 0 and self.min_lr >= 0, f"{p}lr", "lr must be > 0 and min_lr >= 0")
        require(self.keep_checkpoints >= 1, f"{p}keep_checkpoints", "must be >= 1")


@dataclass
class RewardModelConfig:
    """``model/wm_reward_resnet.yaml``: ResNet-18-style success classifier on frames."""

    image_size: int = 64
    # frames stacked along channels (1 = the current frame only; k = the last k frames)
    num_frames: int = 1
    embedding_size: int = 32
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # ResNet-18 layout
    # success when sigmoid(logit) >= threshold
    threshold: float = 0.5

    def check(self, path: str) -> None:
        p = f"{path}." if path else ""
        require(self.num_frames >= 1, f"{p}num_frames", "must be >= 1")
        require(len(self.hidden_sizes) == len(self.depths), f"{p}depths", "needs one entry per hidden_sizes entry")
        require(0.0 < self.threshold < 1.0, f"{p}threshold", "must be in (0, 1)")
        require(self.image_size >= 16, f"{p}image_size", "must be >= 16")


@dataclass
class RewardTrainConfig:
    """How the reward model is trained (``train_reward_model``)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    holdout_fraction: float = 0.2
    # sample success / failure frames equally (success frames are usually a minority)
    balance_classes: bool = True
    # random translation in pixels (pad + crop), so small shifts in generated frames do not matter
    augment_shift: int = 4
    # with a tokenizer: frames reconstructed once for the reconstruction augmentation (all success frames
    # + random others); a quarter as many held-out ones score the classifier on reconstructions
    reconstruction_max_frames: int = 4096
    # with generated episodes: the success threshold becomes the one that best separates the held-out replays
    # (reward_scoring.choose_threshold); balanced sampling calibrates probabilities to a 50 % prior, so 0.5 flags a
    # frame of most long failed replays
    calibrate_threshold: bool = True
    # the env's rule the threshold is chosen for: chunk-end frames scored, this many in a row for a success
    # (the RL env's success_consecutive)
    calibrate_success_consecutive: int = 2
    eval_every: int = 250
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    max_minutes: float | None = None
    seed: int = 0
    num_threads: int = 0
    precision: str = "auto"  # as TokenizerTrainConfig.precision

    def check(self, path: str) -> None:
        p = f"{path}." if path else ""
        require(self.steps > 0, f"{p}steps", "must be positive")
        require(self.batch_size > 1, f"{p}batch_size", "must be > 1")
        require(self.precision in TRAIN_PRECISIONS, f"{p}precision",
                f"must be one of {list(TRAIN_PRECISIONS)}, got {self.precision!r}")
        require(0.0 < self.holdout_fraction < 1.0, f"{p}holdout_fraction", "must be in (0, 1)")
        require(self.augment_shift >= 0, f"{p}augment_shift", "must be >= 0")
        require(self.reconstruction_max_frames >= 4, f"{p}reconstruction_max_frames", "must be >= 4")
        require(self.calibrate_success_consecutive >= 1, f"{p}calibrate_success_consecutive", "must be >= 1")
        require(self.keep_checkpoints >= 1, f"{p}keep_checkpoints", "must be >= 1")
