"""Trajectory files in the robomimic / LIBERO HDF5 layout.

One file holds many episodes::

    data/                      attrs: total (steps), env_args (JSON), task, instruction
      demo_0/                  attrs: num_samples, instruction, success, task, seed
        obs/agentview_rgb      uint8 [T, H, W, 3]   frame before each action
        obs/robot_state        float32 [T, S]       (optional)
        final_obs/agentview_rgb uint8 [1, H, W, 3]   frame after the last action (ours; optional)
        actions                float32 [T, A]
        rewards                float32 [T]
        dones                  uint8 [T]

Real LIBERO datasets (no ``final_obs``, instruction in ``data.attrs['problem_info']``) load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from rlinf_wm.utils.io import atomic_path, open_hdf5

CAMERA_KEY = "agentview_rgb"
# Per-demo attributes with their own Episode field; any other attribute round-trips through Episode.attrs.
_STANDARD_ATTRS = {"num_samples", "instruction", "success", "task", "seed"}


def success_step(rewards: np.ndarray, dones: np.ndarray | None = None, success: bool | None = None) -> int:
    """Index of the first step whose reward marks success (>= 0.5); -1 if success is never reached.

    Datasets that only flag success at the end (``success`` attribute, no reward) fall back to the first
    ``done`` step, or the last step.
    """
    rewards = np.asarray(rewards)
    hits = np.flatnonzero(rewards >= 0.5)
    if len(hits):
        return int(hits[0])
    if success and len(rewards):
        done_steps = np.flatnonzero(np.asarray(dones, bool)) if dones is not None else np.array([], np.int64)
        return int(done_steps[0]) if len(done_steps) else len(rewards) - 1
    return -1


def success_frame_labels(num_frames: int, step: int) -> np.ndarray:
    """bool ``[num_frames]``: frame ``j`` shows success iff success was reached at step ``step < j``."""
    labels = np.zeros(num_frames, dtype=bool)
    if step >= 0:
        labels[step + 1 :] = True
    return labels


@dataclass
class Episode:
    frames: np.ndarray  # uint8 [T or T+1, H, W, 3]; T+1 when the final frame was recorded
    actions: np.ndarray  # float32 [T, A]
    rewards: np.ndarray  # float32 [T]
    dones: np.ndarray  # bool [T]
    success: bool
    instruction: str
    task: str = ""
    seed: int = -1
    states: np.ndarray | None = None  # float32 [T, S]
    attrs: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.actions)

    def until_success(self) -> "Episode":
        """This episode cut after the step that reached success (itself when it never did or ends there): what
        a demonstration should teach, without the steps a collector recorded past success."""
        step = success_step(self.rewards, self.dones, self.success)
        if step < 0 or step + 1 >= self.length:
            return self
        end = step + 1
        return dataclasses.replace(
            self, frames=self.frames[: end + 1], actions=self.actions[:end], rewards=self.rewards[:end],
            dones=self.dones[:end], states=None if self.states is None else self.states[:end],
        )

    def validate(self, where: str = "episode") -> None:
        t = len(self.actions)
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"{where}: frames must be uint8 [T, H, W, 3], got {self.frames.dtype} {self.frames.shape}")
        if len(self.frames) not in (t, t + 1):
            raise ValueError(f"{where}: {len(self.frames)} frames for {t} actions (expected {t} or {t + 1})")
        if self.actions.ndim != 2:
            raise ValueError(f"{where}: actions must be [T, A], got {self.actions.shape}")
        for name in ("rewards", "dones"):
            if len(getattr(self, name)) != t:
                raise ValueError(f"{where}: {name} has {len(getattr(self, name))} entries for {t} actions")


def write_episodes(path: str | os.PathLike, episodes: Iterable[Episode], env_args: dict | None = None) -> Path:
    """Write episodes to one HDF5 file atomically (temp file, then rename)."""
    path = Path(path)
    episodes = list(episodes)
    with atomic_path(path, suffix=".hdf5") as tmp:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            total = 0
            for index, ep in enumerate(episodes):
                ep.validate(f"{path} demo_{index}")
                demo = data.create_group(f"demo_{index}")
                t = ep.length
                demo.create_dataset(f"obs/{CAMERA_KEY}", data=ep.frames[:t], compression="gzip", compression_opts=1)
                if len(ep.frames) == t + 1:
                    demo.create_dataset(f"final_obs/{CAMERA_KEY}", data=ep.frames[t:])
                if ep.states is not None:
                    demo.create_dataset("obs/robot_state", data=np.asarray(ep.states, np.float32))
                demo.create_dataset("actions", data=np.asarray(ep.actions, np.float32))
                demo.create_dataset("rewards", data=np.asarray(ep.rewards, np.float32))
                demo.create_dataset("dones", data=np.asarray(ep.dones, np.uint8))
                demo.attrs.update(
                    num_samples=t, instruction=ep.instruction, success=bool(ep.success), task=ep.task, seed=int(ep.seed)
                )
                for key, value in ep.attrs.items():
                    demo.attrs[key] = value
                total += t
            data.attrs["total"] = total
            data.attrs["env_args"] = json.dumps(env_args or {})
            if episodes:
                data.attrs["task"] = episodes[0].task
                data.attrs["instruction"] = episodes[0].instruction
    return path


def _require(group: h5py.Group, key: str, path: Path) -> h5py.Dataset:
    if key not in group:
        raise KeyError(f"{path}: {group.name} has no '{key}'")
    return group[key]


def read_episodes(path: str | os.PathLike, load_frames: bool = True) -> list[Episode]:
    """Read every episode of one file; a truncated or malformed file raises naming the file and key."""
    path = Path(path)
    episodes = []
    with open_hdf5(path, "trajectory file") as f:
        if "data" not in f:
            raise KeyError(f"{path}: no 'data' group (expected the robomimic/LIBERO layout)")
        data = f["data"]
        default_instruction = str(data.attrs.get("instruction", ""))
        if not default_instruction and "problem_info" in data.attrs:
            default_instruction = json.loads(data.attrs["problem_info"]).get("language_instruction", "")
        names = sorted((k for k in data.keys() if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        for name in names:
            demo = data[name]
            where = f"{path}:{demo.name}"
            actions = np.asarray(_require(demo, "actions", path), np.float32)
            t = len(actions)
            if load_frames:
                frames = np.asarray(_require(demo, f"obs/{CAMERA_KEY}", path))
                if f"final_obs/{CAMERA_KEY}" in demo:
                    frames = np.concatenate([frames, np.asarray(demo[f"final_obs/{CAMERA_KEY}"])])
            else:
                shape = _require(demo, f"obs/{CAMERA_KEY}", path).shape
                frames = np.zeros((0, *shape[1:]), np.uint8)
            rewards = np.asarray(demo["rewards"], np.float32) if "rewards" in demo else np.zeros(t, np.float32)
            dones = np.asarray(_require(demo, "dones", path)).astype(bool)
            success = bool(demo.attrs["success"]) if "success" in demo.attrs else bool(dones[-1]) if t else False
            states = np.asarray(demo["obs/robot_state"], np.float32) if "obs/robot_state" in demo else None
            episode = Episode(
                frames=frames,
                actions=actions,
                rewards=rewards,
                dones=dones,
                success=success,
                instruction=str(demo.attrs.get("instruction", default_instruction)),
                task=str(demo.attrs.get("task", data.attrs.get("task", ""))),
                seed=int(demo.attrs.get("seed", -1)),
                states=states,
                attrs={k: v for k, v in demo.attrs.items() if k not in _STANDARD_ATTRS},
            )
            if load_frames:
                episode.validate(where)
            episodes.append(episode)
    return episodes


def find_trajectory_files(root: str | os.PathLike) -> list[Path]:
    """All ``*.hdf5`` files under a directory (or the file itself), sorted; hidden temp files skipped."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"trajectory directory not found: {root}")
    files = sorted(p for p in root.rglob("*.hdf5") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no .hdf5 trajectory files under {root}")
    return files


def load_episodes(root: str | os.PathLike, load_frames: bool = True) -> list[Episode]:
    return [ep for path in find_trajectory_files(root) for ep in read_episodes(path, load_frames)]
