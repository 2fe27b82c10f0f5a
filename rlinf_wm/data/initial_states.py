"""Initial states for world-model resets: conditioning frames + instruction taken from recorded trajectories.

File layout (HDF5, written atomically by :meth:`InitialStates.save`)::

    frames        uint8 [N, F, H, W, 3]   the F frames before the first action, oldest first
    instructions  str [N]
    tasks         str [N]                 (optional)
    reset_ids     int64 [N]               (optional) the simulator reset id each state was recorded from
                                          (Meta-World: the ML1 train-task index), -1 when unknown
    start_steps   int64 [N]               (optional) the episode step each state was taken at (0: a reset);
                                          an imagined episode from it has max_episode_steps - start_steps left
    action_sums   float64 [N, A]          (optional) the recorded actions summed up to the state: a DiT trained
                                          with their running sum (rlinf_wm.data.action_inputs) starts from it

``F`` is the number of video frames behind the world model's conditioning latents. Nothing precedes a
reset, so a recorded state is its episode's first frame repeated ``F`` times, exactly as the DiT's training
windows pad an episode start. ``reset_ids`` let a benchmark start the real simulator in the same scene as
an imagined episode (same id -> same object and goal positions).

:meth:`InitialStates.branched` takes states from inside recorded episodes instead (the policy's own real
rollouts): imagined episodes then branch off real trajectories and run shorter, the remedy for model
exploitation of MBPO (Janner et al. 2019, "When to Trust Your Model"): errors compound over the imagined
horizon, so short model rollouts from states the policy really visits are trusted further than long ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode, load_episodes, success_step
from rlinf_wm.data.windows import initial_states as episode_initial_states
from rlinf_wm.utils.io import atomic_path

# Inside a world-model directory (world_model_pipeline writes it there).
INITIAL_STATES_FILE = "initial_states.hdf5"


def _strings(dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dataset[()]]


@dataclass
class InitialStates:
    frames: np.ndarray  # uint8 [N, F, H, W, 3]
    instructions: list[str]
    tasks: list[str] = field(default_factory=list)
    reset_ids: np.ndarray | None = None  # int64 [N], -1 = unknown
    start_steps: np.ndarray | None = None  # int64 [N], 0 = an episode start
    action_sums: np.ndarray | None = None  # float64 [N, A]; None: unknown (0 at an episode start)

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames)
        n = len(self.frames)
        if self.frames.ndim != 5 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"initial-state frames must be uint8 [N, F, H, W, 3], got {self.frames.dtype} {self.frames.shape}")
        if n == 0:
            raise ValueError("initial states are empty: at least one state is needed")
        if len(self.instructions) != n:
            raise ValueError(f"{len(self.instructions)} instructions for {n} initial states")
        if not self.tasks:
            self.tasks = [""] * n
        if len(self.tasks) != n:
            raise ValueError(f"{len(self.tasks)} tasks for {n} initial states")
        self.reset_ids = np.full(n, -1, np.int64) if self.reset_ids is None else np.asarray(self.reset_ids, np.int64)
        if self.reset_ids.shape != (n,):
            raise ValueError(f"reset_ids must have shape [{n}], got {self.reset_ids.shape}")
        self.start_steps = np.zeros(n, np.int64) if self.start_steps is None else np.asarray(self.start_steps, np.int64)
        if self.start_steps.shape != (n,) or (self.start_steps < 0).any():
            raise ValueError(f"start_steps must be {n} integers >= 0, got {self.start_steps.tolist()}")
        if self.action_sums is not None:
            self.action_sums = np.asarray(self.action_sums, np.float64)
            if self.action_sums.ndim != 2 or len(self.action_sums) != n:
                raise ValueError(f"action_sums must have shape [{n}, A], got {self.action_sums.shape}")

    def __len__(self) -> int:
        return len(self.frames)

    def action_sums_of(self, ids: np.ndarray, action_dim: int) -> np.ndarray:
        """``[len(ids), action_dim]`` summed actions before states ``ids``; errors where they are unknown."""
        if self.action_sums is not None:
            if self.action_sums.shape[1] != action_dim:
                raise ValueError(f"initial states hold {self.action_sums.shape[1]}-dim action sums, the env's actions "
                                 f"have {action_dim}")
            return self.action_sums[ids].copy()
        if (self.start_steps[ids] > 0).any():
            raise ValueError("initial states taken inside episodes have no action_sums, which a DiT trained with "
                             "action_integral_scale > 0 needs: rebuild them with InitialStates.branched")
        return np.zeros((len(ids), action_dim), np.float64)

    def resolve_ids(self, ids, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` state indices: reset ids wrapped modulo the number of states, or random ones for ``None``."""
        if ids is None:
            ids = rng.integers(0, len(self), size=count)
        ids = np.asarray(ids)
        if ids.shape != (count,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"reset ids must be {count} integers (one per env), got {ids.dtype} {ids.shape}")
        if (ids < 0).any():
            raise ValueError(f"reset ids must be >= 0, got {ids.tolist()}")
        return ids.astype(np.int64) % len(self)

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.frames.shape[2], self.frames.shape[3]

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], num_frames: int) -> "InitialStates":
        """One state per episode: its first frame repeated ``num_frames`` times (see the module docstring)."""
        states = episode_initial_states(episodes, num_frames)
        return cls(
            frames=np.stack([frames for frames, _, _ in states]),
            instructions=[instruction for _, instruction, _ in states],
            tasks=[task for _, _, task in states],
            reset_ids=np.array([int(ep.attrs.get("task_id", -1)) for ep in episodes], np.int64),
        )

    @classmethod
    def branched(
        cls, episodes: Sequence[Episode], num_frames: int, states_per_episode: int, max_start_step: int,
        statistics: ActionStatistics, seed: int = 0,
    ) -> "InitialStates":
        """States taken inside the episodes: ``states_per_episode`` steps ``t`` per episode, drawn uniformly from
        ``0..min(max_start_step, s, len - 1)`` where ``s`` is the step whose action reached success (frame ``s``
        is the last that does not show the task solved); each state is the recorded frames ``t - num_frames + 1 .. t`` (frame 0
        repeated before the start, as the DiT's training windows pad) with ``start_steps = t``. ``action_sums`` sum
        the actions before ``t``, clipped to ``statistics``' (the world model's) range as the DiT's inputs are.
        """
        if states_per_episode < 1 or max_start_step < 0:
            raise ValueError(f"states_per_episode must be >= 1 and max_start_step >= 0, got {states_per_episode}, "
                             f"{max_start_step}")
        rng = np.random.default_rng(seed)
        frames, instructions, tasks, reset_ids, starts, sums = [], [], [], [], [], []
        for index, episode in enumerate(episodes):
            if len(episode.actions) == 0:
                raise ValueError(f"episode {index} (task={episode.task!r}, seed={episode.seed}) has no actions")
            solved = success_step(episode.rewards, episode.dones, episode.success)
            # frame s (before action s, the one that solves the task) is the last that does not show success
            last = min(max_start_step, len(episode.actions) - 1, solved if solved >= 0 else max_start_step)
            for step in rng.integers(0, last + 1, size=states_per_episode):
                window = np.clip(np.arange(step - num_frames + 1, step + 1), 0, None)
                frames.append(episode.frames[window])
                instructions.append(episode.instruction)
                tasks.append(episode.task)
                reset_ids.append(int(episode.attrs.get("task_id", -1)))
                starts.append(int(step))
                sums.append(statistics.clip(episode.actions[:step]).sum(axis=0))
        if not frames:
            raise ValueError("no episodes to branch from")
        return cls(frames=np.stack(frames), instructions=instructions, tasks=tasks,
                   reset_ids=np.array(reset_ids, np.int64), start_steps=np.array(starts, np.int64),
                   action_sums=np.stack(sums))

    @classmethod
    def from_frames(
        cls, first_frames: np.ndarray, instructions: Sequence[str], num_frames: int = 1,
        tasks: Sequence[str] | None = None, reset_ids: Sequence[int] | None = None,
    ) -> "InitialStates":
        """States from reset frames ``uint8 [N, H, W, 3]`` (e.g. rendered by the real simulator)."""
        first_frames = np.asarray(first_frames)
        if first_frames.ndim != 4:
            raise ValueError(f"first_frames must be uint8 [N, H, W, 3], got {first_frames.shape}")
        return cls(
            frames=np.repeat(first_frames[:, None], num_frames, axis=1),
            instructions=list(instructions),
            tasks=list(tasks) if tasks is not None else [],
            reset_ids=None if reset_ids is None else np.asarray(reset_ids, np.int64),
        )

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path, suffix=".hdf5") as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("frames", data=self.frames, compression="gzip", compression_opts=1)
                f.create_dataset("instructions", data=np.array(self.instructions, dtype=h5py.string_dtype()))
                f.create_dataset("tasks", data=np.array(self.tasks, dtype=h5py.string_dtype()))
                f.create_dataset("reset_ids", data=self.reset_ids)
                f.create_dataset("start_steps", data=self.start_steps)
                if self.action_sums is not None:
                    f.create_dataset("action_sums", data=self.action_sums)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "InitialStates":
        """Load a file written by :meth:`save`; a directory means its ``initial_states.hdf5`` or, when it has
        none, its trajectory files (one state per episode, first frame only)."""
        path = Path(path)
        if path.is_dir():
            if (path / INITIAL_STATES_FILE).is_file():
                return cls.load(path / INITIAL_STATES_FILE)
            try:
                episodes = load_episodes(path)
            except Exception as error:
                raise ValueError(f"{path}: no {INITIAL_STATES_FILE} and no readable trajectories ({error})") from error
            return cls.from_episodes(episodes, 1)
        if not path.is_file():
            raise FileNotFoundError(f"initial states not found: {path}")
        try:
            with h5py.File(path, "r") as f:
                for key in ("frames", "instructions"):
                    if key not in f:
                        raise KeyError(f"{path}: initial-state file has no '{key}' dataset")
                frames = np.asarray(f["frames"])
                instructions = _strings(f["instructions"])
                tasks = _strings(f["tasks"]) if "tasks" in f else []
                reset_ids = np.asarray(f["reset_ids"]) if "reset_ids" in f else None
                start_steps = np.asarray(f["start_steps"]) if "start_steps" in f else None
                action_sums = np.asarray(f["action_sums"]) if "action_sums" in f else None
        except OSError as error:
            raise ValueError(f"{path} is not a readable HDF5 initial-state file: {error}") from error
        try:
            return cls(frames=frames, instructions=instructions, tasks=tasks, reset_ids=reset_ids,
                       start_steps=start_steps, action_sums=action_sums)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
