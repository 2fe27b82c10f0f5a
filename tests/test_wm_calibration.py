"""benchmarks/wm_calibration.py's success rules, applied to per-chunk reward-model probabilities."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("wm_calibration", ROOT / "benchmarks" / "wm_calibration.py")
wm_calibration = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wm_calibration)

PROBS = np.array([
    [0.1, 0.9, 0.2, 0.9, 0.9],  # two isolated spikes, then two in a row
    [0.6, 0.6, 0.6, 0.1, 0.1],  # three in a row at a middling score
    [0.1, 0.2, 0.3, 0.4, 0.5],  # reaches 0.5 at the very end
])


def test_one_frame_rule_fires_at_the_first_frame_over_the_threshold():
    success, steps, chunks_run = wm_calibration.imagined_outcome(PROBS, 0.5, 1, chunk=4)
    assert success.tolist() == [True, True, True]
    assert chunks_run.tolist() == [2, 1, 5]
    assert steps.tolist() == [7, 3, 19]  # last step of the chunk whose frame was scored


def test_consecutive_frames_rule_ignores_isolated_spikes():
    success, steps, chunks_run = wm_calibration.imagined_outcome(PROBS, 0.8, 2, chunk=4)
    assert success.tolist() == [True, False, False]
    assert steps.tolist() == [19, -1, -1]
    assert chunks_run.tolist() == [5, 5, 5]  # failures run to the horizon
    assert wm_calibration.imagined_outcome(PROBS, 0.5, 3, chunk=4)[0].tolist() == [False, True, False]


def test_recording_goes_on_past_success_only_when_asked():
    stopped, success = wm_calibration.record_actions("expert", 3, 150, 0.0, seed=0)
    longer, success_longer = wm_calibration.record_actions("expert", 3, 150, 0.0, seed=0, steps_after_success=6)
    assert success and success_longer
    assert len(longer) == len(stopped) + 6
    np.testing.assert_array_equal(longer[: len(stopped)], stopped)
    random_actions, random_success = wm_calibration.record_actions("random", 3, 40, 0.0, seed=0, steps_after_success=6)
    assert not random_success and len(random_actions) == 40


def test_side_by_side_puts_real_over_imagined_frames_of_the_same_chunks():
    real = [np.full((5, 2, 2, 3), i, np.uint8) for i in range(3)]
    for frames in real:
        frames[:, 0, 0, 0] = np.arange(5)  # chunk index in one pixel
    imagined = np.full((3, 6, 2, 2, 3), 100, np.uint8)
    imagined[..., 0, 0, 0] = 100 + np.arange(6)
    image = wm_calibration.side_by_side(real, imagined, [2, 0], columns=3)
    assert image.shape == (8, 6, 3)
    assert image[0:2, :, 1].max() == 2 and image[4:6, :, 1].max() == 0  # episode 2's real row, then episode 0's
    assert image[0, ::2, 0].tolist() == [0, 2, 4] and image[2, ::2, 0].tolist() == [100, 102, 104]
