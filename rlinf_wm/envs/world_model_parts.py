"""The parts of a trained world model, loaded from one ``world_model_dir`` and checked against each other.

``world_model_pipeline`` writes the directory: tokenizer, DiT, reward model, action statistics, initial states
and ``world_model.json`` (window sizes, action scaler, sampler defaults, part paths). Any part path or setting
can be overridden; a setting that differs from training is logged, parts that do not fit together raise one
error listing every mismatch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlinf_wm.data.action_inputs import DiTActionInputs
from rlinf_wm.data.initial_states import InitialStates
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.world_model_layout import INITIAL_STATES_FILE, STATISTICS_FILE, WORLD_MODEL_FILE, Layout
from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.reward_model import RewardModel
from rlinf_wm.models.samplers import FlowSampler
from rlinf_wm.models.tokenizer import VideoTokenizer
from rlinf_wm.utils.checkpoint import load_model
from rlinf_wm.utils.io import read_json

logger = logging.getLogger(__name__)

# Where world_model_pipeline puts each part inside world_model_dir (used when world_model.json has no "paths").
_LAYOUT = Layout(Path("."))
DEFAULT_PATHS = {
    "tokenizer": str(_LAYOUT.tokenizer_model),
    "dit": str(_LAYOUT.dit_model),
    "reward_model": str(_LAYOUT.reward_model),
    "dataset_statistics": STATISTICS_FILE,
    "initial_states": INITIAL_STATES_FILE,
}
SAMPLER_KEYS = ("solver", "num_steps", "guidance", "guidance_interval", "sigma_min", "sigma_max", "rho")


def resolve_model_dir(path: str | Path) -> Path:
    """A ``save_pretrained`` directory, or a training run directory holding one in ``model/``."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


@dataclass
class WorldModelParts:
    world_model_dir: Path
    task: str
    chunk_size: int  # actions per world-model step
    num_cond_latent_frames: int
    action_scaler: float
    action_integral_scale: float  # running-sum channels of the DiT's action input (0: none)
    sampler: FlowSampler
    stats: ActionStatistics
    tokenizer: VideoTokenizer
    dit: ActionDiT
    distilled: bool  # the DiT is the few-step student
    reward_model: RewardModel
    initial_states: InitialStates

    @property
    def action_dim(self) -> int:
        return self.stats.action_dim

    @property
    def action_inputs(self) -> DiTActionInputs:
        return DiTActionInputs(self.stats, self.action_scaler, self.action_integral_scale)


def load_world_model_parts(
    world_model_dir: str | Path,
    task: str | None = None,
    tokenizer_path: str | None = None,
    dit_path: str | None = None,
    reward_model_path: str | None = None,
    stats_path: str | None = None,
    initial_states_path: str | None = None,
    chunk_size: int | None = None,
    num_cond_latent_frames: int | None = None,
    action_scaler: float | None = None,
    sampler: dict[str, Any] | None = None,
    distilled: bool | str = False,
) -> WorldModelParts:
    """Load every part (``None`` = as trained, from ``world_model.json``) and check that they fit together.

    ``distilled``: the DiT is the few-step student (``stage=distill``) and the sampler defaults are its own;
    ``"auto"``: the student when the world model has one.
    """
    world_model_dir = Path(world_model_dir)
    if not world_model_dir.is_dir():
        raise FileNotFoundError(f"world_model_dir {world_model_dir} does not exist; train the world model first")
    settings_file = world_model_dir / WORLD_MODEL_FILE
    trained = read_json(settings_file) if settings_file.is_file() else {}
    if task is not None and trained.get("task") not in (None, task):
        raise ValueError(f"task={task!r} but {settings_file} is for task {trained['task']!r}")

    def setting(name: str, given):
        if given is None:
            if name not in trained:
                raise ValueError(f"{name} is not set and {settings_file} has no '{name}'")
            return trained[name]
        if name in trained and trained[name] != given:
            logger.warning("world model was trained with %s=%s; the env uses %s", name, trained[name], given)
        return given

    chunk_size = int(setting("chunk_size", chunk_size))
    num_cond_latent_frames = int(setting("num_cond_latent_frames", num_cond_latent_frames))
    if chunk_size < 1 or num_cond_latent_frames < 1:
        raise ValueError(f"chunk_size and num_cond_latent_frames must be >= 1, got {chunk_size}, "
                         f"{num_cond_latent_frames}")

    sampler = dict(sampler or {})
    unknown = sorted(set(sampler) - set(SAMPLER_KEYS))
    if unknown:
        raise ValueError(f"unknown sampler keys {unknown}; valid: {list(SAMPLER_KEYS)}")
    trained_sampler = trained.get("sampler", {})
    has_student = "distilled_sampler" in trained and "distilled_dit" in trained.get("paths", {})
    if distilled not in (True, False, "auto"):
        raise ValueError(f"distilled must be true, false or 'auto', got {distilled!r}")
    if distilled == "auto":
        distilled = has_student
        logger.info("world model %s: running its %s DiT (distilled: auto)", world_model_dir,
                    "distilled one-step" if has_student else "trained")
    if distilled:
        if not has_student:
            raise ValueError(f"distilled=true but {settings_file} has no distilled DiT: train one with "
                             "train_world_model.py stage=distill train.distill.steps=N")
        trained_sampler = trained["distilled_sampler"]
    flow = FlowSampler(**{
        key: sampler[key] if sampler.get(key) is not None else trained_sampler[key]
        for key in SAMPLER_KEYS if sampler.get(key) is not None or key in trained_sampler
    })

    paths = {**DEFAULT_PATHS, **trained.get("paths", {})}

    def part(given, key):
        return Path(given) if given is not None else world_model_dir / paths[key]

    parts = WorldModelParts(
        world_model_dir=world_model_dir,
        task=task if task is not None else trained.get("task", ""),
        chunk_size=chunk_size,
        num_cond_latent_frames=num_cond_latent_frames,
        action_scaler=float(setting("action_scaler", action_scaler)),
        # what the DiT was trained with, never overridden: it fixes the DiT's input width (older files: 0)
        action_integral_scale=float(trained.get("action_integral_scale", 0.0)),
        sampler=flow,
        stats=ActionStatistics.load(part(stats_path, "dataset_statistics")),
        tokenizer=load_model(VideoTokenizer, resolve_model_dir(part(tokenizer_path, "tokenizer"))).eval(),
        dit=load_model(ActionDiT, resolve_model_dir(part(dit_path, "distilled_dit" if distilled else "dit"))).eval(),
        distilled=bool(distilled),
        reward_model=load_model(RewardModel, resolve_model_dir(part(reward_model_path, "reward_model"))).eval(),
        initial_states=InitialStates.load(part(initial_states_path, "initial_states")),
    )
    check_parts(parts)
    return parts


def check_parts(parts: WorldModelParts) -> None:
    """One error naming every part that does not fit the others."""
    tok, dit, rm, states = parts.tokenizer, parts.dit, parts.reward_model, parts.initial_states
    problems = []
    if dit.latent_channels != tok.latent_channels:
        problems.append(f"DiT latent_channels={dit.latent_channels} but the tokenizer has {tok.latent_channels}")
    if dit.action_dim != parts.action_inputs.dim:
        problems.append(f"DiT action_dim={dit.action_dim} but the action statistics have {parts.action_dim} dims "
                        f"and action_integral_scale={parts.action_integral_scale} gives {parts.action_inputs.dim} "
                        "input channels")
    if dit.actions_per_latent_frame != tok.temporal_compression:
        problems.append(f"DiT actions_per_latent_frame={dit.actions_per_latent_frame} but the tokenizer's "
                        f"temporal compression is {tok.temporal_compression}")
    if parts.chunk_size % dit.actions_per_latent_frame:
        problems.append(f"chunk_size={parts.chunk_size} is not a multiple of the DiT's actions_per_latent_frame="
                        f"{dit.actions_per_latent_frame}")
    frames = parts.num_cond_latent_frames + parts.chunk_size // dit.actions_per_latent_frame
    max_frames = dit.transformer.config.max_size[0]
    if frames > max_frames:
        problems.append(f"num_cond_latent_frames + chunk latent frames = {frames} exceeds the DiT's max_size[0]="
                        f"{max_frames}")
    size = (tok.image_size, tok.image_size)
    if states.image_size != size:
        problems.append(f"initial states are {states.image_size[0]}x{states.image_size[1]} frames but the "
                        f"tokenizer expects {size[0]}x{size[1]}")
    if rm.image_size != tok.image_size:
        problems.append(f"reward model image_size={rm.image_size} but the tokenizer's is {tok.image_size}")
    if problems:
        raise ValueError(f"world model {parts.world_model_dir} is inconsistent: " + "; ".join(problems))

