"""benchmarks/transfer.py's comparison: gains in points and the issue's targets, computed from run summaries."""

import importlib.util
from pathlib import Path

import pytest

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


def test_a_task_without_configs_of_its_own_runs_drawer_opens_retargeted():
    assert transfer.task_configs("drawer-open-v3") == ("drawer_open", [])
    slug, overrides = transfer.task_configs("door-open-v3")
    assert slug == "drawer_open" and overrides == ["env.train.task=door-open-v3", "env.eval.task=door-open-v3"]
    with pytest.raises(SystemExit, match="'door-opne-v3' is not a Meta-World task"):
        transfer.task_configs("door-opne-v3")
