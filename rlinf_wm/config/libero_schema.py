"""Schema of LIBERO env YAMLs (``examples/embodiment/config/env/libero_*.yaml``).

Keys are exactly the constructor kwargs of :class:`rlinf_wm.envs.libero_env.LiberoEnv` plus ``env_type``.
Checked without importing LIBERO, so a config can be validated on a machine without the extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlinf_wm.config.validate import key_path, require

# The five standard suites and their task counts (LIBERO's benchmark registry).
LIBERO_SUITES = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}


@dataclass
class LiberoEnvConfig:
    """The real LIBERO simulator (robosuite 1.4); needs the ``libero`` extra at run time."""

    env_type: Literal["libero"]
    suite: str = "libero_spatial"
    task_ids: list[int] = field(default_factory=lambda: [0])  # reset id i -> task task_ids[i % len(task_ids)]
    num_envs: int = 1
    image_size: list[int] = field(default_factory=lambda: [128, 128])  # [H, W]
    include_wrist: bool = False  # also render the wrist camera (ChunkStep.info["wrist_images"])
    include_states: bool = False  # Obs.states = 8-d robot state (eef xyz, axis-angle, gripper)
    max_episode_steps: int | None = None  # null: the suite's (libero_spatial 220)
    settle_steps: int = 10  # no-op steps after restoring an initial state, not counted
    cheap_rendering: bool = True  # no reflections / multisampling (~2.5x faster software rendering)
    render_images: bool = True  # false: black images (state-only users such as expert success rates)
    render_every_step: bool = False  # info["frames"]: a frame after every step (to record rollouts; slower)
    seed: int = 0

    def check(self, path: str) -> None:
        at = key_path(path)
        require(self.suite in LIBERO_SUITES, at("suite"), f"{self.suite!r} is not one of {sorted(LIBERO_SUITES)}")
        n_tasks = LIBERO_SUITES[self.suite]
        require(len(self.task_ids) >= 1, at("task_ids"), "must name at least one task")
        bad = [t for t in self.task_ids if not 0 <= t < n_tasks]
        require(not bad, at("task_ids"), f"{bad} out of range for {self.suite} (0..{n_tasks - 1})")
        require(len(set(self.task_ids)) == len(self.task_ids), at("task_ids"), f"has duplicates: {self.task_ids}")
        require(self.num_envs >= 1, at("num_envs"), f"must be >= 1, got {self.num_envs}")
        require(
            len(self.image_size) == 2 and all(size >= 1 for size in self.image_size),
            at("image_size"),
            f"must be two positive ints [H, W], got {self.image_size}",
        )
        require(self.max_episode_steps is None or self.max_episode_steps >= 1, at("max_episode_steps"),
                f"must be >= 1 or null, got {self.max_episode_steps}")
        require(self.settle_steps >= 0, at("settle_steps"), f"must be >= 0, got {self.settle_steps}")
