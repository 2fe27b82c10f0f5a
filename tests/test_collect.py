"""Collection runner: tiny collections read back, resume after interruption, config validation, Ray."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from rlinf_wm.config.env_schemas import CollectConfig, MetaWorldEnvConfig
from rlinf_wm.config.validate import ConfigError, validate
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import load_episodes
from rlinf_wm.data.windows import TrajectoryWindows, initial_states
from rlinf_wm.runners.collect import plan_episodes, run_collection, shard_path

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "examples/embodiment/config")


def tiny_config(output_dir, num_workers: int = 0, **overrides) -> CollectConfig:
    env = MetaWorldEnvConfig(env_type="metaworld", task="drawer-open-v3", image_size=[32, 32], max_episode_steps=8)
    values = dict(task="drawer-open-v3", artifacts_dir=str(output_dir), env=env, output_dir=str(output_dir),
                  num_episodes=4, episodes_per_shard=2, num_workers=num_workers, num_cpus_per_worker=1.0,
                  expert_noise_std=0.1, perturbed_fraction=0.25, random_fraction=0.25, seed=3, progress_bar=False)
    values.update(overrides)
    cfg = CollectConfig(**values)
    cfg.check("")
    return cfg


def assert_same_episodes(dir_a, dir_b):
    a, b = load_episodes(dir_a), load_episodes(dir_b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.seed == y.seed
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.frames, y.frames)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny collection: 2 shards x 2 episodes."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_collection(tiny_config(out))
    return out, summary


def test_plan_is_deterministic_and_mixes_kinds():
    cfg = tiny_config("/unused", num_episodes=40, episodes_per_shard=7, perturbed_fraction=0.2, random_fraction=0.1)
    shards = plan_episodes(cfg)
    assert [len(s) for s in shards] == [7, 7, 7, 7, 7, 5]
    plans = [p for s in shards for p in s]
    assert [p.global_index for p in plans] == list(range(40))
    assert len({p.seed for p in plans}) == 40
    kinds = [p.kind for p in plans]
    assert kinds.count("random") == 4 and kinds.count("perturbed") == 8  # shares hold exactly here
    assert plans == [p for s in plan_episodes(cfg) for p in s]


def test_noisy_episodes_come_out_of_the_expert_share_only():
    base = dict(num_episodes=40, episodes_per_shard=7, perturbed_fraction=0.2, random_fraction=0.1)
    before = [p.kind for s in plan_episodes(tiny_config("/unused", **base)) for p in s]
    after = [p.kind for s in plan_episodes(tiny_config("/unused", noisy_fraction=0.2, **base)) for p in s]
    assert abs(after.count("noisy") - 8) <= 1  # a 20 % share of 40
    # Adding noisy episodes leaves every other episode's kind (and so its content) as it was.
    assert all(b == a or (b, a) == ("expert", "noisy") for b, a in zip(before, after))


def test_noisy_episode_is_the_expert_with_more_noise(tmp_path):
    env = MetaWorldEnvConfig(env_type="metaworld", task="drawer-open-v3", image_size=[32, 32], max_episode_steps=150)
    cfg = tiny_config(tmp_path, env=env, num_episodes=2, episodes_per_shard=2, perturbed_fraction=0.0,
                      random_fraction=0.0, noisy_fraction=0.5, noisy_expert_std=0.6)
    run_collection(cfg)
    episodes = load_episodes(tmp_path)
    assert [ep.attrs["kind"] for ep in episodes] == ["expert", "noisy"]
    with h5py.File(shard_path(tmp_path, 0), "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["collect"]["noisy_expert_std"] == 0.6
    # The scripted expert's actions are smooth; noise of std 0.6 makes consecutive actions jump.
    jumps = [np.abs(np.diff(ep.actions[:40], axis=0)).mean() for ep in episodes]
    assert jumps[1] > 3 * jumps[0]


def test_near_miss_episodes_come_out_of_the_expert_share_only():
    base = dict(num_episodes=60, episodes_per_shard=7, perturbed_fraction=0.2, random_fraction=0.1, noisy_fraction=0.1)
    before = [p.kind for s in plan_episodes(tiny_config("/unused", **base)) for p in s]
    after = [p.kind for s in plan_episodes(tiny_config("/unused", near_miss_fraction=0.3, **base)) for p in s]
    assert abs(after.count("near_miss") - 18) <= 1  # a 30 % share of 60
    assert all(b == a or (b, a) == ("expert", "near_miss") for b, a in zip(before, after))
    assert after[0] == "expert"  # the first demonstration stays: a 1-demo SFT base does not change


def test_an_aim_offset_moves_where_the_expert_goes():
    from rlinf_wm.envs.experts import ExpertPolicy

    state = np.zeros(39)
    state[:3] = [0.0, 0.6, 0.2]  # hand
    state[4:7] = [0.0, 0.9, 0.1]  # drawer handle, far away: the expert moves towards (above) it
    shifted = state.copy()
    shifted[4:7] += [0.05, 0.0, 0.03]
    aimed = ExpertPolicy("drawer-open-v3", aim_offset=[0.05, 0.0, 0.03]).act(state)
    np.testing.assert_array_equal(aimed, ExpertPolicy("drawer-open-v3").act(shifted))
    assert not np.array_equal(aimed, ExpertPolicy("drawer-open-v3").act(state))
    with pytest.raises(ValueError, match="aim_offset"):
        ExpertPolicy("drawer-open-v3", aim_offset=[0.1, 0.2])


def test_near_miss_offsets_come_from_every_box_and_one_box_draws_as_before():
    from rlinf_wm.envs.experts import draw_aim_offset

    right, left = [[0.09, 0.0, 0.0], [0.15, 0.0, 0.06]], [[-0.15, 0.0, 0.0], [-0.09, 0.0, 0.06]]
    offsets = np.array([draw_aim_offset(np.random.default_rng(seed), [right, left]) for seed in range(40)])
    on_right, on_left = offsets[:, 0] >= 0.09, offsets[:, 0] <= -0.09
    assert (on_right | on_left).all() and 10 <= on_right.sum() <= 30  # both sides, never the centre
    assert ((offsets[:, 2] >= 0) & (offsets[:, 2] <= 0.06)).all() and (offsets[:, 1] == 0).all()
    # a single box (two corners) draws exactly what a uniform draw between them does: old collections resume
    np.testing.assert_array_equal(draw_aim_offset(np.random.default_rng(3), right),
                                  np.random.default_rng(3).uniform(*right))
    with pytest.raises(ValueError, match="near_miss_offset"):
        draw_aim_offset(np.random.default_rng(0), [right, [[0.1, 0.0], [0.2, 0.0]]])


def test_a_near_miss_episode_misses_beside_the_handle(tmp_path):
    from rlinf_wm.envs.experts import record_episode
    from rlinf_wm.envs.metaworld_env import MetaWorldEnv

    env = MetaWorldEnv("drawer-open-v3", num_envs=1, image_size=(32, 32), max_episode_steps=150)
    try:
        expert = record_episode(env, "expert", seed=1, task_id=0, expert_noise_std=0.0)
        wide = ((0.09, 0.0, 0.0), (0.09, 0.0, 0.0))  # a fixed 9 cm sideways: the gripper passes beside the handle
        miss = record_episode(env, "near_miss", seed=1, task_id=0, expert_noise_std=0.0, near_miss_offset=wide)
        centred = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        same = record_episode(env, "near_miss", seed=1, task_id=0, expert_noise_std=0.0, near_miss_offset=centred)
    finally:
        env.close()
    assert expert.success and not miss.success and miss.length == 150
    assert miss.attrs["kind"] == "near_miss" and miss.attrs["aim_offset"] == pytest.approx([0.09, 0.0, 0.0])
    # the arm still travels as far as the expert's does: a miss with a success's motion, not a wander
    reach = lambda ep: np.abs(ep.actions[:, :3]).sum()  # noqa: E731
    assert reach(miss) > 0.5 * reach(expert)
    np.testing.assert_array_equal(same.actions, expert.actions)  # a zero offset is the expert


def test_collection_reads_back_into_windows(reference):
    out, summary = reference
    assert sorted(p.name for p in out.glob("*.hdf5")) == ["shard_00000.hdf5", "shard_00001.hdf5"]
    episodes = load_episodes(out)
    assert [e.seed for e in episodes] == [3_000_000 + i for i in range(4)]
    assert all(e.frames.shape[1:] == (32, 32, 3) and len(e.frames) == e.length + 1 for e in episodes)
    assert all(e.states.shape == (e.length, 39) for e in episodes)
    assert all(e.length == 8 and not e.success for e in episodes)  # 8 steps cannot open the drawer
    assert summary["episodes"] == 4 and summary["steps"] == 32
    assert sum(row["episodes"] for row in summary["by_kind"].values()) == 4
    assert set(summary["by_kind"]) == {"expert", "perturbed", "random"}
    stats = ActionStatistics.load(out / "dataset_statistics.json")
    all_actions = np.concatenate([e.actions for e in episodes])
    np.testing.assert_allclose(stats.mean, all_actions.mean(0), atol=1e-6)
    assert json.loads((out / "collection_summary.json").read_text())["episodes"] == 4
    windows = TrajectoryWindows(episodes, num_cond_frames=2, chunk_size=4)
    assert len(windows) == 32
    window = windows[9]
    assert window["episode"] == 1 and window["start"] == 1
    np.testing.assert_array_equal(window["future_frames"], episodes[1].frames[2:6])
    assert initial_states(episodes, 2)[0][0].shape == (2, 32, 32, 3)


def test_resume_after_interruption_equals_uninterrupted(reference, tmp_path):
    class Interrupt(Exception):
        pass

    def crash_after_first_shard(shard, path):
        raise Interrupt

    cfg = tiny_config(tmp_path)
    with pytest.raises(Interrupt):
        run_collection(cfg, on_shard_written=crash_after_first_shard)
    assert [p.name for p in tmp_path.iterdir()] == ["shard_00000.hdf5"]  # no partial or temp files
    written = []
    run_collection(cfg, on_shard_written=lambda shard, path: written.append(shard))
    assert written == [1]  # the complete shard was skipped
    assert_same_episodes(reference[0], tmp_path)

    # A lost shard is recollected identically; the others are left alone.
    shard_path(tmp_path, 0).unlink()
    written.clear()
    run_collection(cfg, on_shard_written=lambda shard, path: written.append(shard))
    assert written == [0]
    assert_same_episodes(reference[0], tmp_path)


def test_resume_with_other_settings_fails(reference, tmp_path):
    run_collection(tiny_config(tmp_path, num_episodes=2))
    with pytest.raises(ValueError, match=r"shard_00000\.hdf5 was collected with different settings.*expert_noise_std"):
        run_collection(tiny_config(tmp_path, num_episodes=2, expert_noise_std=0.5))


def test_shards_the_collection_does_not_plan_are_an_error(reference, tmp_path):
    for path in reference[0].glob("shard_*.hdf5"):  # a 4-episode collection, rerun with 2
        shutil.copy(path, tmp_path / path.name)
    with pytest.raises(ValueError, match=r"does not plan \(shard_00001\.hdf5; from a larger num_episodes\?\)"):
        run_collection(tiny_config(tmp_path, num_episodes=2))


def test_shards_from_before_steps_after_success_existed_still_resume(reference, tmp_path):
    run_collection(tiny_config(tmp_path, num_episodes=2))
    with h5py.File(shard_path(tmp_path, 0), "r+") as f:  # as written before the key existed
        settings = json.loads(f["data"].attrs["env_args"])
        del settings["collect"]["steps_after_success"]
        f["data"].attrs["env_args"] = json.dumps(settings)
    written = []
    run_collection(tiny_config(tmp_path, num_episodes=2), on_shard_written=lambda shard, path: written.append(shard))
    assert written == []  # read as steps_after_success=0: complete, nothing recollected
    with pytest.raises(ValueError, match="steps_after_success: 0 on disk vs 3 now"):
        run_collection(tiny_config(tmp_path, num_episodes=2, steps_after_success=3))


def test_collection_records_steps_past_success(tmp_path):
    env = MetaWorldEnvConfig(env_type="metaworld", task="drawer-open-v3", image_size=[32, 32], max_episode_steps=150)
    cfg = tiny_config(tmp_path, env=env, num_episodes=1, episodes_per_shard=1, perturbed_fraction=0.0,
                      random_fraction=0.0, expert_noise_std=0.0, steps_after_success=3)
    run_collection(cfg)
    (episode,) = load_episodes(tmp_path)
    assert episode.success and episode.rewards.sum() == 1.0
    assert episode.rewards[-4] == 1.0 and episode.dones[-4:].all() and not episode.dones[:-4].any()


def test_collect_config_composes_and_validates():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        raw = compose("collect_metaworld_drawer_open", overrides=["num_episodes=12"])
        cfg = validate(raw, CollectConfig)
        assert cfg.output_dir == "outputs/drawer-open-v3/data" and cfg.env.camera == "corner3"
        assert cfg.num_episodes == 12 and cfg.env.task == cfg.task
        both_sides = validate(compose("collect_metaworld_drawer_open", overrides=[
            "near_miss_offset=[[[0.09,0,0],[0.15,0,0.06]],[[-0.15,0,0],[-0.09,0,0.06]]]"]), CollectConfig)
        assert both_sides.near_miss_offset[1] == [[-0.15, 0, 0], [-0.09, 0, 0.06]]
        # the quickstart's near-miss collection: only near misses, on both sides, seeded apart from the main one
        near = validate(compose("collect_metaworld_drawer_open_near_misses"), CollectConfig)
        assert {p.kind for shard in plan_episodes(near) for p in shard} == {"near_miss"}
        assert len(near.near_miss_offset) == 2 and near.seed != cfg.seed
        assert near.output_dir == "outputs/drawer-open-v3/near_misses" and near.env == cfg.env
        bad = [("env.task=door-open-v3", "env.task"), ("random_fraction=0.9", "random_fraction"),
               ("env.num_envs=4", "env.num_envs"), ("+extra=1", "extra"), ("steps_after_success=-1", "steps_after_success"),
               ("noisy_fraction=0.8", "noisy_fraction"), ("noisy_expert_std=-1", "noisy_expert_std"),
               ("near_miss_fraction=0.9", "near_miss_fraction"),
               ("near_miss_offset=[[0.1,0,0],[0.0,0,0]]", "near_miss_offset"),
               ("near_miss_offset=[[0,0],[1,1]]", "near_miss_offset"),
               ("near_miss_offset=[[[0.1,0,0],[0.2,0,0]],[[0.1,0,0],[0.0,0,0]]]", "near_miss_offset")]
        for override, key in bad:
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                validate(compose("collect_metaworld_drawer_open", overrides=[override]), CollectConfig)
        # shares that sum to exactly 1 in decimals (1.0000000000000002 in floats) are accepted
        validate(compose("collect_metaworld_drawer_open", overrides=[
            "perturbed_fraction=0.05", "random_fraction=0.55", "noisy_fraction=0.3", "near_miss_fraction=0.1"]),
            CollectConfig)


@pytest.mark.ray
def test_ray_collection_matches_in_process(reference, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        summary = run_collection(tiny_config(tmp_path, num_workers=2))
    finally:
        ray.shutdown()
    assert summary["episodes"] == 4
    assert_same_episodes(reference[0], tmp_path)
