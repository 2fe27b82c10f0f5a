"""Schema of world-model env YAMLs (``env_type: world_model``, e.g. ``env/wm_metaworld_drawer_open.yaml``).

Keys are exactly the constructor arguments of :class:`rlinf_wm.envs.world_model_env.WorldModelEnv` plus
``env_type``. ``None`` (YAML ``null``) means "as the world model was trained" (its ``world_model.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from rlinf_wm.config.validate import key_path, require
from rlinf_wm.utils.precision import DTYPE_NAMES


def check_guidance_interval(interval, path: str) -> None:
    """``[low, high]`` with ``0 <= low < high <= 1``: the flow times whose solver steps get guidance."""
    values = list(interval) if isinstance(interval, (list, tuple)) else None
    require(values is not None and len(values) == 2 and 0.0 <= values[0] < values[1] <= 1.0, path,
            f"must be [low, high] with 0 <= low < high <= 1, got {interval}")


@dataclass
class WorldModelSamplerConfig:
    """:class:`rlinf_wm.models.samplers.FlowSampler` settings; ``null`` keeps the trained default."""

    solver: Literal["2ab", "euler", "unipc"] | None = None
    num_steps: int | None = None
    guidance: float | None = None
    guidance_interval: list[float] | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None

    def check(self, path: str) -> None:
        require(self.num_steps is None or self.num_steps >= 1, f"{path}.num_steps", f"must be >= 1, got {self.num_steps}")
        require(self.guidance is None or self.guidance >= 0, f"{path}.guidance", f"must be >= 0, got {self.guidance}")
        if self.guidance_interval is not None:
            check_guidance_interval(self.guidance_interval, f"{path}.guidance_interval")
        require(self.sigma_min is None or self.sigma_min > 0, f"{path}.sigma_min", f"must be > 0, got {self.sigma_min}")
        if self.sigma_min is not None and self.sigma_max is not None:
            require(self.sigma_min < self.sigma_max, f"{path}.sigma_max",
                    f"must exceed sigma_min={self.sigma_min}, got {self.sigma_max}")
        require(self.rho is None or self.rho > 0, f"{path}.rho", f"must be > 0, got {self.rho}")


@dataclass
class WorldModelEnvConfig:
    """The learned world model as an env (see WorldModelEnv for every key's meaning)."""

    env_type: Literal["world_model"]
    world_model_dir: str
    task: str | None = None
    tokenizer_path: str | None = None
    dit_path: str | None = None
    reward_model_path: str | None = None
    stats_path: str | None = None
    initial_states_path: str | None = None
    num_envs: int = 8
    chunk_size: int | None = None
    num_cond_latent_frames: int | None = None
    max_episode_steps: int = 150
    action_scaler: float | None = None
    sampler: WorldModelSamplerConfig = field(default_factory=WorldModelSamplerConfig)
    # the few-step student DiT and its sampler (world_model.json's distilled_*); auto: when the world model has one
    distilled: bool | Literal["auto"] = False
    batch_size: int = 64
    reward_type: Literal["success_once", "relative"] = "success_once"
    reward_frames: Literal["last", "all"] = "last"
    reward_threshold: float | None = None
    success_consecutive: int = 1
    ensemble_world_model_dirs: list[str] = field(default_factory=list)  # their DiTs' disagreement is reported
    uncertainty_threshold: float | None = None  # disagreement that ends an episode as a failure (MOReL's halt)
    disagreement: Literal["mean", "sample"] = "mean"  # what the members' predictions are (WorldModelEnv)
    state_model_path: str | None = None  # success also needs the state model's object at the goal (WorldModelEnv)
    state_model_members: Literal["mean", "all"] = "mean"  # mean: the members' mean distance; all: every member's
    state_uncertainty_threshold: float | None = None  # state-model members' object spread that ends an episode (halt)
    reencode_context: bool | None = None  # None: on for per-frame tokenizers (WorldModelEnv)
    device: str = "cpu"
    dtype: str = "auto"  # auto: bfloat16 where the hardware computes it natively (rlinf_wm.utils.precision)
    compile: bool | Literal["auto"] = False  # torch.compile DiT, tokenizer, reward model; auto: where installed
    seed: int = 0

    def check(self, path: str) -> None:
        at = key_path(path)
        for name in ("num_envs", "batch_size", "max_episode_steps", "success_consecutive"):
            require(getattr(self, name) >= 1, at(name), f"must be >= 1, got {getattr(self, name)}")
        for name in ("chunk_size", "num_cond_latent_frames"):
            value = getattr(self, name)
            require(value is None or value >= 1, at(name), f"must be >= 1 (or null: as trained), got {value}")
        require(self.action_scaler is None or self.action_scaler > 0, at("action_scaler"),
                f"must be > 0 (or null: as trained), got {self.action_scaler}")
        require(self.reward_threshold is None or self.reward_threshold >= 0, at("reward_threshold"),
                f"must be >= 0 (or null: the reward model's), got {self.reward_threshold}")
        require(self.uncertainty_threshold is None or self.uncertainty_threshold > 0, at("uncertainty_threshold"),
                f"must be > 0 (or null: never halt), got {self.uncertainty_threshold}")
        require(self.uncertainty_threshold is None or bool(self.ensemble_world_model_dirs), at("uncertainty_threshold"),
                "needs ensemble_world_model_dirs (the disagreement is between DiTs)")
        require(self.state_uncertainty_threshold is None or self.state_uncertainty_threshold > 0,
                at("state_uncertainty_threshold"),
                f"must be > 0 (or null: never halt), got {self.state_uncertainty_threshold}")
        require(self.state_uncertainty_threshold is None or self.state_model_path is not None,
                at("state_uncertainty_threshold"), "needs state_model_path (the disagreement is the state model's)")
        require(self.dtype in DTYPE_NAMES, at("dtype"), f"must be one of {list(DTYPE_NAMES)}, got {self.dtype!r}")
        require(self.device == "cpu" or self.device.startswith("cuda"), at("device"),
                f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    def env_kwargs(self) -> dict[str, Any]:
        """Plain dict (``env_type`` + constructor kwargs), as env workers receive it."""
        return dataclasses.asdict(self)
