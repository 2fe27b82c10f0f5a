"""A scripted pick-and-place expert for LIBERO-Spatial, from privileged object poses.

Every LIBERO-Spatial task is "pick up the black bowl <somewhere> and place it on the plate". The
expert reads the bowl's and the plate's positions from the simulator (not from images), grasps the
bowl's rim from above (the Panda's fingers close along the world y axis, so it pinches the rim at
the bowl's +y or -y side, whichever has more room), lifts it, carries it until the bowl's centre is
above the plate's, lowers it and lets go. LIBERO's goal check wants the bowl touching the plate with
centres less than 3 cm apart, so the carry phase servoes the bowl position itself, not the hand.

Episodes are recorded like the Meta-World ones (:func:`record_episode`): "expert" (noisy expert),
"perturbed" (random actions for a random segment, then the expert recovers) and "random".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rlinf_wm.data.trajectories import Episode
from rlinf_wm.envs.libero_env import LiberoEnv

EPISODE_KINDS = ("expert", "perturbed", "random")

# OSC_POSE scales a unit action to 5 cm of translation and 0.5 rad of rotation per step.
POSITION_SCALE = 0.05
ROTATION_SCALE = 0.5
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0


@dataclass
class ExpertParams:
    """Geometry and gains of the scripted expert (metres, relative to the objects' body origins)."""

    rim_offset: float = 0.045  # bowl centre -> grasp point on the rim (outer rim radius ~0.047)
    grasp_height: float = 0.035  # hand above the bowl's origin (its bottom) when closing the fingers
    approach_height: float = 0.10  # hand above the grasp point before descending
    carry_clearance: float = 0.12  # bowl bottom above the highest of bowl start / plate while carrying
    release_height: float = 0.025  # bowl bottom above the plate's origin when letting go
    gain: float = 1.5  # proportional gain on position error, in units of one action step
    max_speed: float = 1.0  # cap on translation actions (1.0 = 5 cm per step)
    rotation_gain: float = 0.5  # holds the initial top-down hand orientation
    position_tolerance: float = 0.008
    close_steps: int = 12  # the gripper ramps from open to closed in ~8 steps
    open_steps: int = 8


def quat_xyzw_to_matrix(quat: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(quat, np.float64) / np.linalg.norm(quat)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis * angle (3,), angle in [0, pi)."""
    cos_angle = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos_angle)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ~ pi: the error is symmetric, any consistent axis works
        axis = np.sqrt(np.clip((np.diag(rotation) + 1.0) / 2.0, 0.0, None))
        norm = np.linalg.norm(axis)
    return axis / norm * angle


class SpatialPickPlaceExpert:
    """State machine: approach -> descend -> grasp -> lift -> carry -> lower -> release -> retreat.

    ``act(observation)`` takes robosuite's observation dict of one env
    (:meth:`LiberoEnv.raw_observations`) and returns a float32 action in [-1, 1]^7. Call
    :meth:`reset` with the bowl's and the plate's names at the start of each episode.

    Noise: ``action_noise_std`` adds Gaussian noise to the six arm dimensions of every action;
    ``waypoint_noise`` (metres) shifts the grasp and release points once per episode.
    """

    PHASES = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")

    def __init__(self, params: ExpertParams | None = None, action_noise_std: float = 0.0,
                 waypoint_noise: float = 0.0, rng: np.random.Generator | None = None) -> None:
        if action_noise_std < 0 or waypoint_noise < 0:
            raise ValueError(f"noise must be >= 0, got action_noise_std={action_noise_std}, waypoint_noise={waypoint_noise}")
        self.params = params or ExpertParams()
        self.action_noise_std = float(action_noise_std)
        self.waypoint_noise = float(waypoint_noise)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.bowl = self.plate = ""
        self.phase = "approach"
        self.retries = 0

    def reset(self, bowl: str, plate: str, observation: dict[str, np.ndarray], others: list[str] = ()) -> None:
        """Plan the grasp from the first observation; ``others`` are obstacles for choosing the rim side."""
        self.bowl, self.plate, self._others = bowl, plate, list(others)
        # The start pose is top-down; the expert holds it (also after a perturbation turned the hand).
        self._target_rotation = quat_xyzw_to_matrix(observation["robot0_eef_quat"])
        self.replan(observation)

    def replan(self, observation: dict[str, np.ndarray]) -> None:
        """Start over from the approach with the objects where they are now (e.g. after a perturbation)."""
        p = self.params
        bowl, plate, others = self.bowl, self.plate, self._others
        self.phase = "approach"
        self._phase_steps = 0
        self._travel_z = max(observation["robot0_eef_pos"][2], observation[f"{bowl}_pos"][2] + p.carry_clearance)
        self._bowl_z_at_grasp = observation[f"{bowl}_pos"][2]
        self._held_offset: np.ndarray | None = None
        bowl_pos = observation[f"{bowl}_pos"]
        # Pinch the rim on the side (+y or -y) farther from the other objects: the fingers straddle
        # the rim there, and the outer finger must not land on a neighbour.
        # Pinch the rim on the side (+y or -y) farther from the other objects: the fingers straddle
        # the rim there, and the outer finger must not land on a neighbour. Every other attempt
        # (after a blocked descent or a missed grasp) tries the other side.
        obstacles = [observation[f"{name}_pos"][:2] for name in others if f"{name}_pos" in observation]

        def clearance(side: float) -> float:
            point = bowl_pos[:2] + np.array([0.0, side * p.rim_offset])
            return min((float(np.linalg.norm(point - o)) for o in obstacles), default=np.inf)

        best_side = 1.0 if clearance(1.0) >= clearance(-1.0) else -1.0
        side = best_side if self.retries % 2 == 0 else -best_side
        self._z_history: list[float] = []
        self._position_history: list[np.ndarray] = []
        jitter = self.rng.normal(0.0, self.waypoint_noise, 3) if self.waypoint_noise > 0 else np.zeros(3)
        self._grasp_offset = np.array([0.0, side * p.rim_offset, p.grasp_height]) + jitter * np.array([1, 1, 0.3])
        self._release_jitter = (self.rng.normal(0.0, self.waypoint_noise, 2) if self.waypoint_noise > 0 else np.zeros(2))
        self._carry_z = max(bowl_pos[2], observation[f"{plate}_pos"][2]) + p.carry_clearance

    @property
    def done(self) -> bool:
        return self.phase == "retreat" and self._phase_steps > 20

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        p = self.params
        eef = observation["robot0_eef_pos"]
        bowl = observation[f"{self.bowl}_pos"]
        plate = observation[f"{self.plate}_pos"]
        grasp_point = bowl + self._grasp_offset
        hand_above_bowl = eef - bowl  # the hand's offset from the bowl once it is held
        gripper = GRIPPER_OPEN
        target = eef

        if self.phase == "approach":
            target = grasp_point + np.array([0.0, 0.0, p.approach_height])
            if np.linalg.norm(target[:2] - eef[:2]) > 3 * p.position_tolerance:
                # Cross over at travel height, then go down: a straight line could clip the cabinet.
                target[2] = max(target[2], self._travel_z)
            distance = float(np.linalg.norm(target - eef))
            self._position_history.append(eef.copy())
            # Stalled: the hand hardly moved in 5 steps (the target itself jumps down after the crossing).
            stalled = len(self._position_history) > 8 and np.linalg.norm(self._position_history[-6] - eef) < 0.002
            if self._reached(eef, target, 2.0) or (stalled and distance < 0.02):  # (OSC settles ~1-2 cm off)
                self._next()
            elif stalled:
                return self._retry(observation)  # the hand is stuck on a fixture (the cabinet): other side
        if self.phase == "descend":
            target = grasp_point
            self._z_history.append(float(eef[2]))
            stalled = len(self._z_history) > 8 and self._z_history[-6] - eef[2] < 0.002
            if stalled and eef[2] - target[2] > 0.015:  # a finger sits on something: try another grasp
                return self._retry(observation)
            if self._reached(eef, target) or stalled or self._phase_steps > 40:
                self._next()
        if self.phase == "grasp":
            target, gripper = grasp_point, GRIPPER_CLOSE
            if self._phase_steps >= p.close_steps:
                self._z_history = []
                self._bowl_z_at_grasp = bowl[2]
                self._held_offset = hand_above_bowl.copy()
                self._next()
        if self.phase == "lift":
            gripper = GRIPPER_CLOSE
            target = np.array([eef[0], eef[1], self._carry_z + self._held_offset[2]])
            self._z_history.append(float(eef[2]))
            # Far from the robot's base the arm may not get higher (reach limit): carry on from there.
            stalled = self._phase_steps > 8 and eef[2] - self._z_history[-6] < 0.002
            if self._reached(eef, target, 2.0) or stalled or self._phase_steps > 40:
                if bowl[2] < self._bowl_z_at_grasp + 0.03:  # the bowl stayed down: the grasp missed
                    return self._retry(observation)
                self._next()
        if self.phase in ("carry", "lower") and np.linalg.norm(hand_above_bowl - self._held_offset) > 0.04:
            return self._retry(observation)  # the bowl slipped out of the hand
        if self.phase == "carry":
            gripper = GRIPPER_CLOSE
            goal_xy = plate[:2] + self._release_jitter
            target = np.array([*(eef[:2] + goal_xy - bowl[:2]), self._carry_z + self._held_offset[2]])
            if np.linalg.norm(goal_xy - bowl[:2]) < p.position_tolerance or self._phase_steps > 80:
                self._next()
        if self.phase == "lower":
            gripper = GRIPPER_CLOSE
            goal_xy = plate[:2] + self._release_jitter
            release_z = plate[2] + p.release_height + self._held_offset[2]
            target = np.array([*(eef[:2] + goal_xy - bowl[:2]), release_z])
            if abs(eef[2] - release_z) < p.position_tolerance or self._phase_steps > 40:
                self._next()
        if self.phase == "release":
            target, gripper = eef, GRIPPER_OPEN
            if self._phase_steps >= p.open_steps:
                self._next()
        if self.phase == "retreat":
            target = np.array([eef[0], eef[1], self._carry_z + 0.05])
            gripper = GRIPPER_OPEN

        self._phase_steps += 1
        action = np.zeros(7)
        action[:3] = np.clip(p.gain * (target - eef) / POSITION_SCALE, -p.max_speed, p.max_speed)
        current = quat_xyzw_to_matrix(observation["robot0_eef_quat"])
        rotation_error = matrix_to_axis_angle(self._target_rotation @ current.T)
        action[3:6] = np.clip(p.rotation_gain * rotation_error / ROTATION_SCALE, -1.0, 1.0)
        if self.action_noise_std > 0:
            action[:6] += self.rng.normal(0.0, self.action_noise_std, 6)
        action[6] = gripper
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    __call__ = act

    def _retry(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """Open the hand and plan again from where the bowl is now."""
        self.retries += 1
        self.replan(observation)
        return self.act(observation)

    def _reached(self, eef: np.ndarray, target: np.ndarray, scale: float = 1.0) -> bool:
        return bool(np.linalg.norm(target - eef) < self.params.position_tolerance * scale)

    def _next(self) -> None:
        self.phase = self.PHASES[min(self.PHASES.index(self.phase) + 1, len(self.PHASES) - 1)]
        self._phase_steps = 0


def make_expert(env: LiberoEnv, b: int = 0, action_noise_std: float = 0.0, waypoint_noise: float = 0.0,
                rng: np.random.Generator | None = None) -> SpatialPickPlaceExpert:
    """An expert reset for env ``b``'s current episode (call after ``env.reset``)."""
    bowl, plate = env.objects_of_interest(b)[:2]
    observation = env.raw_observations(b)
    others = [key[: -len("_pos")] for key in observation
              if key.endswith("_pos") and not key.startswith("robot0") and "_to_" not in key
              and key[: -len("_pos")] not in (bowl, plate)]
    expert = SpatialPickPlaceExpert(action_noise_std=action_noise_std, waypoint_noise=waypoint_noise, rng=rng)
    expert.reset(bowl, plate, observation, others)
    return expert


class RandomActions:
    """Uniform random arm motion held for a few steps each (so the arm wanders instead of jittering).

    Rotations are damped (a spinning hand is neither useful data nor what a policy does), and the
    gripper toggles at random.
    """

    def __init__(self, rng: np.random.Generator, hold_steps: tuple[int, int] = (3, 10), rotation_scale: float = 0.3) -> None:
        self.rng = rng
        self.hold_steps = hold_steps
        self.rotation_scale = rotation_scale
        self._action = np.zeros(7, np.float32)
        self._left = 0

    def next(self) -> np.ndarray:
        if self._left <= 0:
            action = self.rng.uniform(-1.0, 1.0, 7)
            action[3:6] *= self.rotation_scale
            action[6] = GRIPPER_CLOSE if action[6] > 0 else GRIPPER_OPEN
            self._action = action.astype(np.float32)
            self._left = int(self.rng.integers(self.hold_steps[0], self.hold_steps[1] + 1))
        self._left -= 1
        return self._action.copy()


def record_episode(
    env: LiberoEnv,
    kind: str,
    seed: int,
    task_id: int,
    expert_noise_std: float = 0.1,
    perturb_steps: tuple[int, int] = (15, 40),
    waypoint_noise: float = 0.005,
) -> Episode:
    """Run one episode in env 0 of ``env`` (``num_envs`` must be 1) and return it with every frame.

    Same contract as :func:`rlinf_wm.envs.experts.record_episode` (Meta-World): ``task_id`` is the
    reset id, ``seed`` fixes all randomness, so the same arguments give the same episode.
    """
    if kind not in EPISODE_KINDS:
        raise ValueError(f"episode kind must be one of {EPISODE_KINDS}, got {kind!r}")
    if env.num_envs != 1:
        raise ValueError(f"record_episode needs an env with num_envs=1, got {env.num_envs}")
    rng = np.random.default_rng(seed)
    horizon = env.max_episode_steps
    segment = range(0)
    if kind == "perturbed":
        start = int(rng.integers(0, max(1, int(0.6 * horizon))))
        segment = range(start, start + int(rng.integers(perturb_steps[0], perturb_steps[1] + 1)))
    random_actions = RandomActions(rng)

    obs = env.reset(ids=[task_id])
    expert = make_expert(env, 0, expert_noise_std, waypoint_noise, rng)
    frames, states, actions, rewards, dones = [obs.images[0]], [], [], [], []
    for t in range(horizon):
        raw = env.raw_observations(0)
        state = env.robot_states()[0]
        if kind == "random" or t in segment:
            action = random_actions.next()
        else:
            if len(segment) and t == segment.stop:
                expert.replan(raw)  # the objects may have moved: plan again from where they are
            action = expert.act(raw)
        step = env.chunk_step(action[None, None, :])
        states.append(state)
        actions.append(action)
        rewards.append(float(step.rewards[0, 0]))
        dones.append(bool(step.terminated[0, 0]))
        frames.append(step.obs.images[0])
        if step.done[0]:
            break
    task = int(env.slot_task_ids[0])
    return Episode(
        frames=np.stack(frames),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        dones=np.asarray(dones, bool),
        success=bool(step.info["success"][0]),
        instruction=obs.instructions[0],
        task=f"{env.suite}/{task}",
        seed=int(seed),
        states=np.stack(states).astype(np.float32),
        # task_id is the reset id, as Meta-World's and the recorded evaluations' episodes hold it (initial states and
        # benchmarks reset the simulator with it); the LIBERO task index is in ``task``
        attrs={"kind": kind, "task_id": int(task_id) % env.num_initial_states,
               "init_state_id": int(env.init_state_ids[0])},
    )


def expert_success_rates(
    suite: str = "libero_spatial",
    task_ids: list[int] | tuple[int, ...] = tuple(range(10)),
    episodes_per_task: int = 10,
    action_noise_std: float = 0.0,
    waypoint_noise: float = 0.0,
    seed: int = 0,
    render_images: bool = False,
    on_task: Callable[[dict], None] | None = None,
) -> dict:
    """Run the expert from initial states ``0..episodes_per_task-1`` of each task; success rate per task.

    Images are not needed by the expert, so by default nothing is rendered (~4x faster).
    """
    results = {}
    for task_id in task_ids:
        successes, lengths = [], []
        with LiberoEnv(suite=suite, task_ids=[task_id], render_images=render_images) as env:
            for episode in range(episodes_per_task):
                rng = np.random.default_rng(seed * 1_000_003 + task_id * 1_000 + episode)
                env.reset(ids=[episode])
                expert = make_expert(env, 0, action_noise_std, waypoint_noise, rng)
                for _ in range(env.max_episode_steps):
                    step = env.chunk_step(expert.act(env.raw_observations(0))[None, None])
                    if step.done[0]:
                        break
                successes.append(bool(step.info["success"][0]))
                lengths.append(int(step.info["episode_length"][0]))
        row = {
            "task_id": task_id,
            "episodes": episodes_per_task,
            "success_rate": float(np.mean(successes)),
            "mean_length_of_successes": float(np.mean([n for n, s in zip(lengths, successes) if s])) if any(successes) else None,
        }
        results[task_id] = row
        if on_task is not None:
            on_task(row)
    return {
        "suite": suite,
        "action_noise_std": action_noise_std,
        "waypoint_noise": waypoint_noise,
        "per_task": list(results.values()),
        "mean_success_rate": float(np.mean([r["success_rate"] for r in results.values()])),
    }


if __name__ == "__main__":
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser(description="Success rate of the scripted LIBERO-Spatial expert per task.")
    parser.add_argument("--suite", default="libero_spatial")
    parser.add_argument("--tasks", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--action-noise", type=float, default=0.0)
    parser.add_argument("--waypoint-noise", type=float, default=0.0)
    args = parser.parse_args()
    start = time.time()
    summary = expert_success_rates(args.suite, args.tasks, args.episodes, args.action_noise, args.waypoint_noise,
                                   on_task=lambda row: print(json.dumps(row), flush=True))
    summary["seconds"] = round(time.time() - start, 1)
    print(json.dumps(summary))
