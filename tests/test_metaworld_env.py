"""The real Meta-World ChunkEnv: shapes, upright images, success/truncation flags, seeding, bad input."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlinf_wm.config.env_schemas import ENV_SCHEMAS, MetaWorldEnvConfig
from rlinf_wm.config.validate import ConfigError, validate
from rlinf_wm.envs import make_env
from rlinf_wm.envs.experts import ExpertPolicy, record_episode
from rlinf_wm.envs.metaworld_env import MetaWorldEnv, instruction_for

ENV_YAML = Path(__file__).resolve().parents[1] / "examples/embodiment/config/env/metaworld_drawer_open.yaml"


@pytest.fixture(scope="module")
def env():
    with MetaWorldEnv("drawer-open-v3", num_envs=2, max_episode_steps=150, include_states=True) as env:
        yield env


def red_rows(image: np.ndarray) -> float:
    """Mean row of the (red) robot arm's pixels."""
    image = image.astype(int)
    mask = (image[..., 0] > 100) & (image[..., 1] < 60) & (image[..., 2] < 60)
    assert mask.sum() > 20, "robot arm not visible"
    return float(np.nonzero(mask)[0].mean())


def test_reset_shapes_and_instruction(env):
    obs = env.reset(ids=[0, 1])
    assert obs.images.shape == (2, 64, 64, 3) and obs.images.dtype == np.uint8
    assert obs.instructions == ["open the drawer", "open the drawer"]
    assert obs.states.shape == (2, 39) and obs.states.dtype == np.float32
    # The goal, hidden by ML1, is filled in for the experts.
    assert np.abs(env.raw_states()[:, -3:]).sum() > 0
    assert env.num_initial_states == 50


def test_images_are_upright(env):
    obs = env.reset(ids=[0, 0])
    # corner3 is defined upside down in Meta-World's scene; the env rotates its render by 180 degrees.
    raw_env = env._envs[0]
    raw_env.mujoco_renderer._get_viewer("rgb_array").make_context_current()
    np.testing.assert_array_equal(obs.images[0], raw_env.render()[::-1, ::-1])
    up_down = np.zeros((2, 15, 4), np.float32)
    up_down[0, :, 2], up_down[1, :, 2] = 1.0, -1.0  # env 0 lifts the hand, env 1 lowers it
    images = env.chunk_step(up_down).obs.images
    # Moving up in the world moves the arm up in the image (smaller row index).
    assert red_rows(images[0]) < red_rows(images[1]) - 0.5


def test_camera_pose_frames_the_point_it_looks_at_upright():
    def first_frame(**kwargs):
        with MetaWorldEnv("drawer-open-v3", **kwargs) as env:
            return env.reset(ids=[3]).images[0].astype(int), env.raw_states()[0, 4:7]

    def is_green(image):
        center = image[28:36, 28:36].reshape(-1, 3).mean(0)
        return center[1] > center[0] + 25 and center[1] > center[2] + 25

    default, handle = first_frame()
    assert not is_green(default)
    # looking at the drawer's handle from in front of it: the drawer (green) fills the image's centre
    pose = {"pos": [handle[0] + 0.3, handle[1] - 0.4, handle[2] + 0.3], "lookat": handle.tolist(), "fovy": 60.0}
    aimed, _ = first_frame(camera_pose=pose)
    assert is_green(aimed)
    # any fixed world camera re-aimed gives the same view, upright (no 180-degree turn of corner cameras)
    np.testing.assert_array_equal(first_frame(camera="corner4", camera_pose=pose)[0], aimed)
    rows = {}
    for direction in (1.0, -1.0):
        with MetaWorldEnv("drawer-open-v3", camera_pose=pose) as env:
            env.reset(ids=[3])
            lift = np.tile([0.0, 0.0, direction, 0.0], (1, 10, 1)).astype(np.float32)
            rows[direction] = red_rows(env.chunk_step(lift).obs.images[0])
    assert rows[1.0] < rows[-1.0] - 0.5
    with pytest.raises(ValueError, match="fixed camera on the world body; 'gripperPOV'"):
        MetaWorldEnv("drawer-open-v3", camera="gripperPOV", camera_pose=pose)
    with pytest.raises(ValueError, match="straight above or below"):
        MetaWorldEnv("drawer-open-v3", camera_pose={**pose, "pos": [*handle[:2], 1.0]})
    with pytest.raises(ValueError, match=r"exactly the keys fovy, lookat, pos; got \['fov', 'lookat', 'pos'\]"):
        MetaWorldEnv("drawer-open-v3", camera_pose={"pos": pose["pos"], "lookat": pose["lookat"], "fov": 60.0})


def test_expert_opens_the_drawer_with_success_once_reward():
    with MetaWorldEnv("drawer-open-v3", num_envs=1, max_episode_steps=150) as env:
        episode = record_episode(env, "expert", seed=0, task_id=7, expert_noise_std=0.0)
    assert episode.success
    assert episode.length < 150
    assert episode.rewards.sum() == 1.0 and episode.rewards[-1] == 1.0
    assert episode.dones[-1] and not episode.dones[:-1].any()
    assert len(episode.frames) == episode.length + 1


def test_recording_past_success_keeps_the_success_step_and_shows_the_drawer_opening_further():
    with MetaWorldEnv("drawer-open-v3", num_envs=1, max_episode_steps=150, include_states=True) as env:
        stopped = record_episode(env, "expert", seed=0, task_id=7, expert_noise_std=0.0)
        with pytest.raises(ValueError, match="terminate_on_success=False"):
            record_episode(env, "expert", seed=0, task_id=7, steps_after_success=5)
    with MetaWorldEnv("drawer-open-v3", num_envs=1, max_episode_steps=150, include_states=True,
                      terminate_on_success=False) as env:
        longer = record_episode(env, "expert", seed=0, task_id=7, expert_noise_std=0.0, steps_after_success=6)
    step = stopped.length - 1
    assert longer.success and longer.length == stopped.length + 6
    # the same episode up to success, then six more steps; the reward marks the first success only
    np.testing.assert_array_equal(longer.frames[: stopped.length + 1], stopped.frames)
    assert longer.rewards.sum() == 1.0 and longer.rewards[step] == 1.0
    assert not longer.dones[:step].any() and longer.dones[step:].all()
    # the drawer (state entries 4:7: its handle) keeps moving: the later frames differ from the success frame
    assert np.abs(longer.states[-1, 4:7] - longer.states[step, 4:7]).max() > 1e-3
    assert np.abs(longer.frames[-1].astype(int) - longer.frames[step + 1].astype(int)).max() > 0
    assert longer.until_success().length == stopped.length


def test_done_envs_are_not_stepped(env):
    env.reset(ids=[3, 3])
    expert = ExpertPolicy("drawer-open-v3")
    for _ in range(150):
        actions = np.zeros((2, 1, 4), np.float32)
        actions[0, 0] = expert.act(env.raw_states()[0])  # env 1 stays still and never succeeds
        step = env.chunk_step(actions)
        if step.terminated[0, 0]:
            break
    assert step.info["success"].tolist() == [True, False]
    length = step.info["episode_length"][0]
    image = step.obs.images[0].copy()
    again = env.chunk_step(np.ones((2, 3, 4), np.float32))
    assert again.terminated[0].all() and not again.terminated[1].any()
    assert again.rewards[0].sum() == 0
    assert again.info["episode_length"][0] == length  # not stepped
    np.testing.assert_array_equal(again.obs.images[0], image)
    assert again.info["episode_length"][1] == step.info["episode_length"][1] + 3


def test_truncation_at_max_episode_steps():
    with MetaWorldEnv("drawer-open-v3", num_envs=2, max_episode_steps=5) as env:
        env.reset(ids=[0, 1])
        step = env.chunk_step(np.zeros((2, 8, 4), np.float32))
        assert not step.truncated[:, :4].any() and step.truncated[:, 4:].all()
        assert not step.terminated.any() and step.rewards.sum() == 0
        assert step.info["episode_length"].tolist() == [5, 5]
        assert step.done.all()
        again = env.chunk_step(np.zeros((2, 2, 4), np.float32))
        assert again.truncated.all() and again.info["episode_length"].tolist() == [5, 5]


def test_render_every_step_reports_a_frame_per_step_and_repeats_it_after_the_end():
    with MetaWorldEnv("drawer-open-v3", num_envs=2, max_episode_steps=5, render_every_step=True) as env:
        env.reset(ids=[0, 1])
        up = np.tile(np.array([0.0, 0.0, 1.0, 0.0], np.float32), (2, 3, 1))
        step = env.chunk_step(up)
        frames = step.info["frames"]
        assert frames.shape == (2, 3, 64, 64, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames[:, -1], step.obs.images)  # the chunk's last frame is the observation
        assert not np.array_equal(frames[0, 0], frames[0, 2])  # the arm moved between steps
        step = env.chunk_step(up)  # steps 4, 5, then the episode is over
        assert step.truncated[:, 1:].all()
        np.testing.assert_array_equal(step.info["frames"][:, 2], step.info["frames"][:, 1])
        np.testing.assert_array_equal(step.info["frames"][:, 2], step.obs.images)
    with MetaWorldEnv("drawer-open-v3", num_envs=1) as plain:
        plain.reset(ids=[0])
        assert "frames" not in plain.chunk_step(up[:1]).info


def test_reset_is_reproducible(env):
    a = env.reset(seed=3)
    ids_a = env.task_ids
    b = env.reset(seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(ids_a, env.task_ids)
    # ids wrap modulo the 50 initial states; different ids give different scenes.
    np.testing.assert_array_equal(env.reset(ids=[1, 2]).images, env.reset(ids=[51, 52]).images)
    c = env.reset(ids=[1, 2])
    assert not np.array_equal(c.images[0], c.images[1])
    # Stepping is deterministic too.
    actions = np.random.default_rng(0).uniform(-1, 1, (2, 4, 4)).astype(np.float32)
    first = env.chunk_step(actions).obs.images
    env.reset(ids=[1, 2])
    np.testing.assert_array_equal(first, env.chunk_step(actions).obs.images)


def test_bad_actions_raise(env):
    env.reset(ids=[0, 0])
    with pytest.raises(ValueError, match="shape"):
        env.chunk_step(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="A=4"):
        env.chunk_step(np.zeros((2, 1, 7), np.float32))
    bad = np.zeros((2, 1, 4), np.float32)
    bad[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.chunk_step(bad)
    with pytest.raises(ValueError, match="num_envs=2"):
        env.reset(ids=[0])


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="unknown Meta-World task 'drawer-opn-v3'"):
        MetaWorldEnv("drawer-opn-v3")
    with pytest.raises(ValueError, match="unknown camera 'front'.*corner3"):
        MetaWorldEnv("drawer-open-v3", camera="front")
    with pytest.raises(ValueError, match="image_size"):
        MetaWorldEnv("drawer-open-v3", image_size=[64])
    with MetaWorldEnv("drawer-open-v3") as env, pytest.raises(RuntimeError, match="before reset"):
        env.chunk_step(np.zeros((1, 1, 4), np.float32))


def test_instructions():
    assert instruction_for("door-open-v3") == "open the door"
    assert instruction_for("stick-pull-v3") == "pull the stick"  # generated fallback
    assert instruction_for("disassemble-v3") == "complete the disassemble"


def test_env_yaml_builds_the_env_through_the_registry():
    cfg = validate(OmegaConf.load(ENV_YAML), ENV_SCHEMAS["metaworld"], "env")
    assert isinstance(cfg, MetaWorldEnvConfig) and cfg.camera == "corner3"
    kwargs = {k: v for k, v in vars(cfg).items() if k != "env_type"}
    env = make_env(cfg.env_type, **kwargs)
    try:
        assert isinstance(env, MetaWorldEnv)
        assert env.reset().images.shape == (1, 64, 64, 3)
    finally:
        env.close()


@pytest.mark.parametrize(
    "override, key",
    [({"num_envs": 0}, "env.num_envs"), ({"image_size": [64, 0]}, "env.image_size"),
     ({"camera": "front"}, "env.camera"), ({"task": "drawer-open"}, "env.task"), ({"fps": 3}, "env.fps"),
     ({"camera_pose": {"pos": [0.5, 0.2], "lookat": [0, 0.7, 0.1], "fovy": 45}}, "env.camera_pose.pos"),
     ({"camera_pose": {"pos": [0, 0.7, 0.6], "lookat": [0, 0.7, 0.1], "fovy": 45}}, "env.camera_pose.lookat"),
     ({"camera_pose": {"pos": [0.5, 0.2, 0.6], "lookat": [0, 0.7, 0.1], "fovy": 0}}, "env.camera_pose.fovy"),
     ({"camera_pose": {"pos": [0.5, 0.2, 0.6], "lookat": [0, 0.7, 0.1]}}, "env.camera_pose.fovy"),
     ({"camera": "gripperPOV", "camera_pose": {"pos": [0.5, 0.2, 0.6], "lookat": [0, 0.7, 0.1], "fovy": 45}},
      "env.camera_pose")],
)
def test_env_schema_rejects_bad_values(override, key):
    cfg = OmegaConf.merge(OmegaConf.load(ENV_YAML), override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg, MetaWorldEnvConfig, "env")


def test_unclosed_env_exits_without_gl_errors():
    import subprocess
    import sys

    script = (
        "from rlinf_wm.envs.metaworld_env import MetaWorldEnv\n"
        "env = MetaWorldEnv('drawer-open-v3', num_envs=2)\n"
        "env.reset()\n"  # never closed: the GL contexts must still be freed before EGL shuts down
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr


def test_a_chunk_reports_the_state_after_every_step_and_a_replay_reads_them_in_one_chunk():
    from rlinf_wm.runners.train_state_model import replayed_states

    class OneStepAtATime:  # the same env without info["states"]: the replay steps once per action
        def __init__(self, env):
            self.env = env

        def reset(self, ids):
            return self.env.reset(ids=ids)

        def chunk_step(self, actions):
            step = self.env.chunk_step(actions)
            step.info.pop("states")
            return step

    actions = np.random.default_rng(0).uniform(-1, 1, (12, 4)).astype(np.float32)
    with MetaWorldEnv("drawer-open-v3", num_envs=1, max_episode_steps=150, include_states=True) as env:
        env.reset(ids=[3])
        step = env.chunk_step(actions[None, :5])
        assert step.info["states"].shape == (1, 5, 39) and step.info["states"].dtype == np.float32
        np.testing.assert_array_equal(step.info["states"][0, -1], step.obs.states[0])
        assert np.abs(step.info["states"][0, 0] - step.info["states"][0, 4]).max() > 1e-4  # the hand moved
        chunked, stepped = replayed_states(env, 3, actions), replayed_states(OneStepAtATime(env), 3, actions)
        assert chunked.shape == (12, 39)
        np.testing.assert_array_equal(chunked, stepped)
        np.testing.assert_array_equal(chunked[5], step.info["states"][0, -1])  # the state before action 5
        assert replayed_states(env, 3, actions[:1]).shape == (1, 39)
    with MetaWorldEnv("drawer-open-v3", num_envs=1, max_episode_steps=150) as env:
        env.reset(ids=[3])
        assert "states" not in env.chunk_step(actions[None, :2]).info


def test_the_state_model_reads_a_recorded_episode_without_states_by_replaying_it(tmp_path):
    import dataclasses

    from rlinf_wm.data.trajectories import write_episodes
    from rlinf_wm.runners.train_state_model import read_state_episodes

    with MetaWorldEnv("drawer-open-v3", num_envs=1, max_episode_steps=150, include_states=True) as env:
        recorded = record_episode(env, "expert", seed=0, task_id=7, expert_noise_std=0.0)
    assert recorded.success and recorded.states is not None
    # as a policy's evaluation writes it: no states, its reset id and the env it ran in
    stateless = dataclasses.replace(recorded, states=None, attrs={**recorded.attrs, "task_id": 7})
    path = write_episodes(tmp_path / "eval.hdf5", [stateless],
                          env_args={"env": {"env_type": "metaworld", "task": "drawer-open-v3", "num_envs": 1,
                                            "max_episode_steps": 150}})
    (episode,) = read_state_episodes([str(path)], progress=False)
    assert episode.success and episode.reset_id == 7
    np.testing.assert_allclose(episode.states, recorded.states, atol=1e-6)
