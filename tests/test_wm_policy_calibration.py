"""benchmarks/wm_policy_calibration.py: per-initial-state imagined vs real success, from evaluation summaries."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("wm_policy_calibration", ROOT / "benchmarks" / "wm_policy_calibration.py")
calibration = importlib.util.module_from_spec(spec)
spec.loader.exec_module(calibration)


def _summary(path: Path, outcomes: dict[int, list[bool]], temperature: float = 4.0) -> Path:
    episodes = [{"initial_state": s, "reset_id": s, "success": ok} for s, oks in outcomes.items() for ok in oks]
    path.write_text(json.dumps({"deterministic": False, "temperature": temperature, "episodes": episodes}))
    return path


def test_real_rates_pool_evaluations_per_state_and_reject_another_temperature(tmp_path):
    a = _summary(tmp_path / "a.json", {0: [True, False], 1: [False]})
    b = _summary(tmp_path / "b.json", {0: [True], 2: [True, True]})
    assert calibration.real_rates([a, b], 4.0) == {0: (2, 3), 1: (0, 1), 2: (2, 2)}
    with pytest.raises(SystemExit, match="temperature"):
        calibration.real_rates([_summary(tmp_path / "c.json", {0: [True]}, temperature=1.0)], 4.0)


def test_world_model_starts_cycle_over_the_recordings_of_each_state():
    recorded_reset_ids = np.array([0, 1, 0, 2, 1, 0])
    starts, states = calibration.world_model_starts(recorded_reset_ids, [0, 1, 3], per_state=4)
    assert starts == [0, 2, 5, 0, 1, 4, 1, 4]  # state 3 was never recorded: skipped
    assert states == [0, 0, 0, 0, 1, 1, 1, 1]


def test_compare_separates_false_successes_from_misses():
    real = {0: (0, 2), 1: (0, 2), 2: (2, 2), 3: (1, 2)}
    imagined = {0: (4, 4), 1: (2, 4), 2: (1, 4), 3: (2, 4), 9: (4, 4)}  # state 9 has no real episodes
    out = calibration.compare(imagined, real)
    assert out["num_states"] == 4 and out["states_real_never_always"] == [2, 1]
    assert out["mixed_states_imagined_real"] == [3, 1]  # imagined 1, 2, 3 (9 is not compared); real 3
    assert out["imagined_on_real_never"] == pytest.approx(0.75)  # (1.0 + 0.5) / 2
    assert out["imagined_on_real_always"] == pytest.approx(0.25)
    assert out["imagined_success"] == pytest.approx(9 / 16) and out["real_success"] == pytest.approx(3 / 8)
    assert out["per_state_correlation"] < 0  # this world model ranks the states backwards
    agreeing = calibration.compare({s: (k * 2, n * 2) for s, (k, n) in real.items()}, real)
    assert agreeing["per_state_correlation"] == pytest.approx(1.0) and agreeing["mean_abs_state_gap"] == 0.0
