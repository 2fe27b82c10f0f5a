"""Train the world model stage by stage into one directory, ``world_model_dir``::

    tokenizer/              train_tokenizer's run: model/, checkpoints/, tensorboard/, metrics.json
    latents.hdf5            every episode encoded once (encode_dataset)
    initial_states.hdf5     reset states for the world-model env (InitialStates: first frame repeated, instruction)
    dataset_statistics.json copied from the data directory (the action normalisation of policy, DiT and env)
    dit/                    train_dit's run: model/, checkpoints/, tensorboard/, metrics.json
    dit_distilled/          distill_dit's run (optional): model/ (the few-step student), tensorboard/, metrics.json
    generated_episodes.hdf5 world-model replays of recorded episodes, for the reward model (optional)
    reward_model/           train_reward_model's run: model/, checkpoints/, tensorboard/, metrics.json
    world_model.json        what the env needs: component paths, window sizes, action_scaler, sampler defaults
    timings.json            wall and CPU time of the last run of every stage
    training_data.json      the trajectory files, episodes and env steps the latents were encoded from

Stages: ``tokenizer`` -> ``encode`` -> ``dit`` -> ``distill`` (only with ``train.distill.steps``) -> ``generate``
(only with ``train.reward_generated_episodes``; it replays with the student when there is one, as the env's
``distilled: auto`` will run) and ``reward`` (which needs the tokenizer when it trains on reconstructed frames,
and the generated episodes).
The paths and world_model.json are :mod:`rlinf_wm.data.world_model_layout`'s. A stage is skipped when its
output exists and is newer than its inputs (like ``make``);
``force=True`` reruns it. A rerun starts the stage's directory afresh; an interrupted one (no metrics.json yet)
resumes from its newest checkpoint.

``refine_from`` refits a trained world model on more data (Dyna-style): the tokenizer is copied from it (so the latent
space stays), the DiT continues from its weights, the replays and the reward model are redone.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from rlinf_wm.config.world_model_config import STAGES, DiTTrainConfig, WorldModelConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode
from rlinf_wm.data.world_model_layout import (
    STAGE_SETTINGS_FILE, STATISTICS_FILE, TIMINGS_FILE, Layout, num_cond_frames, world_model_settings,
)
from rlinf_wm.runners.stage_cache import StageCache, output_settings
from rlinf_wm.utils.io import read_json, write_json_atomic

logger = logging.getLogger(__name__)


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


def copy_statistics(data_dir: str | Path, layout: Layout, episodes: _Episodes) -> ActionStatistics:
    """``dataset_statistics.json`` from the data directory (computed from the episodes if it has none)."""
    source = Path(data_dir) / STATISTICS_FILE
    if source.is_file():
        statistics = ActionStatistics.load(source)
    else:
        logger.warning("%s not found: computing action statistics from the episodes", source)
        statistics = ActionStatistics.from_actions(np.concatenate([ep.actions for ep in episodes.get()]))
    statistics.save(layout.statistics)
    return statistics


def write_initial_states(path: Path, episodes: Sequence[Episode], num_frames: int) -> Path:
    """One reset state per episode (:class:`rlinf_wm.data.initial_states.InitialStates`): its first frame repeated
    ``num_frames`` times - nothing precedes a reset, and training windows pad an episode's start the same way."""
    from rlinf_wm.data.initial_states import InitialStates

    InitialStates.from_episodes(episodes, num_frames).save(path)
    return path


def _initial_state_frames(path: Path) -> int | None:
    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        return int(f["frames"].shape[1]) if "frames" in f else None


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
    import json

    return json.loads(json.dumps(value))


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
    use_generated = cfg.train.reward_generated_episodes > 0
    use_student = cfg.train.distill.steps > 0
    use_state_model = cfg.train.state.steps > 0
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
    run = stages.run

    refined = Layout(Path(cfg.refine_from)) if cfg.refine_from else None
    if refined is not None:
        for part in (refined.tokenizer_model, refined.dit_model):
            if not (part / "model.safetensors").is_file():
                raise FileNotFoundError(f"refine_from: {part} holds no trained model (model.safetensors)")

    def tokenizer_stage():
        from rlinf_wm.runners.train_tokenizer import train_tokenizer

        if refined is not None:  # refining keeps the latent space, so the DiT's weights still fit it
            # copied with new file times: the stages that read the tokenizer must see it as new
            shutil.copytree(refined.tokenizer_model, layout.tokenizer_model, dirs_exist_ok=True,
                            copy_function=shutil.copy)
            shutil.copy(refined.tokenizer_run / "metrics.json", layout.tokenizer_run / "metrics.json")
            return {"copied_from": str(refined.tokenizer_run)}

        metrics = train_tokenizer(cfg.train.tokenizer, cfg.data_dir, layout.tokenizer_run, cfg.tokenizer,
                                  episodes=data.get(), progress=progress)
        return {"heldout_psnr": metrics["heldout_psnr"]}

    def encode_stage():
        from rlinf_wm.data.latents import encode_dataset

        _check_tokenizer_matches(cfg, layout)
        segments = split_segments(cfg, data_files)
        tokenizer = _load_tokenizer(layout)
        episodes_list = data.get()
        copy_statistics(cfg.data_dir, layout, data)
        encode_dataset(tokenizer, episodes_list, layout.latents, progress=progress)
        write_initial_states(layout.initial_states, episodes_list, cond_frames)
        kinds = Counter(str(ep.attrs.get("kind", "unknown")) for ep in episodes_list)
        # What the world model learned from, in real env steps: what a same-data baseline may spend.
        write_json_atomic(layout.training_data, {
            "files": [str(p.resolve()) for p in data_files], "episodes": len(episodes_list),
            "split_segments": segments,
            "env_steps": int(sum(ep.length for ep in episodes_list)), "episodes_by_kind": dict(sorted(kinds.items())),
        })
        return {"episodes": len(episodes_list)}

    def dit_stage():
        from rlinf_wm.data.action_inputs import DiTActionInputs
        from rlinf_wm.data.latents import load_encoded_dataset
        from rlinf_wm.runners.train_dit import train_dit

        latent_episodes, attrs = load_encoded_dataset(layout.latents)
        if int(attrs["latent_channels"]) != cfg.tokenizer.latent_channels:
            raise ValueError(f"{layout.latents} has {attrs['latent_channels']} latent channels, "
                             f"tokenizer.latent_channels is {cfg.tokenizer.latent_channels}: rerun stage=encode")
        statistics = ActionStatistics.load(layout.statistics)
        if refined is not None and read_json(refined.statistics) != read_json(layout.statistics):
            raise ValueError(f"refine_from: {refined.statistics} differs from {layout.statistics} (another data_dir?): "
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
            tokenizer=_load_tokenizer(layout), progress=progress,
            init_weights=refined.dit_model if refined is not None else None,
        )
        return {"heldout_loss": metrics.get("heldout_loss"), "steps": metrics["steps"]}

    def distill_stage():
        from rlinf_wm.models.dit import ActionDiT
        from rlinf_wm.models.samplers import FlowSampler
        from rlinf_wm.runners.distill_dit import distill_dit
        from rlinf_wm.utils.checkpoint import load_model

        statistics = ActionStatistics.load(layout.statistics)
        trained = world_model_settings(cfg, layout, statistics)
        train_windows, held_windows = _latent_windows(cfg, layout, trained, statistics)
        metrics = distill_dit(load_model(ActionDiT, layout.dit_model), FlowSampler(**trained["sampler"]),
                              cfg.train.distill, train_windows, held_windows, layout.distilled_dit_run,
                              progress=progress)
        return {k: metrics.get(k) for k in ("heldout_student_teacher_mse", "heldout_teacher_at_student_cost_mse")}

    def generate_stage():
        from rlinf_wm.data.action_inputs import DiTActionInputs
        from rlinf_wm.data.trajectories import write_episodes
        from rlinf_wm.models.dit import ActionDiT
        from rlinf_wm.models.samplers import FlowSampler
        from rlinf_wm.runners.generate_episodes import generate_episodes, select_sources
        from rlinf_wm.utils.checkpoint import load_model
        from rlinf_wm.utils.precision import resolve_dtype

        episodes_list = data.get()
        sources = select_sources(episodes_list, cfg.train.reward_generated_episodes, cfg.train.reward_generated_kinds,
                                 cfg.seed)
        statistics = ActionStatistics.load(layout.statistics)
        trained = world_model_settings(cfg, layout, statistics)  # the DiT's own windows and scaler, as the env's
        # the DiT the env runs (distilled: auto): the student when there is one
        if use_student and not (layout.distilled_dit_run / "metrics.json").is_file():
            raise FileNotFoundError(f"no distilled DiT in {layout.distilled_dit_run} (train.distill.steps > 0): "
                                    "run stage=distill first")
        if use_student and "distilled_sampler" not in trained:  # world_model_settings drops a stale student
            raise FileNotFoundError(f"the distilled DiT in {layout.distilled_dit_run} is older than the DiT it "
                                    "distils: run stage=distill first")
        dit, sampler = ((layout.distilled_dit_model, trained["distilled_sampler"]) if use_student
                        else (layout.dit_model, trained["sampler"]))
        generated = generate_episodes(
            _load_tokenizer(layout), load_model(ActionDiT, dit), FlowSampler(**sampler),
            DiTActionInputs(statistics, trained["action_scaler"], trained["action_integral_scale"]),
            trained["num_cond_latent_frames"], trained["num_pred_latent_frames"],
            [episodes_list[i] for i in sources], sources,
            batch_size=cfg.train.reward_generated_batch_size, seed=cfg.seed, progress=progress,
            dtype=resolve_dtype(cfg.train.reward_generated_dtype, key="train.reward_generated_dtype"),
        )
        write_episodes(layout.generated_episodes, generated)
        return {"episodes": len(generated), "failed": sum(not ep.success for ep in generated)}

    def reward_stage():
        from rlinf_wm.data.trajectories import read_episodes
        from rlinf_wm.runners.train_reward import train_reward_model

        prob = cfg.train.reward_reconstruction_prob
        tokenizer = _load_tokenizer(layout) if prob > 0 else None
        if tokenizer is not None and tokenizer.temporal_compression != 1:
            logger.warning("reward model: the %s tokenizer is not per-frame; training on real frames only", tokenizer.kind)
            tokenizer = None
        if use_generated and not layout.generated_episodes.is_file():
            raise FileNotFoundError(f"no generated episodes at {layout.generated_episodes}: run stage=generate first")
        generated = read_episodes(layout.generated_episodes) if use_generated else []
        chunk_size = world_model_settings(cfg, layout, None)["chunk_size"]  # the env scores each chunk's last frame
        metrics = train_reward_model(cfg.train.reward, cfg.data_dir, layout.reward_run, cfg.reward_model,
                                     episodes=data.get(), tokenizer=tokenizer, tokenizer_reconstruction_prob=prob,
                                     generated=generated, chunk_size=chunk_size, progress=progress,
                                     split_segments=recorded_split_segments(layout.root))
        return {k: metrics[k] for k in ("heldout_accuracy", "heldout_auc", "heldout_generated_false_success_rate")
                if k in metrics}

    def state_stage():
        from rlinf_wm.runners.train_state_model import train_state_model

        state = cfg.train.state
        metrics = train_state_model([str(f) for f in data_files], layout.state_model_run, members=state.members,
                                    horizon=state.horizon, steps=state.steps, batch=state.batch_size,
                                    holdout=state.holdout_fraction, seed=cfg.seed, progress=progress)
        return {k: metrics[k] for k in ("heldout_auc", "success_distance")}

    tokenizer_weights = layout.tokenizer_model / "model.safetensors"
    cond_frames = num_cond_frames(cfg.train.dit.num_cond_latent_frames, cfg.tokenizer.temporal_compression)
    # each stage's record: every setting that decides its output (the input files' times are checked beside it)
    split = {"holdout_fraction": cfg.holdout_fraction, "split_seed": cfg.seed}
    tokenizer_settings = (output_settings(refine_from=cfg.refine_from) if refined is not None else
                          output_settings(refine_from=None, model=cfg.tokenizer, train=cfg.train.tokenizer))
    for name in selected:
        if name == "tokenizer":  # a refit copies the source's; more data in extra_data_dirs keeps it
            inputs = ([refined.tokenizer_model / "model.safetensors"] if refined is not None
                      else [f for f in data_files if f.is_relative_to(cfg.data_dir)])
            run(name, layout.tokenizer_run / "metrics.json", inputs, layout.tokenizer_run, tokenizer_stage,
                tokenizer_settings)
        elif name == "encode":
            run(name, layout.initial_states, [tokenizer_weights, *data_files], None, encode_stage,
                output_settings(files=relative_data_files(cfg) if episodes is None else [], cond_frames=cond_frames,
                                refine_from=cfg.refine_from))
        elif name == "dit":
            run(name, layout.dit_run / "metrics.json", [layout.latents], layout.dit_run, dit_stage,
                output_settings(refine_from=cfg.refine_from, model=cfg.dit, train=cfg.train.dit, **split))
        elif name == "distill":
            run(name, layout.distilled_dit_run / "metrics.json", [layout.dit_model / "model.safetensors"],
                layout.distilled_dit_run, distill_stage, output_settings(train=cfg.train.distill, **split))
        elif name == "generate":
            replayed_by = layout.distilled_dit_model if use_student else layout.dit_model
            run(name, layout.generated_episodes, [replayed_by / "model.safetensors", *data_files], None,
                generate_stage, {"episodes": cfg.train.reward_generated_episodes, "seed": cfg.seed,
                                 "kinds": sorted(cfg.train.reward_generated_kinds), "student": use_student,
                                 "dtype": cfg.train.reward_generated_dtype})
        elif name == "reward":
            inputs = ([tokenizer_weights] if cfg.train.reward_reconstruction_prob > 0 else []) + data_files
            inputs += [layout.generated_episodes] if use_generated else []
            run(name, layout.reward_run / "metrics.json", inputs, layout.reward_run, reward_stage,
                output_settings(generated_episodes=use_generated, model=cfg.reward_model, train=cfg.train.reward,
                                reconstruction_prob=cfg.train.reward_reconstruction_prob))
        elif name == "state":
            run(name, layout.state_model_run / "metrics.json", data_files, layout.state_model_run, state_stage,
                output_settings(**dataclasses.asdict(cfg.train.state), seed=cfg.seed))

    statistics = ActionStatistics.load(layout.statistics) if layout.statistics.is_file() else None
    settings = world_model_settings(cfg, layout, statistics)
    # Reset states must hold as many frames as the trained DiT conditions on (it may differ from the encode run's).
    if layout.latents.is_file() and _initial_state_frames(layout.initial_states) != settings["num_cond_frames"]:
        write_initial_states(layout.initial_states, data.get(), settings["num_cond_frames"])
    write_json_atomic(layout.world_model_json, settings)
    return stages.report
