"""How the world-model env turns scored frames into rewards and episode ends, per env.

An env succeeds once ``consecutive`` scored frames in a row reach the reward model's ``threshold`` (the streak may
span chunks) and, with a state model, its object is at the goal by that step. ``success_once`` rewards that step with
1; ``relative`` rewards every scored frame with the change in success probability since the previous one, so an
episode's return is ``p_final - p_reset``. An env halted by disagreement (of a DiT ensemble or of the state model's
members) ends as a failure: scored as probability 0 under ``relative``.
"""

from __future__ import annotations

import numpy as np

REWARD_TYPES = ("success_once", "relative")


class SuccessRule:
    """Success, halts, streaks and last scored probabilities of ``num_envs`` envs (module docstring)."""

    @staticmethod
    def check(reward_type: str, consecutive: int) -> None:
        if reward_type not in REWARD_TYPES:
            raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {reward_type!r}")
        if int(consecutive) < 1:
            raise ValueError(f"success_consecutive must be >= 1, got {consecutive}")

    def __init__(self, num_envs: int, reward_type: str, threshold: float, consecutive: int) -> None:
        self.check(reward_type, consecutive)
        self.reward_type, self.threshold, self.consecutive = reward_type, float(threshold), int(consecutive)
        self.success = np.zeros(num_envs, bool)
        self.halted = np.zeros(num_envs, bool)  # ended by disagreement
        self.streak = np.zeros(num_envs, np.int64)  # scored frames in a row at or above the threshold
        self.last_prob = np.zeros(num_envs, np.float32)

    @property
    def ended(self) -> np.ndarray:
        """Envs the rule ended (terminated: success or halt), as opposed to truncated ones."""
        return self.success | self.halted

    def reset(self, rows: np.ndarray, reset_probs: list[float] | None) -> None:
        """Start ``rows`` afresh; ``reset_probs``: their reset frames' success probabilities (``relative``)."""
        self.success[rows] = self.halted[rows] = False
        self.streak[rows] = 0
        if reset_probs is not None:
            self.last_prob[rows] = reset_probs

    def halt(self, row: int, step: int, rewards: np.ndarray, terminated: np.ndarray) -> None:
        """End ``row`` at ``step`` of this chunk as a failure, whatever its frames scored."""
        terminated[row, step:] = True
        self.halted[row] = True
        if self.reward_type == "relative":
            rewards[row, step] = -self.last_prob[row]
            self.last_prob[row] = 0.0

    def settle(self, row: int, probs: list[tuple[int, float]], end: int, rewards: np.ndarray, terminated: np.ndarray,
               state_reached: np.ndarray | None) -> int:
        """Rewards and success of ``row`` from its scored ``(step, probability)`` pairs of this chunk, in order;
        ``state_reached[step]``: the state model's object is at the goal by then (``None``: no state model).
        Returns the last step of the chunk the env executes: its success step, else ``end - 1``."""
        last_step, previous = end - 1, self.last_prob[row]
        for step, prob in probs:
            if self.reward_type == "relative":
                rewards[row, step] = prob - previous
            previous = prob
            self.streak[row] = self.streak[row] + 1 if prob >= self.threshold else 0
            confirmed = state_reached is None or state_reached[step]
            if self.streak[row] >= self.consecutive and confirmed:
                last_step = step
                if self.reward_type == "success_once":
                    rewards[row, step] = 1.0
                terminated[row, step:] = True
                self.success[row] = True
                break
        self.last_prob[row] = previous
        return last_step
