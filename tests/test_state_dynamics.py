"""The state model: training on a toy drawer, calibration, save/load, and its veto on a world-model env's success."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from world_model_fixtures import CHUNK, make_world_model

from rlinf_wm.data.initial_states import InitialStates
from rlinf_wm.data.trajectories import Episode, write_episodes
from rlinf_wm.envs.world_model_env import WorldModelEnv
from rlinf_wm.models.state_dynamics import StateDynamics, StateSuccessTracker
from rlinf_wm.runners.train_state_model import calibrate, train_state_model
from rlinf_wm.utils.checkpoint import load_model, save_model_atomic

GOAL_OFFSET = -0.1  # the goal lies 10 cm along -y from the object's start, as drawer-open's does


def constant_model(object_step_y: float, reset_ids=(10, 11, 12), success_distance: float = 0.035) -> StateDynamics:
    """A model whose object moves ``object_step_y`` along y every step, whatever the action, from (0, 0, 0)."""
    model = StateDynamics(members=2, hidden=8, num_reset_states=max(reset_ids) + 1, success_distance=success_distance)
    for net in model.nets:
        torch.nn.init.zeros_(net[-1].weight)
        torch.nn.init.zeros_(net[-1].bias)
    model.delta_mean[5] = object_step_y  # tracked dims: hand xyz, gripper, object xyz
    state = torch.zeros(39)
    state[37] = GOAL_OFFSET
    for reset_id in reset_ids:
        model.reset_states[reset_id] = state
        model.reset_known[reset_id] = True
    return model


def toy_drawer_episode(rng: np.random.Generator, reset_id: int, reach: bool, steps: int = 40) -> Episode:
    """A hand that moves 2 cm per unit action; the object follows the hand along y while the hand is within 4 cm
    of it. Reaching episodes go to the object and pull it to the goal; the others wander."""
    start = np.random.default_rng(100 + reset_id)  # a reset id fixes the scene, as Meta-World's do
    state = np.zeros(39, np.float32)
    state[:3] = start.uniform(-0.1, 0.1, 3)
    state[4:7] = start.uniform(-0.05, 0.05, 3)
    state[36:39] = state[4:7] + [0, GOAL_OFFSET, 0]
    states, actions, success = [], [], False
    for _ in range(steps):
        states.append(state.copy())
        if reach:
            to_object = state[4:7] - state[:3]
            action = np.clip(to_object / 0.02, -1, 1) if np.linalg.norm(to_object) > 0.01 else np.array([0, -1, 0])
            action = np.append(action + rng.normal(0, 0.1, 3), 0.0)
        else:
            action = rng.uniform(-1, 1, 4)
        action = np.clip(action, -1, 1).astype(np.float32)
        moved = state[:3] + 0.02 * action[:3]
        if np.linalg.norm(state[:3] - state[4:7]) < 0.04:
            state[5] += moved[1] - state[1]
        state[:3] = moved
        actions.append(action)
        success |= bool(np.linalg.norm(state[4:7] - state[36:39]) <= 0.03)
    frames = np.zeros((steps, 4, 4, 3), np.uint8)
    return Episode(frames=frames, actions=np.stack(actions), rewards=np.zeros(steps, np.float32),
                   dones=np.zeros(steps, bool), success=success, instruction="open the drawer", task="toy",
                   states=np.stack(states), attrs={"task_id": reset_id})


def test_a_trained_state_model_tells_pulled_drawers_from_missed_ones_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [toy_drawer_episode(rng, i % 5, reach=i % 3 != 0) for i in range(80)]
    assert 10 < sum(e.success for e in episodes) < 70  # both outcomes occur
    data = write_episodes(tmp_path / "data.hdf5", episodes)
    out = tmp_path / "state_model"
    metrics = train_state_model([str(data)], out, members=2, horizon=4, steps=600, batch=64, holdout=0.25,
                                progress=False)
    assert metrics["heldout_auc"] >= 0.85, metrics  # an untrained model: ~0.5
    assert metrics["reset_states"] == 5
    model = load_model(StateDynamics, out / "model")
    assert model.success_distance == pytest.approx(metrics["success_distance"])
    # the recorded reset states come back, and an untrained model is far worse at the same episodes
    np.testing.assert_allclose(model.reset_state(np.array([3]))[0].numpy(), episodes[3].states[0])
    untrained = StateDynamics(members=2, num_reset_states=5)
    start, acts = torch.tensor(episodes[0].states[:1]), torch.tensor(episodes[0].actions[None])
    final = torch.tensor(episodes[0].states[-1, model.tracked_dims])
    errors = []
    for candidate in (model, untrained):
        x, goal = candidate.start(start)
        with torch.no_grad():
            for t in range(acts.shape[1] - 1):
                x = candidate.step(x, goal, acts[:, t])
        errors.append(float((x.mean(0)[0] - final).norm()))
    assert errors[0] < 0.3 * errors[1], errors


def test_the_pipeline_stage_trains_it_on_the_data_and_caches_it(tmp_path):
    from test_world_model_pipeline import compose_config

    from rlinf_wm.runners.world_model_pipeline import run_stage

    rng = np.random.default_rng(1)
    write_episodes(tmp_path / "data" / "shard_00000.hdf5",
                   [toy_drawer_episode(rng, i % 5, reach=i % 3 != 0) for i in range(30)])
    cfg = compose_config([f"artifacts_dir={tmp_path}", "progress=false", "stage=state", "train.state.steps=5",
                          "train.state.horizon=4", "train.state.members=2", "train.state.holdout_fraction=0.3"])
    assert run_stage(cfg)["state"]["status"] == "ran"
    metrics = json.loads((tmp_path / "world_model" / "state_model" / "metrics.json").read_text())
    assert metrics["train_episodes"] == 21 and metrics["members"] == 2
    assert load_model(StateDynamics, tmp_path / "world_model" / "state_model" / "model").reset_known.sum() == 5
    assert run_stage(cfg, "state")["state"]["status"] == "cached"
    longer = compose_config([f"artifacts_dir={tmp_path}", "progress=false", "train.state.steps=6",
                             "train.state.horizon=4", "train.state.members=2", "train.state.holdout_fraction=0.3"])
    assert run_stage(longer, "state")["state"]["status"] == "ran"  # other settings: stale
    with pytest.raises(ValueError, match="train.state.steps > 0"):
        run_stage(compose_config([f"artifacts_dir={tmp_path}", "train.state.steps=0"]), "state")


def test_calibration_picks_the_separating_distance_and_needs_both_outcomes():
    distance = np.array([0.01, 0.02, 0.04, 0.05, 0.06])
    threshold, accuracy = calibrate(distance, np.array([True, True, True, False, False]))
    assert threshold == 0.04 and accuracy == 1.0
    with pytest.raises(ValueError, match="successes and failures"):
        calibrate(distance, np.ones(5, bool))


def test_the_tracker_runs_each_env_its_own_steps_and_reports_reaching():
    tracker = StateSuccessTracker(constant_model(-0.01), num_envs=3)
    tracker.reset(np.arange(3), np.array([10, 11, 12]))
    tracker.advance(np.array([0, 2]), np.zeros((2, 4, 4), np.float32), np.array([4, 2]))
    np.testing.assert_allclose(tracker.distance, [0.06, np.inf, 0.08], atol=1e-6)
    tracker.advance(np.array([0]), np.zeros((1, 4, 4), np.float32), np.array([4]))
    assert tracker.reached.tolist() == [True, False, False]
    with pytest.raises(ValueError, match=r"reset ids \[7\]"):
        tracker.reset(np.array([1]), np.array([7]))


def test_with_all_members_the_object_must_reach_the_goal_in_every_members_prediction():
    model = constant_model(-0.01)
    torch.nn.init.constant_(model.nets[1][-1].bias[5:6], 0.005)  # member 1's object moves half as fast
    trackers = {rule: StateSuccessTracker(model, num_envs=1, members=rule) for rule in ("mean", "all")}
    for tracker in trackers.values():
        tracker.reset(np.arange(1), np.array([10]))
    # after 12 steps the object is 2 cm from the goal in member 0, 4 cm in member 1 (success within 3.5 cm)
    reached = {rule: tracker.advance(np.array([0]), np.zeros((1, 13, 4), np.float32), np.array([13]))[0]
               for rule, tracker in trackers.items()}
    assert reached["mean"].tolist() == [False] * 8 + [True] * 5  # the mean distance 0.1 - 0.0075 t: from step 9
    assert reached["all"].tolist() == [False] * 12 + [True]  # member 1's 0.1 - 0.005 t: from step 13
    np.testing.assert_allclose(trackers["all"].distance, [0.035], atol=1e-6)
    start, actions = model.reset_state(np.array([10])), torch.zeros(1, 13, 4)
    np.testing.assert_allclose([float(model.closest_approach(start, actions, rule)) for rule in ("mean", "all")],
                               [0.025, 0.035], atol=1e-6)  # mean: at step 10 (0 and 5 cm); all: at step 13
    with pytest.raises(ValueError, match="state_model_members must be one of"):
        StateSuccessTracker(model, num_envs=1, members="any")


def split_model() -> StateDynamics:
    """Member 0's object moves 1 cm per step towards the goal, member 1's half as fast: after t steps they are
    0.5 t cm apart, each 0.25 t cm from their mean."""
    model = constant_model(-0.01)
    torch.nn.init.constant_(model.nets[1][-1].bias[5:6], 0.005)
    return model


def test_the_tracker_reports_how_far_the_members_objects_spread_in_each_chunk():
    tracker = StateSuccessTracker(split_model(), num_envs=2)
    tracker.reset(np.arange(2), np.array([10, 11]))
    assert np.isnan(tracker.chunk_spread).all()
    tracker.advance(np.array([0, 1]), np.zeros((2, 4, 4), np.float32), np.array([4, 2]))
    np.testing.assert_allclose(tracker.chunk_spread, [0.01, 0.005], atol=1e-6)  # the largest: at the last step run
    tracker.advance(np.array([1]), np.zeros((1, 4, 4), np.float32), np.array([4]))
    np.testing.assert_allclose(tracker.chunk_spread, [0.01, 0.015], atol=1e-6)
    tracker.reset(np.array([1]), np.array([12]))  # a reset starts the members together again
    tracker.advance(np.array([1]), np.zeros((1, 4, 4), np.float32), np.array([1]))
    np.testing.assert_allclose(tracker.chunk_spread[1], 0.0025, atol=1e-6)
    same = StateSuccessTracker(constant_model(-0.01), num_envs=1)
    same.reset(np.arange(1), np.array([10]))
    same.advance(np.array([0]), np.zeros((1, 4, 4), np.float32), np.array([4]))
    assert same.chunk_spread[0] == 0.0  # members that agree do not spread


@pytest.fixture(scope="module")
def wm_dir(tmp_path_factory) -> Path:
    return make_world_model(tmp_path_factory.mktemp("wm"))


def saved(model: StateDynamics, path: Path) -> str:
    return str(save_model_atomic(model, path))


def first_success_chunk(env: WorldModelEnv, chunks: int = 4) -> int | None:
    env.reset(ids=[0, 1], seed=0)
    for chunk in range(chunks):
        step = env.chunk_step(np.zeros((2, CHUNK, 4), np.float32))
        if step.info["success"].all():
            return chunk
    return None


def test_a_state_model_vetoes_successes_until_its_object_reaches_the_goal(wm_dir, tmp_path):
    common = {"world_model_dir": str(wm_dir), "num_envs": 2, "reward_threshold": 0.0, "dtype": "float32"}
    assert first_success_chunk(WorldModelEnv(**common)) == 0  # every frame passes the reward model
    still = WorldModelEnv(**common, state_model_path=saved(constant_model(0.0), tmp_path / "still"))
    assert first_success_chunk(still) is None
    still.reset(ids=[0, 1], seed=0)
    np.testing.assert_allclose(still.chunk_step(np.zeros((2, CHUNK, 4), np.float32)).info["state_distance"],
                               [0.1, 0.1], atol=1e-6)
    # the object reaches 3.5 cm of the goal after 7 steps: success in the chunk that runs step 7
    reaching = saved(constant_model(-0.01), tmp_path / "reaching")
    assert first_success_chunk(WorldModelEnv(**common, state_model_path=reaching)) == (7 - 1) // CHUNK
    # scoring every frame, the success is at the step the object arrives (step 8: 2 cm from the goal, the second
    # step of its chunk), not at the chunk's first frame that the reward model passes
    later = saved(constant_model(-0.01, success_distance=0.025), tmp_path / "later")
    every_frame = WorldModelEnv(**common, state_model_path=later, reward_frames="all")
    assert first_success_chunk(every_frame) == (8 - 1) // CHUNK
    step = every_frame.chunk_step(np.zeros((2, CHUNK, 4), np.float32))  # finished envs keep their counts
    assert step.info["episode_length"].tolist() == [8, 8]
    # with all members: member 1's object moves half as fast and reaches 3.5 cm only after 13 steps
    members = {"state_model_path": saved(split_model(), tmp_path / "split"), "reward_frames": "all"}
    assert first_success_chunk(WorldModelEnv(**common, **members, state_model_members="mean"), 5) == (9 - 1) // CHUNK
    assert first_success_chunk(WorldModelEnv(**common, **members, state_model_members="all"), 8) == (13 - 1) // CHUNK


def test_auto_runs_the_world_models_own_state_model_when_it_has_one(tmp_path):
    root = make_world_model(tmp_path / "wm")
    common = {"world_model_dir": str(root), "num_envs": 2, "reward_threshold": 0.0, "dtype": "float32",
              "state_model_path": "auto"}
    assert first_success_chunk(WorldModelEnv(**common)) == 0  # none trained: frames only
    saved(constant_model(0.0), root / "state_model" / "model")
    assert first_success_chunk(WorldModelEnv(**common)) == 0  # on disk, but world_model.json does not name it
    settings = json.loads((root / "world_model.json").read_text())
    settings["paths"]["state_model"] = "state_model/model"
    (root / "world_model.json").write_text(json.dumps(settings))
    assert first_success_chunk(WorldModelEnv(**common)) is None
    # states inside episodes have no recorded state to start the model from: auto runs without it
    stock = InitialStates.load(root / "initial_states.hdf5")
    InitialStates(frames=stock.frames, instructions=stock.instructions, reset_ids=stock.reset_ids,
                  start_steps=[2] * len(stock)).save(tmp_path / "branched.hdf5")
    assert first_success_chunk(WorldModelEnv(**common, initial_states_path=str(tmp_path / "branched.hdf5"))) == 0
    with pytest.raises(ValueError, match="state_model_path .*start_steps > 0"):
        WorldModelEnv(**{**common, "state_model_path": str(root / "state_model" / "model")},
                      initial_states_path=str(tmp_path / "branched.hdf5"))


def test_a_state_model_must_know_every_initial_states_reset(wm_dir, tmp_path):
    path = saved(constant_model(0.0, reset_ids=(10, 11)), tmp_path / "partial")
    with pytest.raises(ValueError, match=r"state_model_path .*reset ids \[12\]"):
        WorldModelEnv(world_model_dir=str(wm_dir), num_envs=2, dtype="float32", state_model_path=path)


def test_a_state_model_spread_above_the_threshold_halts_the_env_as_a_failure(wm_dir, tmp_path):
    path = saved(split_model(), tmp_path / "split")
    common = {"world_model_dir": str(wm_dir), "num_envs": 2, "reward_threshold": 0.0, "dtype": "float32",
              "state_model_path": path, "reward_frames": "all"}
    halting = WorldModelEnv(**common, state_uncertainty_threshold=0.0125)  # the spread passes it at step 6
    halting.reset(ids=[0, 1], seed=0)
    spreads, halted = [], []
    for _ in range(4):
        step = halting.chunk_step(np.zeros((2, CHUNK, 4), np.float32))
        spreads.append(step.info["state_spread"].copy())
        halted.append(step.info["halted"].copy())
    first_halt = (6 - 1) // CHUNK
    assert [h.all() for h in halted] == [c >= first_halt for c in range(4)]
    assert not step.info["success"].any()  # ended as failures: terminated, not truncated
    assert step.terminated.all() and not step.truncated.any()
    np.testing.assert_allclose(spreads[0], [0.0025 * CHUNK] * 2, atol=1e-6)
    assert np.isnan(spreads[first_halt + 1]).all()  # halted envs are not stepped
    # a threshold the spread never passes changes nothing: success once the mean object reaches the goal
    assert first_success_chunk(WorldModelEnv(**common, state_uncertainty_threshold=1.0), 5) == (9 - 1) // CHUNK
    with pytest.raises(ValueError, match="state_uncertainty_threshold needs a state model"):
        WorldModelEnv(**{**common, "state_model_path": None}, state_uncertainty_threshold=0.01)
    with pytest.raises(ValueError, match="state_uncertainty_threshold must be > 0"):
        WorldModelEnv(**common, state_uncertainty_threshold=0.0)
