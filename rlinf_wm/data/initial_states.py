"""Initial states for world-model resets: conditioning frames + instruction taken from recorded trajectories."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from rlinf_wm.data.trajectories import load_episodes
from rlinf_wm.data.windows import initial_states as episode_initial_states
from rlinf_wm.utils.io import atomic_path


@dataclass
class InitialStates:
    frames: np.ndarray  # uint8 [N, C, H, W, 3]
    instructions: list[str]
    tasks: list[str]

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_episodes(cls, episodes, num_cond_frames: int) -> "InitialStates":
        states = episode_initial_states(episodes, num_cond_frames)
        if not states:
            raise ValueError("no episodes to take initial states from")
        return cls(
            frames=np.stack([frames for frames, _, _ in states]),
            instructions=[instruction for _, instruction, _ in states],
            tasks=[task for _, _, task in states],
        )

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path, suffix=".hdf5") as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("frames", data=self.frames, compression="gzip", compression_opts=1)
                f.create_dataset("instructions", data=np.array(self.instructions, dtype=h5py.string_dtype()))
                f.create_dataset("tasks", data=np.array(self.tasks, dtype=h5py.string_dtype()))

    @classmethod
    def load(cls, path: str | os.PathLike, num_cond_frames: int | None = None) -> "InitialStates":
        """Load a file written by :meth:`save`, or derive the states from a directory of trajectories."""
        path = Path(path)
        if path.is_dir():
            if num_cond_frames is None:
                raise ValueError(f"{path} is a trajectory directory: num_cond_frames is needed to build initial states")
            return cls.from_episodes(load_episodes(path), num_cond_frames)
        if not path.is_file():
            raise FileNotFoundError(f"initial states not found: {path}")
        with h5py.File(path, "r") as f:
            for key in ("frames", "instructions"):
                if key not in f:
                    raise KeyError(f"{path}: initial-state file has no '{key}'")
            frames = np.asarray(f["frames"])
            instructions = [s.decode() if isinstance(s, bytes) else str(s) for s in f["instructions"][()]]
            tasks = [s.decode() if isinstance(s, bytes) else str(s) for s in f["tasks"][()]] if "tasks" in f else [""] * len(frames)
        if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{path}: 'frames' must be uint8 [N, C, H, W, 3], got {frames.dtype} {frames.shape}")
        if num_cond_frames is not None and frames.shape[1] != num_cond_frames:
            raise ValueError(f"{path}: states hold {frames.shape[1]} conditioning frames, the env needs {num_cond_frames}")
        return cls(frames=frames, instructions=instructions, tasks=tasks)
