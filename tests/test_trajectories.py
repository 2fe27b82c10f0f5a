"""HDF5 trajectory round trip and errors, training windows and initial states."""

import h5py
import numpy as np
import pytest

from rlinf_wm.data.trajectories import Episode, read_episodes, write_episodes
from rlinf_wm.data.windows import TrajectoryWindows, initial_states


def make_episode(steps: int, success: bool, seed: int = 0, final_frame: bool = True, size: int = 4) -> Episode:
    """Frame t is filled with the value t and action t is (t, -t), so windows can be checked by value."""
    n_frames = steps + 1 if final_frame else steps
    frames = np.broadcast_to(np.arange(n_frames, dtype=np.uint8)[:, None, None, None], (n_frames, size, size, 3)).copy()
    actions = np.stack([np.arange(steps), -np.arange(steps)], axis=1).astype(np.float32)
    rewards = np.zeros(steps, np.float32)
    dones = np.zeros(steps, bool)
    if success:
        rewards[-1], dones[-1] = 1.0, True
    return Episode(frames=frames, actions=actions, rewards=rewards, dones=dones, success=success,
                   instruction="open the drawer", task="drawer-open-v3", seed=seed,
                   states=np.zeros((steps, 39), np.float32), attrs={"kind": "expert"})


def test_until_success_cuts_after_the_success_step():
    episode = make_episode(8, False)
    episode.rewards[4], episode.dones[4:], episode.success = 1.0, True, True
    cut = episode.until_success()
    assert cut.length == 5 and len(cut.frames) == 6 and cut.states.shape[0] == 5
    np.testing.assert_array_equal(cut.frames[:, 0, 0, 0], np.arange(6))  # the frame after the success step stays
    assert cut.rewards[-1] == 1.0 and cut.dones[-1] and cut.success
    assert make_episode(5, True).until_success().length == 5  # ends at success: unchanged
    assert make_episode(5, False).until_success().length == 5  # never succeeds: unchanged


def test_hdf5_round_trip(tmp_path):
    episodes = [make_episode(5, True, seed=1), make_episode(3, False, seed=2, final_frame=False)]
    path = write_episodes(tmp_path / "shard.hdf5", episodes, env_args={"task": "drawer-open-v3"})
    back = read_episodes(path)
    assert len(back) == 2
    for written, read in zip(episodes, back):
        np.testing.assert_array_equal(read.frames, written.frames)
        np.testing.assert_array_equal(read.actions, written.actions)
        np.testing.assert_array_equal(read.dones, written.dones)
        np.testing.assert_array_equal(read.states, written.states)
        assert (read.success, read.seed, read.instruction, read.task) == (
            written.success, written.seed, written.instruction, written.task)
    with h5py.File(path) as f:
        assert f["data/demo_0"].attrs["kind"] == "expert"
        assert f["data/demo_0/obs/agentview_rgb"].shape == (5, 4, 4, 3)  # frames before each action
        assert f["data/demo_0/final_obs/agentview_rgb"].shape == (1, 4, 4, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_truncated_file_names_the_file(tmp_path):
    path = write_episodes(tmp_path / "shard.hdf5", [make_episode(5, True)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shard.hdf5.*truncated"):
        read_episodes(path)


def test_missing_key_names_the_file_and_key(tmp_path):
    path = write_episodes(tmp_path / "shard.hdf5", [make_episode(5, True)])
    with h5py.File(path, "a") as f:
        del f["data/demo_0/actions"]
    with pytest.raises(KeyError, match=r"shard\.hdf5.*demo_0.*'actions'"):
        read_episodes(path)


def test_inconsistent_lengths_name_the_demo(tmp_path):
    path = write_episodes(tmp_path / "shard.hdf5", [make_episode(5, True)])
    with h5py.File(path, "a") as f:
        del f["data/demo_0/dones"]
        f["data/demo_0/dones"] = np.zeros(3, np.uint8)
    with pytest.raises(ValueError, match=r"shard\.hdf5:/data/demo_0: dones has 3 entries for 5 actions"):
        read_episodes(path)


def test_windows_content_and_padding():
    windows = TrajectoryWindows([make_episode(5, True)], num_cond_frames=2, chunk_size=3)
    assert len(windows) == 5  # one window per step with end padding
    first = windows[0]
    assert first["cond_frames"][:, 0, 0, 0].tolist() == [0, 0]  # frame 0 repeated before the start
    assert first["future_frames"][:, 0, 0, 0].tolist() == [1, 2, 3]
    assert first["actions"][:, 0].tolist() == [0, 1, 2]
    assert first["valid"].all() and first["success"] and not first["success_in_window"]
    middle = windows[2]
    assert middle["cond_frames"][:, 0, 0, 0].tolist() == [1, 2]
    assert middle["future_frames"][:, 0, 0, 0].tolist() == [3, 4, 5]
    assert middle["success_in_window"]  # the success happens at the last action (step 4)
    last = windows[4]
    assert last["future_frames"][:, 0, 0, 0].tolist() == [5, 5, 5]  # last frame repeated
    assert last["actions"][:, 0].tolist() == [4, 0, 0]  # zero actions past the end
    assert last["valid"].tolist() == [True, False, False]
    assert last["cond_frames"].dtype == np.uint8 and last["actions"].dtype == np.float32
    assert (last["episode"], last["start"], last["instruction"]) == (0, 4, "open the drawer")


def test_windows_without_padding_and_stride():
    episodes = [make_episode(5, False), make_episode(7, True, seed=1)]
    windows = TrajectoryWindows(episodes, num_cond_frames=1, chunk_size=3, stride=2, pad_end=False)
    assert [(w["episode"], w["start"]) for w in windows] == [(0, 0), (0, 2), (1, 0), (1, 2), (1, 4)]
    assert all(w["valid"].all() for w in windows)
    assert not any(w["success"] for w in windows if w["episode"] == 0)
    assert [w["success_in_window"] for w in windows if w["episode"] == 1] == [False, False, True]


def test_episode_without_final_frame_drops_its_last_action():
    windows = TrajectoryWindows([make_episode(5, False, final_frame=False)], num_cond_frames=1, chunk_size=2)
    assert len(windows) == 4
    assert windows[3]["future_frames"][:, 0, 0, 0].tolist() == [4, 4]
    assert windows[3]["valid"].tolist() == [True, False]


def test_window_errors_name_the_episode():
    with pytest.raises(ValueError, match=r"episode 1 .*seed=7.* too short"):
        TrajectoryWindows([make_episode(5, True), make_episode(2, False, seed=7)], 1, 4, pad_end=False)
    with pytest.raises(ValueError, match=r"episode 1 .*'frames' are \(8, 8, 3\)"):
        TrajectoryWindows([make_episode(5, True), make_episode(5, True, size=8)], 1, 2)
    broken = make_episode(5, True)
    broken.frames = broken.frames[:3]
    with pytest.raises(ValueError, match=r"episode 0 .*'frames' has 3 entries for 5 'actions'"):
        TrajectoryWindows([broken], 1, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        TrajectoryWindows([make_episode(5, True)], 1, 0)
    with pytest.raises(IndexError):
        TrajectoryWindows([make_episode(2, True)], 1, 1)[5]


def test_initial_states_repeat_the_first_frame():
    states = initial_states([make_episode(5, True), make_episode(3, False, seed=1)], num_cond_frames=3)
    assert len(states) == 2
    frames, instruction, task = states[1]
    assert frames.shape == (3, 4, 4, 3) and frames.dtype == np.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 0, 0]
    assert (instruction, task) == ("open the drawer", "drawer-open-v3")


def test_extra_episode_attributes_round_trip(tmp_path):
    from rlinf_wm.data import Episode, read_episodes, write_episodes

    t = 3
    episode = Episode(
        frames=np.zeros((t + 1, 8, 8, 3), np.uint8), actions=np.zeros((t, 4), np.float32),
        rewards=np.zeros(t, np.float32), dones=np.zeros(t, bool), success=False, instruction="open",
        attrs={"kind": "perturbed", "perturb_start": 1},
    )
    write_episodes(tmp_path / "a.hdf5", [episode])
    (loaded,) = read_episodes(tmp_path / "a.hdf5")
    assert loaded.attrs == {"kind": "perturbed", "perturb_start": 1}
