"""The embodied RL runner end to end on Ray with the real Meta-World simulator, at toy scale:
GRPO and PPO runs, resume, crashed workers, and config errors that stop a run before Ray starts."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from rlinf_wm.config.policy_schema import TinyVLAConfig
from rlinf_wm.config.validate import ConfigError
from rlinf_wm.models.policy import TinyVLA
from rlinf_wm.runners import embodied_runner
from rlinf_wm.runners.embodied_runner import EmbodiedRunner
from rlinf_wm.runners.metric_logger import read_metrics
from rlinf_wm.utils.checkpoint import save_model_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "examples" / "embodiment" / "config"
ENTRY = ROOT / "examples" / "embodiment" / "train_embodied_agent.py"
GRPO = "metaworld_drawer_open_grpo_tinyvla_realsim"
PPO = "metaworld_drawer_open_ppo_tinyvla"
IMAGE = 16


def _load_entry_point():
    spec = importlib.util.spec_from_file_location("train_embodied_agent", ENTRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = _load_entry_point().prepare


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    """A freshly initialised tiny policy (the SFT checkpoint stand-in)."""
    torch.manual_seed(0)
    config = TinyVLAConfig(chunk_size=4, num_bins=16, encoder_channels=[8], image_grid=2, hidden_dim=16, num_layers=1,
                           num_heads=2, mlp_ratio=2, image_size=IMAGE, action_dim=4, action_q01=[-1.0] * 4,
                           action_q99=[1.0] * 4)
    path = tmp_path_factory.mktemp("sft") / "model"
    save_model_atomic(TinyVLA(config), path)
    return str(path)


def tiny_overrides(policy_path, log_dir, iterations=2, group_size=2):
    """2 env workers x 2 envs, 12-step episodes (3 chunks), 16x16 images."""
    return [
        f"algorithm.group_size={group_size}",
        f"policy.path={policy_path}", f"runner.log_dir={log_dir}", f"runner.max_iterations={iterations}",
        "runner.progress_bar=false", "env.train.num_envs=4", "env.eval.num_envs=2",
        f"env.train.image_size=[{IMAGE},{IMAGE}]", f"env.eval.image_size=[{IMAGE},{IMAGE}]",
        "env.train.max_episode_steps=12", "env.eval.max_episode_steps=12", "algorithm.minibatch_size=8",
        "runner.eval_interval=0", "runner.save_interval=1",
    ]


def compose_config(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return prepare(compose(name, overrides=overrides))


def untimed(rows):
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


# --- config errors: before any worker (or Ray) starts -----------------------------------------
def test_bad_override_fails_before_ray_starts_and_names_the_key(tmp_path, policy_path):
    overrides = tiny_overrides(policy_path, tmp_path / "run") + ["algorithm.group_size=3"]
    result = subprocess.run([sys.executable, str(ENTRY), "--config-name", GRPO, *overrides,
                             f"hydra.run.dir={tmp_path}/hydra"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(ROOT)}, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config error: env.train.num_envs: 4 envs over 2 env workers gives 2 per worker, not divisible by " \
           "algorithm.group_size=3" in result.stderr
    assert "Ray" not in result.stdout + result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("override, message", [
    ("+runner.max_iteration=3", "runner.max_iteration: unknown key for RunnerConfig"),
    ("runner.max_iterations=many", "runner.max_iterations: expected int, got str 'many'"),
    ("+cluster.env.num_gpu=1", "cluster.env.num_gpu: unknown key"),
    ("cluster.rollout.num_workers=3", "cluster.rollout.num_workers: 3 rollout workers would leave some idle"),
    ("env.eval.camera=nowhere", "env.eval.camera: 'nowhere' is not one of"),
    ("env.train.task=door-open-v3", "env.train.task: 'door-open-v3' differs from task='drawer-open-v3'"),
    ("runner.eval_temperature=0", "runner.eval_temperature: must be > 0 or null (mean actions), got 0.0"),
])
def test_config_errors_name_the_full_key_path(tmp_path, policy_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_config(GRPO, tiny_overrides(policy_path, tmp_path) + [override])


def test_graded_world_model_rewards_need_summed_returns(tmp_path, policy_path):
    # With reward_type=success the advantages would silently use the 0/1 outcome instead of the graded rewards.
    overrides = [f"policy.path={policy_path}", f"runner.log_dir={tmp_path}", "env.train.reward_type=relative"]
    with pytest.raises(ConfigError, match="algorithm.reward_type: env.train.reward_type=relative gives graded"):
        compose_config("metaworld_drawer_open_grpo_tinyvla", overrides)
    with pytest.raises(ConfigError, match="algorithm.scale_by_group_std: applies to GRPO groups only"):
        compose_config(PPO, tiny_overrides(policy_path, tmp_path, group_size=1) + ["algorithm.scale_by_group_std=false"])


def test_missing_policy_checkpoint_is_reported_with_its_key(tmp_path, policy_path):
    with pytest.raises(ConfigError, match="policy.path: no policy checkpoint at"):
        compose_config(GRPO, tiny_overrides(policy_path, tmp_path) + [f"policy.path={tmp_path}/nothing"])


def test_every_embodied_config_names_its_entry_point_and_composes(tmp_path, policy_path):
    names = [p.stem for p in CONFIG_DIR.glob("*.yaml") if "train_embodied_agent" in p.read_text()]
    assert {GRPO, PPO, "metaworld_drawer_open_grpo_tinyvla"} <= set(names)
    for name in (GRPO, PPO):
        cfg, _ = compose_config(name, tiny_overrides(policy_path, tmp_path / name, group_size=1 if name == PPO else 2))
        assert cfg.task == "drawer-open-v3" and cfg.env.eval.env_type == "metaworld"


# --- runs on Ray ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    # Logical CPUs: the colocated bundle (2) plus one evaluation worker; the workers mostly take turns.
    ray.init(address="local", include_dashboard=False, num_cpus=4, log_to_driver=False)
    yield
    ray.shutdown()


def run(name, overrides):
    cfg, resolved = compose_config(name, overrides)
    last = EmbodiedRunner(cfg, resolved).run()
    log_dir = Path(cfg.runner.log_dir)
    return read_metrics(log_dir), log_dir, last


@pytest.mark.ray
def test_grpo_realsim_run_logs_metrics_checkpoints_and_evaluates(local_ray, policy_path, tmp_path):
    overrides = tiny_overrides(policy_path, tmp_path / "run") + [
        "runner.eval_interval=2", "runner.eval_episodes=2", "runner.eval_workers=1",
        "runner.eval_videos=1"]
    rows, log_dir, _ = run(GRPO, overrides)
    assert [r["iteration"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("env/success_once", "env/episode_len", "rollout/num_groups", "train/actor/num_samples",
                    "time/env", "time/rollout", "time/actor", "time/sync", "time/iteration", "time/overlap_ratio"):
            assert key in row, key
        assert row["env/num_trajectories"] == 4 and row["rollout/num_groups"] == 2
        assert 0 < row["env/episode_len"] <= 12
    assert "eval/success_rate" not in rows[0]
    assert rows[1]["eval/num_episodes"] == 2
    assert rows[1]["eval/success_rate_lower"] <= rows[1]["eval/success_rate"] <= rows[1]["eval/success_rate_upper"]
    assert "calibration/imagined_minus_real_success" not in rows[1]  # the train env is real
    for n in (1, 2):
        assert (log_dir / f"checkpoints/iter_{n}/state.pt").is_file()
        assert (log_dir / f"checkpoints/iter_{n}/policy/config.json").is_file()
    eval_summary = json.loads((log_dir / "eval/iter_2/summary.json").read_text())
    assert eval_summary["deterministic"] is True  # runner.eval_temperature null: mean actions
    assert "num_envs: 4" in (log_dir / "config.yaml").read_text()
    assert list((log_dir / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["final_policy"] == str(log_dir / "final/model")
    final, last_checkpoint = (load_file(log_dir / d / "model.safetensors") for d in ("final/model", "checkpoints/iter_2/policy"))
    assert all(torch.equal(final[k], last_checkpoint[k]) for k in final)


@pytest.mark.ray
def test_env_step_budget_ends_the_run_after_the_iteration_that_reaches_it(local_ray, policy_path, tmp_path):
    # 4 envs x <= 12 steps per iteration: a budget of 13 steps needs two iterations of the five allowed.
    overrides = tiny_overrides(policy_path, tmp_path / "run", iterations=5) + [
        "runner.max_env_steps=13", "runner.save_interval=0"]
    rows, log_dir, _ = run(GRPO, overrides)
    summary = json.loads((log_dir / "summary.json").read_text())
    steps = [r["env/total_steps"] for r in rows]
    assert steps[-1] >= 13 and (len(steps) == 1 or steps[-2] < 13)
    assert summary["iterations"] == len(rows) < 5 and summary["env_steps"] == steps[-1]
    assert (log_dir / f"checkpoints/iter_{len(rows)}/state.pt").is_file()  # the last iteration saves
    assert (log_dir / "final/model/model.safetensors").is_file()


@pytest.mark.ray
def test_resampled_rounds_count_towards_the_env_step_budget(local_ray, policy_path, tmp_path):
    # The untrained policy never opens the drawer in 12 steps: every group has zero variance, so each iteration
    # collects its base round plus the one extra round allowed, and both cost env steps.
    overrides = tiny_overrides(policy_path, tmp_path / "run", iterations=5) + [
        "algorithm.zero_variance_groups=resample", "algorithm.max_resample_rounds=1", "runner.max_env_steps=60",
        "runner.save_interval=0"]
    rows, _, _ = run(GRPO, overrides)
    first = rows[0]
    assert first["rollout/resample_rounds"] == 1 and first["env/success_once"] == 0
    assert first["env/collected_episodes"] == 2 * first["env/num_trajectories"] == 8
    assert first["env/total_steps"] == first["env/collected_steps"] == 8 * 12
    assert len(rows) == 1  # 96 steps >= the budget of 60; counting the base round only (48) would run on


PPO_ITERATIONS = 2


@pytest.fixture(scope="module")
def ppo_run(local_ray, policy_path, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("ppo") / "run"
    return run(PPO, tiny_overrides(policy_path, log_dir, PPO_ITERATIONS, group_size=1))


@pytest.mark.ray
def test_ppo_run_trains_policy_and_value_head(ppo_run, policy_path):
    rows, log_dir, _ = ppo_run
    assert len(rows) == PPO_ITERATIONS
    assert all(r["train/actor/num_updates"] > 0 and "train/critic/value_loss" in r for r in rows)
    start = load_file(f"{policy_path}/model.safetensors")
    final = load_file(log_dir / f"checkpoints/iter_{PPO_ITERATIONS}/policy/model.safetensors")
    assert any(not torch.equal(start[k], final[k]) for k in start)
    assert any(not torch.equal(start[k], final[k]) for k in start if k.startswith("value_head."))


@pytest.mark.ray
def test_resume_repeats_the_uninterrupted_run(ppo_run, policy_path, tmp_path):
    rows, log_dir, _ = ppo_run
    overrides = tiny_overrides(policy_path, tmp_path / "resumed", PPO_ITERATIONS, group_size=1) + [
        f"runner.resume_dir={log_dir}/checkpoints/iter_1"]
    resumed_rows, resumed_dir, _ = run(PPO, overrides)
    assert [r["iteration"] for r in resumed_rows] == [2]
    assert untimed(resumed_rows) == untimed(rows[1:])
    final = f"checkpoints/iter_{PPO_ITERATIONS}/policy/model.safetensors"
    expected, got = load_file(log_dir / final), load_file(resumed_dir / final)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.ray
def test_killed_env_and_rollout_workers_are_restarted_and_the_iteration_redone(
        ppo_run, policy_path, tmp_path, monkeypatch):
    real_collect_round = embodied_runner.collect_round
    calls = []

    def collect_round_with_kills(env_workers, rollout_workers, reset_ids, group_ids, reset_seeds, act_seed,
                                 max_chunks, **kwargs):
        # Calls: 0 = iteration 1, 1 = its redo, 2 = iteration 2, 3 = its redo.
        victim = {0: env_workers[1], 2: rollout_workers[0]}.get(len(calls))
        calls.append(victim)

        def act_seed_killing(batch, chunk):
            if victim is not None and (batch, chunk) == (0, 1):  # mid-episode, after a chunk was stepped
                ray.kill(victim.handle)
            return act_seed(batch, chunk)

        return real_collect_round(env_workers, rollout_workers, reset_ids, group_ids, reset_seeds, act_seed_killing,
                                  max_chunks, **kwargs)

    monkeypatch.setattr(embodied_runner, "collect_round", collect_round_with_kills)
    rows, log_dir, _ = run(PPO, tiny_overrides(policy_path, tmp_path / "run", PPO_ITERATIONS, group_size=1))
    summary = json.loads((log_dir / "summary.json").read_text())
    assert summary["iterations"] == PPO_ITERATIONS and summary["worker_restarts"] == 2
    messages = " | ".join(summary["events"])
    assert "iteration 1: env worker 1 died" in messages and "iteration 2: rollout worker 0 died" in messages
    assert "killed by `ray.kill`" in messages
    assert len(calls) == 4
    # Redone rounds replay the same resets and samples: the run matches the undisturbed one.
    assert untimed(rows) == untimed(ppo_run[0])


def test_a_policy_that_does_not_fit_the_train_env_is_refused_with_the_keys_to_change(tmp_path, policy_path):
    cfg, _ = compose_config(GRPO, tiny_overrides(policy_path, tmp_path))
    runner = EmbodiedRunner(cfg)
    runner.spec = {"num_envs": 2, "action_dim": 4, "max_episode_steps": 12, "num_initial_states": 50, "chunk_size": 2}
    with pytest.raises(RuntimeError, match=r"env.train.chunk_size: the env steps 2 actions per chunk but the policy "
                                           r"\(.*\) emits chunks of 4"):
        runner._check_policy_fits_env({"chunk_size": 4, "action_dim": 4, "image_size": IMAGE})
    runner.spec["chunk_size"] = None
    with pytest.raises(RuntimeError, match=r"env.train.image_size: \[16, 16\] but the policy .* 32x32 images"):
        runner._check_policy_fits_env({"chunk_size": 4, "action_dim": 4, "image_size": 32})
    runner._check_policy_fits_env({"chunk_size": 4, "action_dim": 4, "image_size": IMAGE})
