"""The ``eval`` section of the world-model config: the open-loop evaluation of a trained world model on held-out
episodes (``examples/world_model/eval_world_model.py``), a job of its own beside training."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlinf_wm.config.validate import key_path, require


@dataclass
class EvalConfig:
    """Open-loop evaluation on held-out episodes (``eval_world_model``)."""

    output_dir: str = "outputs/world_model_eval"
    num_chunks: int = 9  # autoregressive chunks per rollout (horizon = chunks x chunk frames)
    horizons: list[int] = field(default_factory=lambda: [8, 16, 24, 36])  # frames at which metrics are reported
    start_stride: int = 24  # frames between rollout starts within an episode
    # also start one rollout per successful episode so that its horizon ends where success is first reached
    # (these rollouts change outcome within the horizon - the reward model must notice)
    success_aligned_starts: bool = True
    max_rollouts: int = 96
    batch_size: int = 16
    # a pixel "moves" when some channel of the real frames changes by more than this (0..1 scale) over the horizon
    moving_threshold: float = 0.1
    ssim_window: int = 7
    ssim_sigma: float = 1.5
    num_videos: int = 4  # rollouts in the side-by-side video and image grid
    video_fps: int = 8
    seed: int = 0
    num_threads: int = 0
    # the one-step student (stage distill) with its own sampler instead of the DiT with the sampler section's
    distilled: bool = False
    # sampler overrides for the evaluation (null: the sampler section's values, or the student's)
    num_steps: int | None = None
    guidance: float | None = None
    # decode + re-encode each chunk's newest conditioning frames, as the world-model env does (null: on for
    # per-frame tokenizers, the env's default)
    reencode_context: bool | None = None

    def check(self, path: str) -> None:
        at = key_path(path)
        for name in ("num_chunks", "start_stride", "max_rollouts", "batch_size", "video_fps"):
            require(getattr(self, name) >= 1, at(name), f"must be >= 1, got {getattr(self, name)}")
        require(len(self.horizons) >= 1, at("horizons"), "needs at least one horizon")
        for i, horizon in enumerate(self.horizons):
            require(horizon >= 1, f"{at('horizons')}[{i}]", f"must be >= 1, got {horizon}")
        require(self.horizons == sorted(set(self.horizons)), at("horizons"), f"must be increasing, got {self.horizons}")
        require(0 < self.moving_threshold < 1, at("moving_threshold"), f"must be in (0, 1), got {self.moving_threshold}")
        require(self.ssim_window >= 3 and self.ssim_window % 2 == 1, at("ssim_window"),
                f"must be an odd number >= 3, got {self.ssim_window}")
        require(self.ssim_sigma > 0, at("ssim_sigma"), f"must be > 0, got {self.ssim_sigma}")
        require(self.num_videos >= 0, at("num_videos"), f"must be >= 0, got {self.num_videos}")
        require(self.num_steps is None or self.num_steps >= 1, at("num_steps"), "must be >= 1 or null")
        require(self.guidance is None or self.guidance >= 0, at("guidance"), "must be >= 0 or null")
