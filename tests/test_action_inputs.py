"""DiTActionInputs: the one place raw env actions become the DiT's action input (training, env, replays, eval)."""

from __future__ import annotations

import numpy as np
import pytest

from rlinf_wm.data.action_inputs import DiTActionInputs
from rlinf_wm.data.statistics import ActionStatistics


@pytest.fixture(scope="module")
def statistics() -> ActionStatistics:
    return ActionStatistics.from_actions(np.random.default_rng(0).uniform(-1, 1, (500, 3)))


def test_without_integral_the_inputs_are_the_normalised_actions_times_the_scaler(statistics):
    actions = np.random.default_rng(1).uniform(-1, 1, (2, 5, 3)).astype(np.float32)
    inputs = DiTActionInputs(statistics, 20.0)
    assert inputs.dim == 3
    got = inputs(actions)
    assert got.dtype == np.float32 and got.shape == (2, 5, 3)
    np.testing.assert_allclose(got, statistics.normalize(actions) * 20.0)


def test_running_sums_chunk_by_chunk_equal_the_whole_episodes(statistics):
    # training computes an episode at once; the env one chunk at a time from the sum so far: they must agree
    actions = np.random.default_rng(2).uniform(-1, 1, (2, 12, 3)).astype(np.float32)
    inputs = DiTActionInputs(statistics, 20.0, integral_scale=0.5)
    assert inputs.dim == 6
    whole = inputs(actions)
    np.testing.assert_allclose(whole[..., :3], statistics.normalize(actions) * 20.0)
    np.testing.assert_allclose(whole[..., 3:], 0.5 * np.cumsum(actions, axis=1), rtol=1e-5, atol=1e-6)
    offset, chunks = np.zeros((2, 3)), []
    for start in range(0, 12, 4):
        chunk = actions[:, start : start + 4]
        chunks.append(inputs(chunk, offset))
        offset = inputs.advance(offset, chunk)
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(offset, actions.sum(axis=1), rtol=1e-5)


def test_out_of_range_actions_sum_as_the_recorded_range_clips_them(statistics):
    inputs = DiTActionInputs(statistics, 1.0, integral_scale=1.0)
    far = np.full((1, 2, 3), 5.0, np.float32)  # far above every recorded action
    np.testing.assert_allclose(inputs(far)[0, :, 3:], [statistics.max, 2 * statistics.max], rtol=1e-6)


def test_bad_settings_and_shapes_name_the_problem(statistics):
    with pytest.raises(ValueError, match="action_integral_scale"):
        DiTActionInputs(statistics, 20.0, integral_scale=-1.0)
    with pytest.raises(ValueError, match="action_scaler"):
        DiTActionInputs(statistics, 0.0)
    with pytest.raises(ValueError, match=r"\[\.\.\., K, A=3\]"):
        DiTActionInputs(statistics, 20.0)(np.zeros((4, 2)))
