"""benchmarks/transfer.py's comparison: gains in points and the issue's targets, computed from run summaries."""

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("transfer", ROOT / "benchmarks" / "transfer.py")
transfer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transfer)


def run(rate, low=None):
    return {"success_rate": rate, "ci95": [rate - 0.1 if low is None else low, rate + 0.1]}


def test_gains_fraction_and_targets():
    result = {"base": run(0.40), "grpo_world_model": run(0.62), "grpo_real_updates": run(0.70, low=0.61),
              "grpo_real_steps": run(0.50), "imagined": run(0.65)}
    out = transfer.compare(result)
    assert out["gain_world_model_pp"] == 22.0 and out["gain_grpo_real_updates_pp"] == 30.0
    assert out["fraction_of_grpo_real_updates_gain"] == round(0.22 / 0.30, 3)
    assert out["imagined_minus_real_pp"] == 3.0
    assert out["targets_met"] == {"gain_over_base": True, "fraction_of_real_gain_at_equal_updates": True,
                                  "imagined_close_to_real": True}


def test_a_real_gain_within_noise_meets_no_fraction_target():
    result = {"base": run(0.45), "grpo_world_model": run(0.48), "grpo_real_updates": run(0.46, low=0.37),
              "imagined": run(0.80)}
    out = transfer.compare(result)
    assert out["fraction_of_grpo_real_updates_gain"] == 3.0  # reported, but meaningless:
    assert not out["real_gain_at_equal_updates_significant"]
    assert out["targets_met"] == {"gain_over_base": False, "fraction_of_real_gain_at_equal_updates": False,
                                  "imagined_close_to_real": False}
    no_gain = dict(result, grpo_real_updates=run(0.40))
    assert transfer.compare(no_gain)["fraction_of_grpo_real_updates_gain"] is None
    not_imagined = {k: v for k, v in result.items() if k != "imagined"}
    assert transfer.compare(not_imagined)["targets_met"]["imagined_close_to_real"] is None


def test_the_seed_mean_pools_episodes_so_its_real_gain_can_be_significant():
    def seed(base, wm, real, imagined):
        return {name: {"success_rate": k / 100, "num_episodes": 100} for name, k in
                (("base", base), ("grpo_world_model", wm), ("grpo_real_updates", real), ("imagined", imagined))}

    # a seed's real gain of +8 of 100 is within its interval; three seeds' +40 of 300 (pooled) are not
    one = transfer.mean_over_seeds([seed(60, 69, 68, 79)])
    assert not transfer.compare(one)["real_gain_at_equal_updates_significant"]
    mean = transfer.mean_over_seeds([seed(59, 72, 89, 89), seed(60, 74, 63, 91), seed(60, 60, 67, 76)])
    assert mean["grpo_real_updates"]["num_episodes"] == 300
    assert mean["grpo_real_updates"]["success_rate"] == pytest.approx(0.73)
    low, high = mean["grpo_real_updates"]["ci95"]
    assert 0.67 < low < 0.68 and 0.77 < high < 0.78  # Wilson interval of 219 / 300
    out = transfer.compare(mean)
    assert out["gain_world_model_pp"] == 9.0 and out["fraction_of_grpo_real_updates_gain"] == 0.675
    assert out["targets_met"] == {"gain_over_base": False, "fraction_of_real_gain_at_equal_updates": True,
                                  "imagined_close_to_real": False}


def test_a_task_without_configs_of_its_own_runs_drawer_opens_retargeted():
    assert transfer.task_configs("drawer-open-v3") == ("drawer_open", [])
    slug, overrides = transfer.task_configs("door-open-v3")
    assert slug == "drawer_open" and overrides == ["env.train.task=door-open-v3", "env.eval.task=door-open-v3"]
    with pytest.raises(SystemExit, match="'door-opne-v3' is not a Meta-World task"):
        transfer.task_configs("door-opne-v3")


def test_a_cached_result_matches_through_symlinks_and_names_each_setting_that_differs(tmp_path):
    (tmp_path / "real" / "sft").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    cached = {"runner": {"seed": 0, "max_iterations": 20}, "policy": {"path": str(tmp_path / "real" / "sft")}}
    same = {"runner.seed": 0, "runner.max_iterations": 20, "policy.path": tmp_path / "linked" / "sft"}
    assert transfer.setting_mismatches(cached, same) == []
    other = {**same, "runner.max_iterations": 10, "policy.path": tmp_path / "elsewhere", "algorithm.kl_coef": 1.0}
    assert [m.split("=")[0] for m in transfer.setting_mismatches(cached, other)] == [
        "runner.max_iterations", "policy.path", "algorithm.kl_coef"]
    assert transfer.override_settings(["dit.patch_size=[1,1,1]", "actor.lr=1e-4", "+extra=1", "~gone"]) == {
        "dit.patch_size": [1, 1, 1], "actor.lr": 1e-4}  # as Hydra reads them, not yaml ("1e-4" is a str there)
    assert transfer.setting_mismatches({"algorithm": {"kl_coef": 0.0}}, {"algorithm": "ppo"}) == []  # a group


def test_cached_runs_and_evaluations_made_with_other_settings_are_refused(tmp_path):
    args = SimpleNamespace(task="drawer-open-v3", slug="drawer_open", artifacts=tmp_path, retarget=[], overrides=[],
                           eval_episodes=100, temperature=4.0)
    run_dir = tmp_path / "seed_0" / "grpo_real_updates"
    (run_dir / "final" / "model").mkdir(parents=True)
    (run_dir / "final" / "model" / "model.safetensors").write_bytes(b"")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"runner": {"seed": 0, "max_iterations": 10}, "policy": {"path": str(tmp_path / "sft")}}))
    with pytest.raises(SystemExit, match=r"config.yaml was made with other settings: runner.max_iterations=10 "
                                         r"\(this run: 20\)"):
        transfer.rl_run("grpo_real_updates", args, 0, run_dir, ["runner.max_iterations=20"])

    eval_dir = tmp_path / "seed_0" / "eval_base"
    eval_dir.mkdir()
    (eval_dir / "summary.json").write_text(json.dumps({
        "policy_path": str(tmp_path / "sft" / "model"), "num_episodes": 50, "seed": 0, "deterministic": False,
        "temperature": 4.0, "success_rate": 0.5, "success_rate_ci95": [0.36, 0.64], "mean_episode_length": 120.0}))
    with pytest.raises(SystemExit, match=r"num_episodes=50 \(this run: 100\)"):
        transfer.real_eval(tmp_path / "sft" / "model", eval_dir, args, seed=0)
    args.eval_episodes = 50
    assert transfer.real_eval(tmp_path / "sft" / "model", eval_dir, args, seed=0)["success_rate"] == 0.5


def test_an_evaluation_older_than_its_policy_is_redone(tmp_path, monkeypatch):
    args = SimpleNamespace(task="drawer-open-v3", slug="drawer_open", artifacts=tmp_path, retarget=[],
                           eval_episodes=100, temperature=4.0)
    policy = tmp_path / "seed_0" / "grpo_world_model" / "final" / "model"
    policy.mkdir(parents=True)
    eval_dir = tmp_path / "seed_0" / "eval_grpo_world_model"
    eval_dir.mkdir()
    summary = {"policy_path": str(policy), "num_episodes": 100, "seed": 0, "deterministic": False, "temperature": 4.0,
               "success_rate": 0.5, "success_rate_ci95": [0.4, 0.6], "mean_episode_length": 120.0}
    (eval_dir / "summary.json").write_text(json.dumps(summary))
    os.utime(eval_dir / "summary.json", (100, 100))  # explicit times: file systems differ in their resolution
    (eval_dir / "episode_000_failure.gif").write_bytes(b"")
    runs = []

    def evaluate(command, log_path, env=None):  # stands in for eval_embodied_agent.py
        runs.append(command)
        eval_dir.mkdir(exist_ok=True)
        (eval_dir / "summary.json").write_text(json.dumps({**summary, "success_rate": 0.8}))
        return 1.0

    monkeypatch.setattr(transfer, "run_logged", evaluate)
    (policy / "model.safetensors").write_bytes(b"")  # the policy predates its evaluation: cached
    os.utime(policy / "model.safetensors", (0, 0))
    assert transfer.real_eval(policy, eval_dir, args, seed=0)["success_rate"] == 0.5 and not runs
    (policy / "model.safetensors").write_bytes(b"redone")  # the run was redone since: so is its evaluation
    assert transfer.real_eval(policy, eval_dir, args, seed=0)["success_rate"] == 0.8 and len(runs) == 1
    assert not (eval_dir / "episode_000_failure.gif").exists()


def test_a_world_model_run_is_cached_per_world_model(tmp_path):
    args = SimpleNamespace(task="drawer-open-v3", slug="drawer_open", artifacts=tmp_path, retarget=[], overrides=[],
                           world_model_dir=tmp_path / "world_model_more_data")
    run_dir = tmp_path / "seed_0" / "grpo_world_model"
    (run_dir / "final" / "model").mkdir(parents=True)
    (run_dir / "final" / "model" / "model.safetensors").write_bytes(b"")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"runner": {"seed": 0}, "policy": {"path": str(tmp_path / "sft")},
         "env": {"train": {"world_model_dir": str(tmp_path / "world_model")}}}))  # the quickstart's world model
    with pytest.raises(SystemExit, match=r"world_model_dir='[^']*/world_model' \(this run: .*/world_model_more_data\)"):
        transfer.rl_run("grpo_world_model", args, 0, run_dir, [])


def test_mean_action_gains_are_reported_beside_the_sampled_ones():
    def seed(base_mode, wm_mode):
        return {"base": {"success_rate": 0.6, "num_episodes": 100,
                         "mean_actions": {"success_rate": base_mode, "num_episodes": 50}},
                "grpo_world_model": {"success_rate": 0.7, "num_episodes": 100,
                                     "mean_actions": {"success_rate": wm_mode, "num_episodes": 50}},
                "imagined": {"success_rate": 0.9, "num_episodes": 100,
                             "mean_actions": {"success_rate": 0.88, "num_episodes": 100}}}

    mode = transfer.compare(seed(0.5, 0.84))["mean_actions"]
    assert mode["gain_world_model_pp"] == 34.0 and mode["imagined_minus_real_pp"] == 4.0
    # no real GRPO run: its fraction is not measured, which is not the same as missed
    assert mode["targets_met"] == {"gain_over_base": True, "fraction_of_real_gain_at_equal_updates": None,
                                   "imagined_close_to_real": True}
    assert mode["real_gain_at_equal_updates_significant"] is None
    with_real = dict(seed(0.5, 0.84), grpo_real_updates={"success_rate": 0.9, "ci95": [0.8, 0.95],
                                                         "mean_actions": {"success_rate": 1.0, "ci95": [0.93, 1.0]}})
    mode = transfer.compare(with_real)["mean_actions"]
    assert mode["gain_grpo_real_updates_pp"] == 50.0 and mode["fraction_of_grpo_real_updates_gain"] == 0.68
    assert mode["targets_met"]["fraction_of_real_gain_at_equal_updates"]
    assert transfer.compare(with_real)["targets_met"]["gain_over_base"] is False  # the primary protocol: +10

    mean = transfer.mean_over_seeds([seed(0.5, 0.84), seed(0.5, 0.70)])
    assert mean["grpo_world_model"]["mean_actions"]["success_rate"] == pytest.approx(0.77)
    assert mean["grpo_world_model"]["mean_actions"]["num_episodes"] == 100  # two policies' episodes, pooled
    assert mean["base"]["mean_actions"] == {"success_rate": 0.5}  # one evaluation the seeds share: nothing to pool
    assert transfer.compare(mean)["mean_actions"]["gain_world_model_pp"] == 27.0
    sampled_only = {k: {"success_rate": v["success_rate"]} for k, v in seed(0.5, 0.84).items()}
    assert "mean_actions" not in transfer.compare(sampled_only)


def test_another_temperature_is_compared_as_the_primary_protocol_is():
    def entry(rate, at_low_temperature, low=None):
        at_low = {**run(at_low_temperature), "num_episodes": 100}
        return {**run(rate, low), "num_episodes": 100, "temperature_2.4": at_low}

    result = {"base": entry(0.60, 0.55), "grpo_world_model": entry(0.62, 0.80),
              "grpo_real_updates": entry(0.80, 0.85, low=0.71), "imagined": entry(0.90, 0.83)}
    result["grpo_real_updates"]["temperature_2.4"]["ci95"] = [0.77, 0.91]
    out = transfer.compare(result)
    assert out["gain_world_model_pp"] == 2.0 and not out["targets_met"]["gain_over_base"]
    low_t = out["temperature_2.4"]
    assert low_t["gain_world_model_pp"] == 25.0 and low_t["gain_grpo_real_updates_pp"] == 30.0
    assert low_t["fraction_of_grpo_real_updates_gain"] == 0.833 and low_t["imagined_minus_real_pp"] == 3.0
    assert low_t["targets_met"] == {"gain_over_base": True, "fraction_of_real_gain_at_equal_updates": True,
                                    "imagined_close_to_real": True}
    # every seed's episodes at 2.4 are independent draws: the seed mean pools them as it does the primary ones
    mean = transfer.mean_over_seeds([result, result])
    assert mean["base"]["temperature_2.4"]["num_episodes"] == 200
    assert mean["grpo_real_updates"]["temperature_2.4"]["ci95"][0] > 0.55


def test_protocols_act_and_count_episodes_as_named():
    args = SimpleNamespace(temperature=4.0, eval_episodes=100, mean_actions=True, eval_temperatures=[2.4, 1.0])
    assert transfer.extra_protocols(args) == ["mean_actions", "temperature_2.4", "temperature_1"]
    assert transfer.protocol_settings(args, None) == ({"deterministic": False, "temperature": 4.0}, 100)
    assert transfer.protocol_settings(args, "mean_actions") == ({"deterministic": True}, transfer.MEAN_ACTION_EPISODES)
    assert transfer.protocol_settings(args, "temperature_2.4") == ({"deterministic": False, "temperature": 2.4}, 100)


def test_a_cached_mean_action_evaluation_is_not_taken_for_a_sampled_one(tmp_path):
    args = SimpleNamespace(task="drawer-open-v3", slug="drawer_open", artifacts=tmp_path, retarget=[], overrides=[],
                           eval_episodes=100, temperature=4.0)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "summary.json").write_text(json.dumps({
        "policy_path": str(tmp_path / "sft" / "model"), "num_episodes": 50, "seed": 0, "deterministic": True,
        "temperature": 1.0, "success_rate": 0.5, "success_rate_ci95": [0.36, 0.64], "mean_episode_length": 120.0}))
    mode = transfer.real_eval(tmp_path / "sft" / "model", eval_dir, args, seed=0, protocol="mean_actions")
    assert mode["success_rate"] == 0.5
    args.eval_episodes = 50
    with pytest.raises(SystemExit, match=r"deterministic=True \(this run: False\)"):
        transfer.real_eval(tmp_path / "sft" / "model", eval_dir, args, seed=0)
