"""InitialStates.resolve_ids: which recorded state each env starts from."""

import numpy as np
import pytest

from rlinf_wm.data.initial_states import InitialStates


def states(n: int = 5) -> InitialStates:
    return InitialStates.from_frames(np.zeros((n, 8, 8, 3), np.uint8), ["open the drawer"] * n)


def test_reset_ids_wrap_and_random_ids_stay_in_range():
    s = states()
    assert s.resolve_ids([0, 7, 12], 3, np.random.default_rng(0)).tolist() == [0, 2, 2]
    drawn = s.resolve_ids(None, 200, np.random.default_rng(0))
    assert drawn.shape == (200,) and set(drawn.tolist()) == set(range(5))


@pytest.mark.parametrize("ids, message", [([0, 1], r"3 integers \(one per env\)"), ([0.5, 1, 2], "3 integers"),
                                          ([0, -1, 2], ">= 0")])
def test_bad_reset_ids_are_rejected_with_the_reason(ids, message):
    with pytest.raises(ValueError, match=message):
        states().resolve_ids(ids, 3, np.random.default_rng(0))
