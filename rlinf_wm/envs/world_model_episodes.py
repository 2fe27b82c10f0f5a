"""Per-env episode bookkeeping of the world-model env: where each env's episode is and what the policy sees next.

:class:`WorldModelEnv` generates, decodes and scores a chunk for a micro-batch of rows; :meth:`EpisodeRows.finish`
then closes the chunk for each row: the success rule settles (or halts) it, its step count advances by the actions
it executed (up to its success step), ``max_episode_steps`` truncates it, and the next observation and the reward
model's frame history come from the decoded chunk.
"""

from __future__ import annotations

import numpy as np

from rlinf_wm.envs.world_model_success import SuccessRule


class EpisodeRows:
    """Episode state of ``num_envs`` envs: reset ids, instructions, steps taken, running action sums, the image each
    shows and the frames before it that a multi-frame reward model stacks (``history_frames``)."""

    def __init__(self, num_envs: int, image_size: tuple[int, int], history_frames: int, action_dim: int,
                 max_episode_steps: int, rule: SuccessRule) -> None:
        height, width = image_size
        self.reset_ids = np.full(num_envs, -1, np.int64)
        self.instructions = [""] * num_envs
        self.images = np.zeros((num_envs, height, width, 3), np.uint8)
        self.history = np.zeros((num_envs, history_frames, height, width, 3), np.uint8)
        self.steps = np.zeros(num_envs, np.int64)
        self.action_sums = np.zeros((num_envs, action_dim), np.float64)  # running sums, if the DiT takes them
        self.done = np.ones(num_envs, bool)
        self.max_episode_steps = int(max_episode_steps)
        self.rule = rule

    def start(self, rows: np.ndarray, ids: np.ndarray, initial_states, with_action_sums: bool) -> None:
        """Put ``rows`` at the initial states ``ids`` (the success rule is reset by the env)."""
        frames = initial_states.frames[ids]  # [n, F, H, W, 3]
        self.images[rows] = frames[:, -1]
        if self.history.shape[1]:
            # The frames the next scored frame is stacked after, ending at the reset image (the state's last frame);
            # before the state's first there is nothing: repeat it (as the reward model's training stacks do).
            count = frames.shape[1]
            self.history[rows] = frames[:, np.clip(np.arange(count - self.history.shape[1], count), 0, None)]
        self.reset_ids[rows] = ids
        for row, state in zip(rows.tolist(), ids.tolist()):
            self.instructions[row] = initial_states.instructions[state]
        # A state branched off a recorded episode at step t has max_episode_steps - t left, as the real env would.
        self.steps[rows] = initial_states.start_steps[ids]
        if with_action_sums:
            self.action_sums[rows] = initial_states.action_sums_of(ids, self.action_sums.shape[1])
        self.done[rows] = False

    def reward_windows(self, rows: np.ndarray, decoded: list[dict[int, np.ndarray]],
                       scored: list[list[int]]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """The clips the reward model scores: for each step ``j`` in ``scored[i]``, row ``i``'s frames up to ``j``
        (``uint8 [N, history + 1, H, W, 3]``), reaching back into the frames before this chunk; and each clip's
        ``(i, j)``."""
        reach = self.history.shape[1]
        windows, owners = [], []
        for i, steps in enumerate(scored):
            history = list(self.history[rows[i]])  # frames before this chunk, oldest first
            for j in steps:
                windows.append(np.stack([decoded[i][t] if t >= 0 else history[len(history) + t]
                                         for t in range(j - reach, j + 1)]))
                owners.append((i, j))
        return np.stack(windows), owners

    def finish(self, rows: np.ndarray, ends: np.ndarray, decoded: list[dict[int, np.ndarray]],
               owners: list[tuple[int, int]], probs: list[float], halted: np.ndarray, state_reached: np.ndarray | None,
               rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray, scored_probs: np.ndarray) -> int:
        """Close this chunk for ``rows``: ``ends[i]`` steps were generated for row ``i``, ``decoded[i]`` its decoded
        frames by step, ``probs`` the success probabilities of the clips ``owners`` (:meth:`reward_windows`),
        ``halted[i]`` ended by disagreement, ``state_reached[i]`` the state model's verdict by step (``None``: no
        state model). Fills the rows of the chunk's arrays; returns the number of actions the rows executed."""
        scored: list[list[tuple[int, float]]] = [[] for _ in rows]
        for (i, j), prob in zip(owners, probs):
            scored[i].append((j, prob))
        executed = 0
        for i, row in enumerate(rows.tolist()):
            if halted[i]:
                last_step = int(ends[i]) - 1
                self.rule.halt(row, last_step, rewards, terminated)
            else:
                last_step = self.rule.settle(row, scored[i], int(ends[i]), rewards, terminated,
                                             None if state_reached is None else state_reached[i])
                scored_probs[row] = self.rule.last_prob[row]
            self.done[row] |= bool(self.rule.success[row] or self.rule.halted[row])
            self.steps[row] += last_step + 1
            executed += last_step + 1
            if not self.done[row] and self.steps[row] >= self.max_episode_steps:
                truncated[row, last_step:] = True
                self.done[row] = True
            self.images[row] = decoded[i][last_step]
            if self.history.shape[1]:
                seen = list(self.history[row]) + [decoded[i].get(t) for t in range(last_step + 1)]
                self.history[row] = np.stack(seen[-self.history.shape[1]:])
        return executed
