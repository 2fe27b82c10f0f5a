"""Training windows over recorded episodes, and initial states for world-model resets.

Frame convention: ``episode.frames[t]`` is the observation *before* action ``t``; an episode with
``T`` actions has ``T + 1`` frames (the last is after the last action). A LIBERO file without the
final frame has ``T`` frames: its last action has no resulting frame, so only ``T - 1`` steps are used.

A window starting at step ``s`` holds

* ``cond_frames``: frames ``s - C + 1 .. s`` (``C`` = ``num_cond_frames``); before the episode start
  the first frame is repeated, exactly like :func:`initial_states`, so a world model trained on
  windows sees the same kind of conditioning it gets at reset;
* ``actions``: actions ``s .. s + K - 1``; ``future_frames``: frames ``s + 1 .. s + K``.

End of episode: with ``pad_end=True`` (default) windows start at every step (by ``stride``) and a
future that runs past the end is padded by repeating the last frame with zero actions (a zero
Meta-World action holds the arm still, so "nothing moves" is the physically right target), and
``valid`` marks the real steps; the world model thereby also learns that the final (often success)
frame persists. With ``pad_end=False`` only windows fully inside the episode exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlinf_wm.data.trajectories import Episode, success_step


def _usable_steps(episode: Episode, index: int) -> int:
    """Steps whose resulting frame is recorded."""
    t = len(episode.actions)
    if len(episode.frames) == t + 1:
        return t
    if len(episode.frames) == t:
        return t - 1
    raise ValueError(
        f"episode {index} (task={episode.task!r}, seed={episode.seed}): 'frames' has {len(episode.frames)} "
        f"entries for {t} 'actions' (expected {t + 1}, or {t} without the final frame)"
    )


def _success_step(episode: Episode) -> int | None:
    """Index of the action after which the episode first counts as successful (None if never)."""
    step = success_step(episode.rewards, episode.dones, episode.success)
    return None if step < 0 else step


def _check_episodes(episodes: Sequence[Episode]) -> tuple[tuple[int, ...], int]:
    if len(episodes) == 0:
        raise ValueError("no episodes given")
    frame_shape, action_dim = None, None
    for index, episode in enumerate(episodes):
        where = f"episode {index} (task={episode.task!r}, seed={episode.seed})"
        frames, actions = episode.frames, episode.actions
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{where}: 'frames' must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
        if actions.ndim != 2:
            raise ValueError(f"{where}: 'actions' must be [T, A], got {actions.shape}")
        if frame_shape is None:
            frame_shape, action_dim = frames.shape[1:], actions.shape[1]
        if frames.shape[1:] != frame_shape:
            raise ValueError(f"{where}: 'frames' are {frames.shape[1:]}, episode 0 has {frame_shape}")
        if actions.shape[1] != action_dim:
            raise ValueError(f"{where}: 'actions' have dim {actions.shape[1]}, episode 0 has {action_dim}")
        if len(episode.rewards) != len(actions):
            raise ValueError(f"{where}: 'rewards' has {len(episode.rewards)} entries for {len(actions)} actions")
    return tuple(frame_shape), int(action_dim)


class TrajectoryWindows(Sequence):
    """A torch-free sequence of windows; ``windows[i]`` is a dict (see the module docstring).

    Keys: ``cond_frames`` uint8 [C, H, W, 3], ``actions`` float32 [K, A], ``future_frames`` uint8
    [K, H, W, 3], ``valid`` bool [K], ``success`` (the episode succeeded), ``success_in_window``
    (success reached by the window's last frame), ``instruction``, ``task``, ``episode``, ``start``.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        num_cond_frames: int,
        chunk_size: int,
        stride: int = 1,
        pad_end: bool = True,
    ) -> None:
        for name, value in (("num_cond_frames", num_cond_frames), ("chunk_size", chunk_size), ("stride", stride)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.episodes = list(episodes)
        self.num_cond_frames = int(num_cond_frames)
        self.chunk_size = int(chunk_size)
        self.stride = int(stride)
        self.pad_end = bool(pad_end)
        self.frame_shape, self.action_dim = _check_episodes(self.episodes)
        self._steps = []
        self._success_steps = []
        index = []
        for number, episode in enumerate(self.episodes):
            steps = _usable_steps(episode, number)
            last_start = steps - 1 if pad_end else steps - self.chunk_size
            if last_start < 0:
                raise ValueError(
                    f"episode {number} (task={episode.task!r}, seed={episode.seed}) is too short: {steps} usable "
                    f"steps for chunk_size={self.chunk_size} with pad_end=False (use pad_end=True or a smaller chunk)"
                    if steps > 0 else
                    f"episode {number} (task={episode.task!r}, seed={episode.seed}) has no usable steps "
                    f"({len(episode.actions)} 'actions', {len(episode.frames)} 'frames')"
                )
            self._steps.append(steps)
            self._success_steps.append(_success_step(episode))
            starts = np.arange(0, last_start + 1, self.stride)
            index.append(np.stack([np.full_like(starts, number), starts], axis=1))
        self._index = np.concatenate(index)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        number, start = (int(v) for v in self._index[i])
        episode = self.episodes[number]
        steps, c, k = self._steps[number], self.num_cond_frames, self.chunk_size
        cond_index = np.clip(np.arange(start - c + 1, start + 1), 0, None)
        future_index = np.arange(start + 1, start + k + 1)
        valid = future_index <= steps
        actions = np.zeros((k, self.action_dim), np.float32)
        actions[valid] = episode.actions[start : start + int(valid.sum())]
        solved_at = self._success_steps[number]
        return {
            "cond_frames": episode.frames[cond_index],
            "actions": actions,
            "future_frames": episode.frames[np.minimum(future_index, steps)],
            "valid": valid,
            "success": bool(episode.success),
            "success_in_window": solved_at is not None and solved_at < start + k,
            "instruction": episode.instruction,
            "task": episode.task,
            "episode": number,
            "start": start,
        }

    def episode_of(self, i: int) -> int:
        return int(self._index[i][0])


def initial_states(episodes: Sequence[Episode], num_cond_frames: int) -> list[tuple[np.ndarray, str, str]]:
    """One world-model reset state per episode: ``(frames uint8[C, H, W, 3], instruction, task)``.

    The episode's first frame repeated ``C`` times (nothing precedes it), matching the padding of
    :class:`TrajectoryWindows` at step 0.
    """
    if num_cond_frames < 1:
        raise ValueError(f"num_cond_frames must be >= 1, got {num_cond_frames}")
    _check_episodes(episodes)
    states = []
    for index, episode in enumerate(episodes):
        if len(episode.frames) == 0:
            raise ValueError(f"episode {index} (task={episode.task!r}, seed={episode.seed}): 'frames' is empty")
        frames = np.repeat(episode.frames[:1], num_cond_frames, axis=0)
        states.append((frames, episode.instruction, episode.task))
    return states
