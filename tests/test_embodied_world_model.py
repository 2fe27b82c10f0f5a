"""GRPO inside a (tiny, freshly trained) Meta-World world model, evaluated in the real simulator:
the imagined-minus-real calibration metric is logged. Slow: it records episodes and trains the
world model's three parts first (about a minute on one CPU core)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from hydra import compose, initialize_config_dir

from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import write_episodes
from rlinf_wm.models.policy import TinyVLA
from rlinf_wm.runners.embodied_runner import EmbodiedRunner
from rlinf_wm.runners.metric_logger import read_metrics
from rlinf_wm.utils.checkpoint import save_model_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "examples" / "embodiment" / "config"
IMAGE = 32

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world_model_root(tmp_path_factory):
    """Expert + random drawer-open episodes at 32x32, then the world-model pipeline at toy size."""
    from rlinf_wm.envs.experts import record_episode
    from rlinf_wm.envs.metaworld_env import MetaWorldEnv
    from rlinf_wm.runners.world_model_pipeline import run_stage

    root = tmp_path_factory.mktemp("wm")
    torch.set_num_threads(1)
    with MetaWorldEnv("drawer-open-v3", num_envs=1, image_size=[IMAGE, IMAGE], max_episode_steps=120) as env:
        episodes = [record_episode(env, "expert" if i % 3 else "random", seed=i, task_id=i) for i in range(8)]
    assert any(ep.success for ep in episodes) and not all(ep.success for ep in episodes)
    write_episodes(root / "data" / "shard_00000.hdf5", episodes)
    ActionStatistics.from_actions(np.concatenate([ep.actions for ep in episodes])).save(
        root / "data" / "dataset_statistics.json")
    # The world-model tests' toy sizes (one source for them).
    pipeline_tests = _module(ROOT / "tests" / "test_world_model_pipeline.py", "wm_pipeline_tests")
    overrides = [o for o in pipeline_tests.tiny_overrides(root) if not o.startswith("task=")] + ["task=drawer-open-v3"]
    run_stage(pipeline_tests.compose_config(overrides), "all")
    return root


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory, world_model_root):
    chunk = 2  # the toy world model predicts 2 frames per chunk
    config = TinyVLAConfig(chunk_size=chunk, num_bins=16, encoder_channels=[8], image_grid=2, hidden_dim=16,
                           num_layers=1, num_heads=2, mlp_ratio=2, image_size=IMAGE, action_dim=4,
                           action_q01=[-1.0] * 4, action_q99=[1.0] * 4)
    path = tmp_path_factory.mktemp("sft") / "model"
    torch.manual_seed(0)
    save_model_atomic(TinyVLA(config), path)
    return str(path)


def test_grpo_in_the_world_model_logs_imagined_minus_real_success(world_model_root, policy_path, tmp_path):
    prepare = _module(ROOT / "examples/embodiment/train_embodied_agent.py", "train_embodied_agent").prepare
    overrides = [
        f"artifacts_dir={world_model_root}", f"policy.path={policy_path}", f"runner.log_dir={tmp_path / 'run'}",
        "env.train.num_envs=4", "algorithm.group_size=2", "env.train.max_episode_steps=8",
        f"env.eval.image_size=[{IMAGE},{IMAGE}]", "env.eval.max_episode_steps=8", "env.eval.num_envs=2",
        "runner.max_iterations=2", "runner.eval_interval=2", "runner.eval_episodes=2", "runner.eval_workers=0",
        "runner.progress_bar=false", "algorithm.zero_variance_groups=keep", "runner.eval_temperature=4.0",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg, resolved = prepare(compose("metaworld_drawer_open_grpo_tinyvla", overrides=overrides))
    assert cfg.env.train.env_type == "world_model" and cfg.env.eval.env_type == "metaworld"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False)
    try:
        EmbodiedRunner(cfg, resolved).run()
    finally:
        ray.shutdown()
    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(0 < r["env/episode_len"] <= 8 and r["env/num_trajectories"] == 4 for r in rows)
    assert "calibration/imagined_minus_real_success" not in rows[0]  # no evaluation in iteration 1
    assert rows[1]["calibration/imagined_minus_real_success"] == pytest.approx(
        rows[1]["env/success_once"] - rows[1]["eval/success_rate"])
    # evaluated as the rollouts act: sampled at the given temperature, not with mean actions
    eval_summary = json.loads((tmp_path / "run/eval/iter_2/summary.json").read_text())
    assert eval_summary["deterministic"] is False and eval_summary["temperature"] == 4.0
