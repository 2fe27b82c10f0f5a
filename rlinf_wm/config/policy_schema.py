"""Schemas for the policy model section (``model/tinyvla.yaml``), SFT and real-simulator evaluation.

``TinyVLAConfig`` is also the model's own config: ``TinyVLA(config)`` stores it in ``config.json``.
Fields left ``None`` in the YAML (image size, action dim, action statistics) are filled from the data
by the SFT runner, so the checkpoint alone can map tokens back to env units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlinf_wm.config.env_schemas import ENV_SCHEMAS, IMAGINED_ENV_TYPES, check_env_task
from rlinf_wm.config.validate import dispatch_field, require


@dataclass
class TinyVLAConfig:
    policy_type: Literal["tiny_vla"] = "tiny_vla"
    chunk_size: int = 4  # K actions decoded in one pass
    num_bins: int = 256  # bins per action dimension over normalised [-1, 1]
    encoder_channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # stride-2 conv stages
    image_grid: int = 4  # image tokens per side after the CNN (adaptive average pooling)
    hidden_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    max_instruction_length: int = 64  # bytes
    value_head: bool = True  # chunk-level value for PPO
    # categorical: free logits per bin (OpenVLA); gaussian: logits of a discretised Gaussian whose mean and
    # width are predicted, so a policy-gradient step on one sampled bin moves the whole distribution.
    action_head: Literal["categorical", "gaussian"] = "categorical"
    # Filled from the data at SFT time (None in the model YAML).
    image_size: int | None = None
    action_dim: int | None = None
    action_q01: list[float] | None = None
    action_q99: list[float] | None = None

    def check(self, path: str = "model") -> None:
        for name in ("chunk_size", "image_grid", "hidden_dim", "num_layers", "num_heads", "mlp_ratio",
                     "max_instruction_length"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.num_bins >= 2, f"{path}.num_bins", f"must be >= 2, got {self.num_bins}")
        require(len(self.encoder_channels) >= 1 and min(self.encoder_channels) >= 1, f"{path}.encoder_channels",
                f"must be a non-empty list of positive ints, got {self.encoder_channels}")
        require(self.hidden_dim % self.num_heads == 0, f"{path}.hidden_dim",
                f"{self.hidden_dim} is not divisible by num_heads={self.num_heads}")
        require(self.action_head in ("categorical", "gaussian"), f"{path}.action_head",
                f"must be 'categorical' or 'gaussian', got {self.action_head!r}")
        require(0.0 <= self.dropout < 1.0, f"{path}.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.image_size is not None:
            require(self.image_size >= 8, f"{path}.image_size", f"must be >= 8, got {self.image_size}")
        for name in ("action_q01", "action_q99"):
            value = getattr(self, name)
            if value is not None and self.action_dim is not None:
                require(len(value) == self.action_dim, f"{path}.{name}",
                        f"has {len(value)} entries for action_dim={self.action_dim}")

    def check_complete(self, path: str = "model") -> None:
        """The data-derived fields must be set before a model is built."""
        self.check(path)
        for name in ("image_size", "action_dim", "action_q01", "action_q99"):
            require(getattr(self, name) is not None, f"{path}.{name}", "must be set (it is derived from the data)")


@dataclass
class SFTConfig:
    num_demos: int = 1  # successful expert episodes used (first N in file order); -1 = all
    batch_size: int = 64
    max_steps: int = 1000
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    future_padding: Literal["mask", "repeat"] = "mask"  # chunk steps past the episode end
    random_shift: int = 4  # pixels of random-shift augmentation; 0 = off
    label_smoothing: float = 0.0
    log_every: int = 25
    save_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    num_threads: int = 1  # torch intra-op threads (1 is fastest on a shared CPU); 0 = torch default
    resume: bool = True  # continue from the latest checkpoint in output_dir if there is one

    def check(self, path: str = "sft") -> None:
        require(self.num_demos == -1 or self.num_demos >= 1, f"{path}.num_demos", f"must be >= 1 or -1, got {self.num_demos}")
        for name in ("batch_size", "max_steps", "log_every", "save_every", "keep_checkpoints"):
            require(getattr(self, name) >= 1, f"{path}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.learning_rate > 0, f"{path}.learning_rate", f"must be > 0, got {self.learning_rate}")
        require(self.warmup_steps >= 0, f"{path}.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.random_shift >= 0, f"{path}.random_shift", f"must be >= 0, got {self.random_shift}")
        require(0.0 <= self.label_smoothing < 1.0, f"{path}.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        require(self.num_threads >= 0, f"{path}.num_threads", f"must be >= 0, got {self.num_threads}")


@dataclass
class SFTRunConfig:
    """Top-level ``sft_*.yaml``."""

    task: str
    artifacts_dir: str
    data_dir: str
    output_dir: str
    model: TinyVLAConfig
    sft: SFTConfig = field(default_factory=SFTConfig)
    statistics_path: str | None = None  # default: <data_dir>/dataset_statistics.json


@dataclass
class EvalConfig:
    num_episodes: int = 100
    num_workers: int = 2  # Ray actors, each with its own env batch; 0 = run in this process without Ray
    cpus_per_worker: float = 1.0
    first_reset_id: int = 0  # episode i resets with initial-state id first_reset_id + i
    seed: int = 0  # sampling generator (worker w: seed + 7919 w) and env reset seeds
    deterministic: bool = True  # arg-max actions; False samples with ``temperature``
    temperature: float = 1.0
    num_videos: int = 4  # first episodes of worker 0, one frame per chunk
    video_fps: int = 5
    video_format: Literal["mp4", "gif"] = "gif"  # mp4 needs imageio-ffmpeg (falls back to gif)
    output_dir: str = "outputs/eval"
    num_threads: int = 1  # torch threads per worker
    # also write every episode (a frame per step) to <output_dir>/episodes/shard_00000.hdf5, in the collection's
    # layout: the policy's own rollouts as world-model training data (world model `extra_data_dirs`)
    save_episodes: bool = False

    def check(self, path: str = "eval") -> None:
        require(self.num_episodes >= 1, f"{path}.num_episodes", f"must be >= 1, got {self.num_episodes}")
        require(self.first_reset_id >= 0, f"{path}.first_reset_id", f"must be >= 0, got {self.first_reset_id}")
        require(self.num_workers >= 0, f"{path}.num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.cpus_per_worker > 0, f"{path}.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        require(self.temperature > 0, f"{path}.temperature", f"must be > 0, got {self.temperature}")
        require(self.num_videos >= 0, f"{path}.num_videos", f"must be >= 0, got {self.num_videos}")
        require(self.video_fps >= 1, f"{path}.video_fps", f"must be >= 1, got {self.video_fps}")
        require(self.num_threads >= 1, f"{path}.num_threads", f"must be >= 1, got {self.num_threads}")


@dataclass
class EvalEnvGroup:
    """``env:`` of an eval config: the real simulator under ``eval``, validated by its ``env_type`` schema."""

    eval: Any = dispatch_field("env_type", ENV_SCHEMAS)


@dataclass
class EvalRunConfig:
    """Top-level ``eval_*.yaml``."""

    task: str
    artifacts_dir: str
    policy_path: str
    env: EvalEnvGroup
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self, path: str = "") -> None:
        at = f"{path}." if path else ""
        check_env_task(self.env.eval, self.task, f"{at}env.eval")
        require(self.env.eval.env_type not in IMAGINED_ENV_TYPES, f"{at}env.eval.env_type",
                f"evaluation measures success in a real simulator, got {self.env.eval.env_type!r}")
