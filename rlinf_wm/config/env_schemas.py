"""Schemas of env YAMLs (``examples/embodiment/config/env/*.yaml``) and of the collection config.

An env YAML's keys are exactly the constructor kwargs of its env class plus ``env_type``;
:data:`ENV_SCHEMAS` maps ``env_type`` to its schema so configs can dispatch on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlinf_wm.config.libero_schema import LiberoEnvConfig
from rlinf_wm.config.validate import ConfigError, dispatch_field, key_path, require
from rlinf_wm.config.world_model_env_schema import WorldModelEnvConfig

# Named cameras of Meta-World's sawyer scenes (metaworld/assets/objects/assets/xyz_base.xml).
METAWORLD_CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
# Those of them on the gripper, which camera_pose cannot re-aim (it places fixed cameras of the world body).
METAWORLD_GRIPPER_CAMERAS = ("behindGripper", "gripperPOV")


@dataclass
class CameraPose:
    """Re-aims a named camera (world frame, metres): from ``pos`` towards ``lookat``, vertical field of view ``fovy``
    degrees, upright (world z up)."""

    pos: list[float]
    lookat: list[float]
    fovy: float

    def check(self, path: str) -> None:
        for key in ("pos", "lookat"):
            require(len(getattr(self, key)) == 3, f"{path}.{key}", f"must be 3 floats [x, y, z], got {getattr(self, key)}")
        horizontal = ((self.pos[0] - self.lookat[0]) ** 2 + (self.pos[1] - self.lookat[1]) ** 2) ** 0.5
        # the image's up is world z, undefined when looking straight up or down
        require(horizontal > 1e-6, f"{path}.lookat", f"must not be straight above or below pos, got {self.lookat}")
        require(0 < self.fovy < 180, f"{path}.fovy", f"must be in (0, 180) degrees, got {self.fovy}")


@dataclass
class MetaWorldEnvConfig:
    """The real Meta-World v3 simulator (:class:`rlinf_wm.envs.metaworld_env.MetaWorldEnv`)."""

    env_type: Literal["metaworld"]
    task: str  # a Meta-World v3 task name, e.g. "drawer-open-v3" (checked against Meta-World when built)
    num_envs: int = 1
    image_size: list[int] = field(default_factory=lambda: [64, 64])  # [H, W]
    camera: str = "corner3"
    camera_pose: CameraPose | None = None  # re-aim `camera` (null: as Meta-World places it)
    max_episode_steps: int = 150
    seed: int = 0
    include_states: bool = False  # also return the 39-d Meta-World state as Obs.states (per step: info['states'])
    render_every_step: bool = False  # info["frames"]: a frame after every step (to record rollouts; slower)

    def check(self, path: str) -> None:
        at = key_path(path)
        require(self.task.endswith("-v3"), at("task"), f"must be a Meta-World v3 task name like 'drawer-open-v3', got {self.task!r}")
        require(self.num_envs >= 1, at("num_envs"), f"must be >= 1, got {self.num_envs}")
        require(
            len(self.image_size) == 2 and all(size >= 1 for size in self.image_size),
            at("image_size"),
            f"must be two positive ints [H, W], got {self.image_size}",
        )
        require(self.camera in METAWORLD_CAMERAS, at("camera"), f"{self.camera!r} is not one of {list(METAWORLD_CAMERAS)}")
        require(self.camera_pose is None or self.camera not in METAWORLD_GRIPPER_CAMERAS, at("camera_pose"),
                f"re-aims fixed cameras of the world body only; {self.camera!r} moves with the gripper")
        require(self.max_episode_steps >= 1, at("max_episode_steps"), f"must be >= 1, got {self.max_episode_steps}")


# env_type -> schema: a new simulator adds its schema here (see docs/adding_an_env.md).
ENV_SCHEMAS: dict[str, type] = {
    "metaworld": MetaWorldEnvConfig,
    "world_model": WorldModelEnvConfig,
    "libero": LiberoEnvConfig,
}
# Simulators that data collection can drive (each has a scripted expert in rlinf_wm.envs.registry).
COLLECT_ENV_SCHEMAS: dict[str, type] = {"metaworld": MetaWorldEnvConfig, "libero": LiberoEnvConfig}
# Learned envs: RL may train in them, success is only ever measured in a real simulator.
IMAGINED_ENV_TYPES = frozenset({"world_model"})
# LIBERO suites whose tasks the scripted expert (rlinf_wm.envs.libero_expert: pick a bowl, place it on a plate) solves.
LIBERO_EXPERT_SUITES = ("libero_spatial",)


def check_env_task(env: Any, task: str, where: str) -> None:
    """An env config must be of the run's ``task``: a Meta-World or world-model env names it as ``task`` (a world
    model's may be left out), a LIBERO env as its ``suite``. ``where`` is the env's config path (``env.train``)."""
    key, value = ("suite", env.suite) if isinstance(env, LiberoEnvConfig) else ("task", getattr(env, "task", None))
    require(value is None or value == task, f"{where}.{key}", f"{value!r} differs from task={task!r}")


# Per-axis range of the near-miss aim offset (metres, x / y / z of the object position the expert aims at):
# sideways and above, never into the table. On drawer-open-v3 71-74 % of such episodes still succeed.
NEAR_MISS_OFFSET = ((-0.09, 0.0, 0.0), (0.09, 0.0, 0.08))


def _is_box(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(corner, (list, tuple)) and len(corner) == 3 for corner in value))


def near_miss_boxes(offset) -> list[tuple[list[float], list[float]]]:
    """The boxes of a near-miss offset: one box ``[low, high]`` (two [x, y, z] corners) or a list of such boxes, of
    which each episode draws one (misses on both sides of an object exclude the centre: two boxes)."""
    boxes = [offset] if _is_box(offset) else list(offset) if isinstance(offset, (list, tuple)) else []
    if not boxes or not all(_is_box(box) for box in boxes):
        raise ValueError(f"must be two corners [[x, y, z], [x, y, z]] or a list of such boxes, got {offset}")
    for low, high in boxes:
        if any(lo > hi for lo, hi in zip(low, high)):
            raise ValueError(f"each box needs low <= high per axis, got {[list(low), list(high)]}")
    return [(list(map(float, low)), list(map(float, high))) for low, high in boxes]


@dataclass
class CollectConfig:
    """Top-level config of ``examples/collect/collect_data.py`` (scripted-expert data collection)."""

    task: str
    artifacts_dir: str
    env: Any = dispatch_field("env_type", COLLECT_ENV_SCHEMAS)  # a real simulator with a scripted expert
    output_dir: str  # where shard_*.hdf5 and dataset_statistics.json go
    num_episodes: int = 200
    episodes_per_shard: int = 10
    num_workers: int = 2  # Ray collector actors, each with one env; 0 = record in this process without Ray
    num_cpus_per_worker: float = 1.0
    expert_noise_std: float = 0.1  # Gaussian noise on every expert action (before clipping to [-1, 1])
    perturbed_fraction: float = 0.2  # episodes where a random segment is replaced by random actions
    random_fraction: float = 0.1  # episodes of random actions only
    noisy_fraction: float = 0.0  # episodes of the expert with noisy_expert_std action noise: near-misses at contact
    noisy_expert_std: float = 1.0
    # episodes of the expert aiming at the object + an offset drawn per episode between these corners (metres,
    # x / y / z; Meta-World), or in one of a list of such boxes: misses beside the object with a success's motions,
    # the world model's counterexamples
    near_miss_fraction: float = 0.0
    near_miss_offset: list[list[float]] | list[list[list[float]]] = field(
        default_factory=lambda: [list(c) for c in NEAR_MISS_OFFSET])
    steps_after_success: int = 0  # keep recording this many steps past success (Meta-World): frames of success
    seed: int = 0
    progress_bar: bool = True

    def check(self, path: str) -> None:
        at = key_path(path)
        check_env_task(self.env, self.task, at("env"))
        suite = getattr(self.env, "suite", None)
        require(suite is None or suite in LIBERO_EXPERT_SUITES, at("env.suite"),
                f"the LIBERO scripted expert solves {list(LIBERO_EXPERT_SUITES)} only, got {suite!r}")
        require(getattr(self.env, "render_images", True), at("env.render_images"),
                "must be true: collected episodes are world-model and policy training data, their frames are the point")
        require(self.env.num_envs == 1, at("env.num_envs"),
                f"collection runs one env per collector actor (scale with num_workers); got {self.env.num_envs}")
        require(self.num_episodes >= 1, at("num_episodes"), f"must be >= 1, got {self.num_episodes}")
        require(self.episodes_per_shard >= 1, at("episodes_per_shard"), f"must be >= 1, got {self.episodes_per_shard}")
        require(self.num_workers >= 0, at("num_workers"), f"must be >= 0, got {self.num_workers}")
        require(self.num_cpus_per_worker > 0, at("num_cpus_per_worker"), f"must be > 0, got {self.num_cpus_per_worker}")
        require(self.expert_noise_std >= 0, at("expert_noise_std"), f"must be >= 0, got {self.expert_noise_std}")
        require(self.steps_after_success >= 0, at("steps_after_success"), f"must be >= 0, got {self.steps_after_success}")
        require(self.steps_after_success == 0 or self.env.env_type == "metaworld", at("steps_after_success"),
                f"only Meta-World collection records past success, env.env_type is {self.env.env_type!r}")
        require(self.noisy_expert_std >= 0, at("noisy_expert_std"), f"must be >= 0, got {self.noisy_expert_std}")
        fractions = ("perturbed_fraction", "random_fraction", "noisy_fraction", "near_miss_fraction")
        for name in fractions:
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, at(name), f"must be in [0, 1], got {value}")
        total = 0.0
        for name in fractions:  # the error names the share that takes the sum past 1
            total += getattr(self, name)
            # the tolerance: 0.05 + 0.55 + 0.3 + 0.1 sums to 1.0000000000000002
            require(total <= 1.0 + 1e-9, at(name), f"{' + '.join(fractions)} must be <= 1, got {total} by {name}")
        require(self.near_miss_fraction == 0 or self.env.env_type == "metaworld", at("near_miss_fraction"),
                f"near-miss episodes aim Meta-World's scripted experts, env.env_type is {self.env.env_type!r}")
        try:
            near_miss_boxes(self.near_miss_offset)
        except ValueError as error:
            raise ConfigError(f"{at('near_miss_offset')}: {error}") from None
