"""Train the world model stage by stage into one directory, ``world_model_dir``::

    tokenizer/              train_tokenizer's run: model/, checkpoints/, tensorboard/, metrics.json
    latents.hdf5            every episode encoded once (encode_dataset)
    initial_states.hdf5     reset states for the world-model env (InitialStates: first frame repeated, instruction)
    dataset_statistics.json copied from the data directory (the action normalisation of policy, DiT and env)
    dit/                    train_dit's run: model/, checkpoints/, tensorboard/, metrics.json
    dit_distilled/          distill_dit's run (optional): model/ (the few-step student), tensorboard/, metrics.json
    generated_episodes.hdf5 world-model replays of recorded episodes, for the reward model (optional)
    reward_model/           train_reward_model's run: model/, checkpoints/, tensorboard/, metrics.json
    state_model/            train_state_model's run (optional): model/, metrics.json
    world_model.json        what the env needs: component paths, window sizes, action_scaler, sampler defaults
    timings.json            wall and CPU time of the last run of every stage
    stage_settings.json     the settings each stage's output was made with
    training_data.json      the trajectory files, episodes and env steps the latents were encoded from

Stages (:mod:`rlinf_wm.runners.world_model_stages`): ``tokenizer`` -> ``encode`` -> ``dit`` -> ``distill`` (only
with ``train.distill.steps``) -> ``generate`` (only with ``train.reward_generated_episodes``; it replays with the
student when there is one, as the env's ``distilled: auto`` will run) -> ``reward`` (which needs the tokenizer when
it trains on reconstructed frames, and the generated episodes) -> ``state`` (only with ``train.state.steps``).
The paths and world_model.json are :mod:`rlinf_wm.data.world_model_layout`'s. A stage is skipped when its
output exists, is newer than its inputs (like ``make``) and was made with the settings that decide it
(``stage_settings.json``); ``force=True`` reruns it. A rerun starts the stage's directory afresh; an interrupted one (no metrics.json yet)
resumes from its newest checkpoint.

``refine_from`` refits a trained world model on more data (Dyna-style): the tokenizer is copied from it (so the latent
space stays), the DiT continues from its weights, the replays and the reward model are redone.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path
from typing import Sequence

import h5py

from rlinf_wm.config.world_model_config import STAGES, WorldModelConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode
from rlinf_wm.data.world_model_layout import (
    STAGE_SETTINGS_FILE, TIMINGS_FILE, Layout, num_cond_frames, world_model_settings,
)
from rlinf_wm.runners import world_model_stages as parts
from rlinf_wm.runners.stage_cache import StageCache, output_settings
from rlinf_wm.runners.world_model_stages import StageRun, write_initial_states
from rlinf_wm.utils.io import write_json_atomic

logger = logging.getLogger(__name__)


def training_data_files(cfg: WorldModelConfig) -> list[Path]:
    """The trajectory files the world model trains on, in order: ``data_dir``'s, then each ``extra_data_dirs``'."""
    from rlinf_wm.data.trajectories import find_trajectory_files

    return [path for root in (cfg.data_dir, *cfg.extra_data_dirs) for path in find_trajectory_files(root)]


def relative_data_files(cfg: WorldModelConfig) -> list[list[str]]:
    """Per data directory (``data_dir``, then each ``extra_data_dirs``), its trajectory files relative to it: which
    files were encoded, independent of where the directories are."""
    from rlinf_wm.data.trajectories import find_trajectory_files

    roots = (cfg.data_dir, *cfg.extra_data_dirs)
    return [[str(path.relative_to(root)) for path in find_trajectory_files(root)] for root in roots]


def load_training_episodes(cfg: WorldModelConfig) -> list[Episode]:
    from rlinf_wm.data.trajectories import read_episodes

    return [episode for path in training_data_files(cfg) for episode in read_episodes(path)]


class _Episodes:
    """Loads the recorded episodes once, on first use (the DiT stage alone never needs them)."""

    def __init__(self, cfg: WorldModelConfig, given: Sequence[Episode] | None) -> None:
        self.cfg = cfg
        self._episodes = list(given) if given is not None else None

    def get(self) -> list[Episode]:
        if self._episodes is None:
            logger.info("loading episodes from %s", ", ".join([self.cfg.data_dir, *self.cfg.extra_data_dirs]))
            self._episodes = load_training_episodes(self.cfg)
        return self._episodes


def _initial_state_frames(path: Path) -> int | None:
    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        return int(f["frames"].shape[1]) if "frames" in f else None


def run_stage(
    cfg: WorldModelConfig,
    stage: str | None = None,
    episodes: Sequence[Episode] | None = None,
    progress: bool | None = None,
) -> dict:
    """Run ``stage`` (default ``cfg.stage``) of the pipeline; returns ``{stage: {"status", "seconds", ...}}``.

    ``episodes`` may be given instead of reading ``cfg.data_dir`` (tests, notebooks).
    """
    stage = stage or cfg.stage
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    progress = cfg.progress if progress is None else progress
    layout = Layout(Path(cfg.world_model_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    data = _Episodes(cfg, episodes)
    # New or changed trajectory files make the encoded latents (hence the DiT) and the reward model stale.
    data_files = [] if episodes is not None else training_data_files(cfg)
    use_generated, use_student = cfg.train.uses_generated_episodes, cfg.train.distills
    use_state_model = cfg.train.trains_state_model
    if stage == "all":
        selected = ("tokenizer", "encode", "dit", *(("distill",) if use_student else ()),
                    *(("generate",) if use_generated else ()), "reward", *(("state",) if use_state_model else ()))
    elif stage == "generate" and not use_generated:
        raise ValueError("stage=generate needs train.reward_generated_episodes > 0")
    elif stage == "distill" and not use_student:
        raise ValueError("stage=distill needs train.distill.steps > 0")
    elif stage == "state" and not use_state_model:
        raise ValueError("stage=state needs train.state.steps > 0")
    else:
        selected = (stage,)
    if "state" in selected and episodes is not None:
        raise ValueError("stage state reads the training files (with their states): give data_dir, not episodes "
                         "(or train.state.steps=0)")
    stages = StageCache(layout.root / TIMINGS_FILE, layout.root / STAGE_SETTINGS_FILE, cfg.force)

    refined = Layout(Path(cfg.refine_from)) if cfg.refine_from else None
    if refined is not None:
        for part in (refined.tokenizer_model, refined.dit_model):
            if not (part / "model.safetensors").is_file():
                raise FileNotFoundError(f"refine_from: {part} holds no trained model (model.safetensors)")

    tokenizer_weights = layout.tokenizer_model / "model.safetensors"
    cond_frames = num_cond_frames(cfg.train.dit.num_cond_latent_frames, cfg.tokenizer.temporal_compression)
    stage_run = StageRun(cfg, layout, data.get, data_files, refined, progress, cond_frames)
    split = {"holdout_fraction": cfg.holdout_fraction, "split_seed": cfg.seed}
    # a refit's encoded split starts from its source's training data, its DiT from the source's weights and statistics
    refit_inputs = ({"encode": [refined.training_data],
                     "dit": [refined.dit_model / "model.safetensors", refined.statistics]} if refined is not None else {})
    for name in selected:
        # (done marker, input files, the directory a rerun empties, every setting that decides the output)
        if name == "tokenizer":  # a refit copies the source's; more data in extra_data_dirs keeps it
            plan = (layout.tokenizer_run / "metrics.json",
                    [refined.tokenizer_model / "model.safetensors"] if refined is not None
                    else [f for f in data_files if f.is_relative_to(cfg.data_dir)], layout.tokenizer_run,
                    output_settings(refine_from=cfg.refine_from) if refined is not None
                    else output_settings(refine_from=None, model=cfg.tokenizer, train=cfg.train.tokenizer))
        elif name == "encode":
            plan = (layout.initial_states, [tokenizer_weights, *data_files, *refit_inputs.get("encode", [])], None,
                    output_settings(files=relative_data_files(cfg) if episodes is None else [],
                                    refine_from=cfg.refine_from))
        elif name == "dit":
            plan = (layout.dit_run / "metrics.json", [layout.latents, *refit_inputs.get("dit", [])], layout.dit_run,
                    output_settings(refine_from=cfg.refine_from, model=cfg.dit, train=cfg.train.dit, **split))
        elif name == "distill":  # the teacher samples with the configured sampler
            plan = (layout.distilled_dit_run / "metrics.json", [layout.dit_model / "model.safetensors"],
                    layout.distilled_dit_run,
                    output_settings(train=cfg.train.distill, sampler=cfg.sampler, **split))
        elif name == "generate":
            replayed_by = layout.distilled_dit_model if use_student else layout.dit_model
            plan = (layout.generated_episodes, [replayed_by / "model.safetensors", *data_files], None,
                    {"episodes": cfg.train.reward_generated_episodes, "seed": cfg.seed,
                     "kinds": sorted(cfg.train.reward_generated_kinds), "student": use_student,
                     "dtype": cfg.train.reward_generated_dtype,
                     **({} if use_student else output_settings(sampler=cfg.sampler))})
        elif name == "reward":
            inputs = ([tokenizer_weights] if cfg.train.reward_reconstruction_prob > 0 else []) + data_files
            plan = (layout.reward_run / "metrics.json", inputs + ([layout.generated_episodes] if use_generated else []),
                    layout.reward_run,
                    output_settings(generated_episodes=use_generated, model=cfg.reward_model, train=cfg.train.reward,
                                    reconstruction_prob=cfg.train.reward_reconstruction_prob))
        else:  # state
            plan = (layout.state_model_run / "metrics.json", data_files, layout.state_model_run,
                    output_settings(**dataclasses.asdict(cfg.train.state), seed=cfg.seed))
        done_marker, inputs, fresh_dir, settings = plan
        stages.run(name, done_marker, inputs, fresh_dir, partial(getattr(parts, f"{name}_stage"), stage_run), settings)

    statistics = ActionStatistics.load(layout.statistics) if layout.statistics.is_file() else None
    settings = world_model_settings(cfg, layout, statistics)
    # Reset states must hold as many frames as the trained DiT conditions on (it may differ from the encode run's).
    if layout.latents.is_file() and _initial_state_frames(layout.initial_states) != settings["num_cond_frames"]:
        write_initial_states(layout.initial_states, data.get(), settings["num_cond_frames"])
    write_json_atomic(layout.world_model_json, settings)
    return stages.report
