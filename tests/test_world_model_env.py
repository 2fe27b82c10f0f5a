"""WorldModelEnv with tiny random models: grouping, seeding, rewards, skipping finished envs, offload, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from world_model_fixtures import CHUNK, COND, INSTRUCTIONS, NUM_STATES, NUM_STEPS, SIZE, make_world_model

from rlinf_wm.data.action_inputs import DiTActionInputs
from rlinf_wm.data.initial_states import InitialStates
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode, write_episodes
from rlinf_wm.envs import make_env
from rlinf_wm.envs.world_model_env import WorldModelEnv
from rlinf_wm.utils.compilation import compiler_available

B = 4
NEVER = 1.01  # a success threshold no probability reaches
ALWAYS = 0.0


@pytest.fixture(scope="module")
def wm_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_world_model(tmp_path_factory.mktemp("wm") / "world_model")


def make(wm_dir, **kwargs) -> WorldModelEnv:
    kwargs.setdefault("num_envs", B)
    kwargs.setdefault("reward_threshold", NEVER)
    kwargs.setdefault("dtype", "float32")  # exact comparisons below; "auto" would depend on the CPU
    return WorldModelEnv(world_model_dir=str(wm_dir), **kwargs)


def actions(seed=0, batch=B, k=CHUNK):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, k, 4)).astype(np.float32)


def rollout(env, ids, seed, chunks=2):
    obs = [env.reset(ids=ids, seed=seed).images]
    for c in range(chunks):
        obs.append(env.chunk_step(actions(c, env.num_envs)).obs.images)
    return np.stack(obs)


class ScriptedScores:
    """Replaces the reward model's scores: call ``i`` returns ``probs[i]`` (one per scored window, in row order)."""

    def __init__(self, env, probs):
        self.env, self.probs, self.windows = env, list(probs), []

    def __call__(self, windows):
        self.windows.append(windows.numpy())
        self.env.timings.scored_frames += len(windows)
        return np.asarray(self.probs.pop(0), np.float32)


def test_settings_come_from_world_model_json(wm_dir):
    env = make(wm_dir)
    assert (env.chunk_size, env.num_cond_latent_frames, env.action_scaler) == (CHUNK, COND, 20.0)
    assert env.sampler.num_steps == NUM_STEPS and env.sampler.guidance == 0.0
    assert env.task == "drawer-open-v3" and env.num_initial_states == NUM_STATES
    override = make(wm_dir, sampler={"num_steps": 1, "solver": "euler"}, action_scaler=10.0)
    assert override.sampler.num_steps == 1 and override.sampler.solver == "euler" and override.action_scaler == 10.0
    assert override.sampler.sigma_max == 200.0  # untouched keys keep the trained value
    with pytest.raises(ValueError, match="unknown sampler keys"):
        make(wm_dir, sampler={"steps": 3})


def test_reset_ids_pick_states_and_groups_repeat_them(wm_dir):
    env = make(wm_dir)
    states = InitialStates.load(wm_dir / "initial_states.hdf5")
    obs = env.reset(ids=[1, 1, 2, 2 + NUM_STATES], seed=0)  # ids wrap around
    np.testing.assert_array_equal(obs.images[0], states.frames[1, -1])
    np.testing.assert_array_equal(obs.images[0], obs.images[1])
    np.testing.assert_array_equal(obs.images[2], obs.images[3])
    assert not np.array_equal(obs.images[1], obs.images[2])
    assert obs.instructions == [INSTRUCTIONS[1], INSTRUCTIONS[1], INSTRUCTIONS[2], INSTRUCTIONS[2]]
    # a group shares its start but not its noise: the same actions give different imagined futures
    step = env.chunk_step(np.repeat(actions(0, 1), B, axis=0))
    assert not np.array_equal(step.obs.images[0], step.obs.images[1])
    np.testing.assert_array_equal(step.info["reset_ids"], [1, 1, 2, 2])


def test_reset_rejects_bad_ids(wm_dir):
    env = make(wm_dir)
    with pytest.raises(ValueError, match="one per env"):
        env.reset(ids=[0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        env.reset(ids=[0, -1, 0, 0])


def test_same_seed_same_rollout_different_seed_different(wm_dir):
    env = make(wm_dir)
    first = rollout(env, [0, 0, 1, 2], seed=7)
    again = rollout(env, [0, 0, 1, 2], seed=7)
    other = rollout(env, [0, 0, 1, 2], seed=8)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[1:], other[1:])
    np.testing.assert_array_equal(first[0], other[0])  # same reset frames
    # random ids are reproducible from the seed too
    assert env.reset(seed=3).images.tobytes() == env.reset(seed=3).images.tobytes()


@pytest.mark.parametrize("reencode", [False, True])
def test_rollout_does_not_depend_on_micro_batching(wm_dir, reencode):
    whole = make(wm_dir, batch_size=B, reencode_context=reencode)
    single = make(wm_dir, batch_size=1, reencode_context=reencode)
    a, b = rollout(whole, [0, 1, 2, 0], seed=1), rollout(single, [0, 1, 2, 0], seed=1)
    # float summation order only; re-encoding passes it through uint8 rounding once per chunk
    assert np.abs(a.astype(int) - b.astype(int)).max() <= (2 if reencode else 1)
    if not reencode:
        torch.testing.assert_close(whole._context, single._context, atol=1e-4, rtol=1e-4)


def test_context_slides_in_latent_space_or_is_reencoded_by_default(wm_dir):
    env = make(wm_dir, reencode_context=False)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    before = env._context.clone()
    obs = env.chunk_step(actions()).obs
    # with CHUNK == COND the whole window is new; the newest latent is what the policy sees
    assert not torch.equal(env._context, before)
    decoded = env.tokenizer.decode_to_uint8(env._context[:, :, -1:].float())[:, 0].numpy()
    np.testing.assert_array_equal(decoded, obs.images)
    reencoded = make(wm_dir)  # per-frame tokenizer: re-encoding is the default
    assert reencoded.reencode_context
    reencoded.reset(ids=[0, 1, 2, 0], seed=0)
    reencoded.chunk_step(actions())
    expected = env.tokenizer.encode(torch.from_numpy(np.stack([obs.images] * 1, 1)))[:, :, -1]
    torch.testing.assert_close(reencoded._context[:, :, -1], expected)


def test_success_terminates_with_reward_one_at_the_scored_step(wm_dir):
    env = make(wm_dir, reward_threshold=ALWAYS)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    step = env.chunk_step(actions())
    # reward_frames="last": the chunk's last frame is scored
    np.testing.assert_array_equal(step.rewards, np.tile([0.0, 1.0], (B, 1)))
    np.testing.assert_array_equal(step.terminated, np.tile([False, True], (B, 1)))
    assert not step.truncated.any() and step.info["success"].all()
    np.testing.assert_array_equal(step.info["episode_length"], [CHUNK] * B)
    calls = env.timings.dit_calls
    after = env.chunk_step(actions(1))
    assert after.terminated.all() and not after.rewards.any() and env.timings.dit_calls == calls
    every = make(wm_dir, reward_threshold=ALWAYS, reward_frames="all")
    every.reset(ids=[0, 1, 2, 0], seed=0)
    step = every.chunk_step(actions())
    np.testing.assert_array_equal(step.rewards, np.tile([1.0, 0.0], (B, 1)))
    assert step.terminated.all() and (step.info["episode_length"] == 1).all()


def test_success_consecutive_needs_a_streak_that_may_span_chunks(wm_dir):
    env = make(wm_dir, reward_threshold=0.5, success_consecutive=2)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    # chunk-end scores: env 0 high, high (a streak across chunks); envs 1 and 3 high, low, high, high (the broken
    # streak starts again); env 2 never high
    env._frames.score = ScriptedScores(env, [[0.9, 0.9, 0.1, 0.9], [0.9, 0.1, 0.1, 0.1], [0.9, 0.1, 0.9], [0.9, 0.1, 0.9]])
    first = env.chunk_step(actions(0))
    assert not first.terminated.any() and not first.rewards.any()
    second = env.chunk_step(actions(1))
    np.testing.assert_array_equal(second.terminated[:, -1], [True, False, False, False])
    np.testing.assert_array_equal(second.rewards[:, -1], [1.0, 0.0, 0.0, 0.0])
    third = env.chunk_step(actions(2))  # env 0 is done: three rows scored
    np.testing.assert_array_equal(third.terminated[:, -1], [True, False, False, False])
    fourth = env.chunk_step(actions(3))
    np.testing.assert_array_equal(fourth.info["success"], [True, True, False, True])
    np.testing.assert_array_equal(fourth.rewards[:, -1], [0.0, 1.0, 0.0, 1.0])
    env.reset(ids=[0, 1, 2, 0], seed=0)  # a reset clears the streak
    env._frames.score = ScriptedScores(env, [[0.9, 0.1, 0.1, 0.1]])
    assert not env.chunk_step(actions(0)).terminated.any()


def test_truncation_at_max_episode_steps_mid_chunk(wm_dir):
    env = make(wm_dir, max_episode_steps=3, reencode_context=False)  # decode counts without re-encoding
    env.reset(ids=[0, 1, 2, 0], seed=0)
    first = env.chunk_step(actions(0))
    assert not first.done.any()
    second = env.chunk_step(actions(1))
    # one step of the second chunk remains: truncated at step 0, flags stay set
    np.testing.assert_array_equal(second.truncated, np.ones((B, CHUNK), bool))
    assert not second.terminated.any() and not second.rewards.any()
    np.testing.assert_array_equal(second.info["episode_length"], [3] * B)
    # the observation is the frame after the last executed step (chunk frame 0, decoded alone)
    assert env.timings.decoded_frames == 2 * B
    calls = env.timings.dit_calls
    env.chunk_step(actions(2))
    assert env.timings.dit_calls == calls


@pytest.mark.parametrize("reencode, frames_per_env", [(False, 1), (True, 2)])  # re-encoding decodes the window
def test_finished_envs_cost_nothing(wm_dir, reencode, frames_per_env):
    env = make(wm_dir, reward_threshold=0.5, reencode_context=reencode)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    env._frames.score = ScriptedScores(env, [[0.9, 0.1, 0.9, 0.1], [0.1, 0.1], [0.9, 0.9]])
    env.timings.clear()
    step = env.chunk_step(actions(0))
    np.testing.assert_array_equal(step.done, [True, False, True, False])
    assert (env.timings.dit_calls, env.timings.dit_rows) == (NUM_STEPS, NUM_STEPS * B)
    env.timings.clear()
    step = env.chunk_step(actions(1))
    # only the two running envs reach the DiT and the decoder
    assert (env.timings.dit_calls, env.timings.dit_rows) == (NUM_STEPS, NUM_STEPS * 2)
    assert env.timings.decoded_frames == 2 * frames_per_env
    assert step.terminated[[0, 2]].all() and not step.rewards[[0, 2]].any()
    env.timings.clear()
    step = env.chunk_step(actions(2))
    assert step.done.all() and step.info["success"].all()
    env.timings.clear()
    env.chunk_step(actions(3))
    assert env.timings.dit_calls == 0 and env.timings.decoded_frames == 0 and env.timings.scored_frames == 0


def test_micro_batches_split_dit_calls(wm_dir):
    env = make(wm_dir, batch_size=3)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    env.timings.clear()
    env.chunk_step(actions())
    assert (env.timings.dit_calls, env.timings.dit_rows) == (2 * NUM_STEPS, NUM_STEPS * B)


@pytest.mark.parametrize("guidance, rows_per_call", [(0.0, B), (2.0, 2 * B)])
def test_cfg_runs_both_branches_in_one_call(wm_dir, guidance, rows_per_call):
    env = make(wm_dir, sampler={"guidance": guidance, "num_steps": 3})
    env.reset(ids=[0, 1, 2, 0], seed=0)
    env.timings.clear()
    env.chunk_step(actions())
    assert env.timings.dit_calls == 3
    assert env.timings.dit_rows == 3 * rows_per_call


def test_relative_rewards_sum_to_the_change_in_success_probability(wm_dir):
    env = make(wm_dir, reward_type="relative", reward_frames="all", max_episode_steps=4)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    start = np.array([env._frames.initial_prob(i) for i in (0, 1, 2, 0)])
    total = np.zeros(B)
    for c in range(2):
        step = env.chunk_step(actions(c))
        total += step.rewards.sum(1)
    assert step.truncated[:, -1].all()
    np.testing.assert_allclose(total, step.info["success_prob"] - start, atol=1e-6)
    assert np.abs(total).max() > 0


def test_multi_frame_reward_model_stacks_previous_frames(tmp_path):
    root = make_world_model(tmp_path / "wm2", reward_frames=2)
    env = WorldModelEnv(str(root), num_envs=2, reward_threshold=NEVER, dtype="float32")
    reset = env.reset(ids=[0, 1], seed=0)
    scores = ScriptedScores(env, [[0.1, 0.1], [0.1, 0.1]])
    env._frames.score = scores
    first = env.chunk_step(actions(0, 2)).obs
    second = env.chunk_step(actions(1, 2)).obs
    # "last" scores chunk frame K-1 stacked with frame K-2 (CHUNK = 2: both generated)
    assert scores.windows[0].shape == (2, 2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(scores.windows[0][:, 1], first.images)
    np.testing.assert_array_equal(scores.windows[1][:, 1], second.images)
    all_frames = WorldModelEnv(str(root), num_envs=2, reward_threshold=NEVER, dtype="float32", reward_frames="all")
    all_frames.reset(ids=[0, 1], seed=0)
    scores = ScriptedScores(all_frames, [[0.1] * 4])
    all_frames._frames.score = scores
    all_frames.chunk_step(actions(0, 2))
    # the first generated frame is stacked after the reset frame
    np.testing.assert_array_equal(scores.windows[0][0::2, 0], reset.images)


def test_a_branched_state_stacks_its_last_frame_before_the_first_generated_one(tmp_path):
    root = make_world_model(tmp_path / "wm2", reward_frames=2)
    stock = InitialStates.load(root / "initial_states.hdf5")
    frames = np.random.default_rng(0).integers(0, 256, stock.frames.shape, dtype=np.uint8)  # distinct frames
    InitialStates(frames=frames, instructions=stock.instructions, start_steps=[3] * len(stock)).save(tmp_path / "b.hdf5")
    env = WorldModelEnv(str(root), num_envs=2, reward_threshold=NEVER, dtype="float32", reward_frames="all",
                        initial_states_path=str(tmp_path / "b.hdf5"))
    reset = env.reset(ids=[0, 1], seed=0)
    np.testing.assert_array_equal(reset.images, frames[[0, 1], -1])
    scores = ScriptedScores(env, [[0.1] * 2 * CHUNK])
    env._frames.score = scores
    env.chunk_step(actions(0, 2))
    # the first generated frame of each env is scored after the state's last frame, not an earlier one
    np.testing.assert_array_equal(scores.windows[0][0::CHUNK, 0], frames[[0, 1], -1])


def record_dit_actions(env, monkeypatch) -> list[np.ndarray]:
    """The action inputs of every sampler run of ``env``, in call order."""
    seen, sample = [], env.sampler.sample

    def recording(model, x, mask, dit_actions, **kwargs):
        seen.append(dit_actions.float().numpy())
        return sample(model, x, mask, dit_actions, **kwargs)

    monkeypatch.setattr(env.sampler, "sample", recording)
    return seen


def test_a_dit_trained_on_running_sums_gets_them_from_reset_or_the_branch_point(tmp_path, monkeypatch):
    root = make_world_model(tmp_path / "wm_sum", action_integral_scale=0.5)
    env = WorldModelEnv(str(root), num_envs=2, reward_threshold=NEVER, dtype="float32")
    seen = record_dit_actions(env, monkeypatch)
    inputs = DiTActionInputs(env.stats, 20.0, 0.5)
    first, second = actions(0, 2), actions(1, 2)
    env.reset(ids=[0, 1], seed=0)
    env.chunk_step(first)
    env.chunk_step(second)
    np.testing.assert_allclose(np.concatenate(seen, axis=1), inputs(np.concatenate([first, second], axis=1)),
                               rtol=1e-5, atol=1e-5)
    env.reset_envs([1], ids=[0])  # env 1 starts over from 0, env 0 goes on from its sum
    env.chunk_step(first)
    np.testing.assert_allclose(seen[-1][1], inputs(first[1:])[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(seen[-1][0], inputs(first[:1], (first[0] + second[0]).sum(0)[None])[0],
                               rtol=1e-5, atol=1e-5)

    stock = InitialStates.load(root / "initial_states.hdf5")
    sums = np.arange(len(stock) * 4, dtype=np.float64).reshape(len(stock), 4) / 10
    InitialStates(frames=stock.frames, instructions=stock.instructions, start_steps=[3] * len(stock),
                  action_sums=sums).save(tmp_path / "branched.hdf5")
    env = WorldModelEnv(str(root), num_envs=2, reward_threshold=NEVER, dtype="float32", initial_states_path=str(tmp_path / "branched.hdf5"))
    seen = record_dit_actions(env, monkeypatch)
    env.reset(ids=[2, 1], seed=0)
    env.chunk_step(first)
    np.testing.assert_allclose(seen[-1], inputs(first, sums[[2, 1]]), rtol=1e-5, atol=1e-5)
    # a state inside an episode whose sum is unknown cannot start a DiT that needs it
    InitialStates(frames=stock.frames, instructions=stock.instructions,
                  start_steps=[3] * len(stock)).save(tmp_path / "unknown.hdf5")
    env = WorldModelEnv(str(root), num_envs=2, reward_threshold=NEVER, dtype="float32", initial_states_path=str(tmp_path / "unknown.hdf5"))
    with pytest.raises(ValueError, match="action_sums"):
        env.reset(ids=[0, 1])


@pytest.mark.parametrize("disagreement, extra_calls_per_chunk", [("mean", 2), ("sample", NUM_STEPS)])
def test_an_ensemble_of_the_env_dit_with_itself_agrees_and_changes_nothing(wm_dir, disagreement, extra_calls_per_chunk):
    alone = make(wm_dir)
    paired = make(wm_dir, ensemble_world_model_dirs=[str(wm_dir)], disagreement=disagreement)
    # mean: the env's trained DiT and the member's, one pass each; sample: the member's sampler run
    assert len(paired.ensemble) == (2 if disagreement == "mean" else 1)
    # mean shares the env's own trained DiT instead of loading it again: one DiT more, not two
    assert len(paired.ensemble.dits) == 1 and paired.ensemble.dits[0] is not paired.dit
    expected = rollout(alone, [0, 1, 2, 0], seed=3)
    assert "disagreement" not in alone.chunk_step(actions(5)).info
    np.testing.assert_array_equal(rollout(paired, [0, 1, 2, 0], seed=3), expected)
    step = paired.chunk_step(actions(5))
    np.testing.assert_array_equal(step.info["disagreement"], np.zeros(B, np.float32))
    assert "halted" not in step.info  # no threshold: disagreement is only reported
    assert paired.timings.dit_calls == alone.timings.dit_calls + 3 * extra_calls_per_chunk


def test_ensemble_disagreement_is_the_largest_rms_difference_of_two_members():
    from rlinf_wm.envs.world_model_ensemble import ensemble_disagreement

    predictions = torch.zeros(3, 2, 4, 1, 2, 2)
    predictions[1, 0] = 1.0  # row 0: member 1 is 1 away from members 0 and 2
    predictions[2, 1, 0] = 2.0  # row 1: member 2 is 2 off member 0 in a quarter of the elements (RMS 1)...
    predictions[1, 1, :2] = -0.5  # ...member 1 is -0.5 off it in half; members 1 and 2: (4 x 2.5^2 + 4 x 0.5^2) / 16
    np.testing.assert_allclose(ensemble_disagreement(predictions).numpy(), [1.0, np.sqrt(26 / 16)], rtol=1e-6)


@pytest.fixture(scope="module")
def member_dir(wm_dir, tmp_path_factory) -> Path:
    """The env's world model with a DiT of other weights: an ensemble member that disagrees."""
    import shutil

    root = tmp_path_factory.mktemp("member")
    member = Path(shutil.copytree(wm_dir, root / "member"))
    other = make_world_model(root / "other", seed=1)
    shutil.rmtree(member / "dit")
    shutil.copytree(other / "dit", member / "dit")
    return member


@pytest.mark.parametrize("disagreement", ["mean", "sample"])
def test_the_env_goes_on_with_its_own_dits_chunks_beside_a_disagreeing_member(wm_dir, member_dir, disagreement):
    expected = rollout(make(wm_dir), [0, 1, 2, 0], seed=3, chunks=3)
    env = make(wm_dir, ensemble_world_model_dirs=[str(member_dir)], disagreement=disagreement)
    np.testing.assert_array_equal(rollout(env, [0, 1, 2, 0], seed=3, chunks=3), expected)
    assert (env.chunk_step(actions(3)).info["disagreement"] > 0).all()


def halting_env(wm_dir, member_dir, **kwargs):
    """An env whose every env would succeed in the first chunk, and the disagreement of that chunk per env."""
    probe = make(wm_dir, ensemble_world_model_dirs=[str(member_dir)], reward_threshold=ALWAYS, **kwargs)
    probe.reset(ids=[0, 1, 2, 0], seed=0)
    step = probe.chunk_step(actions())
    assert step.info["success"].all()
    spread = step.info["disagreement"]
    assert (spread > 0).all()
    cut = float(np.sort(spread)[1] + np.sort(spread)[2]) / 2  # halts the two envs that disagree most
    env = make(wm_dir, ensemble_world_model_dirs=[str(member_dir)], reward_threshold=ALWAYS,
               uncertainty_threshold=cut, **kwargs)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    return env, spread > cut


def test_disagreement_above_the_threshold_ends_the_episode_as_a_failure(wm_dir, member_dir):
    env, halted = halting_env(wm_dir, member_dir, batch_size=3)  # the halted envs span two micro-batches
    step = env.chunk_step(actions())
    np.testing.assert_array_equal(step.info["halted"], halted)
    np.testing.assert_array_equal(step.info["success"], ~halted)
    np.testing.assert_array_equal(step.rewards.sum(1), (~halted).astype(np.float32))  # no reward for a halt
    assert step.terminated[:, -1].all() and not step.truncated.any()
    assert np.isnan(step.info["success_prob"][halted]).all() and not np.isnan(step.info["success_prob"][~halted]).any()
    np.testing.assert_array_equal(step.info["episode_length"], [CHUNK] * B)
    calls = env.timings.dit_calls
    after = env.chunk_step(actions(1))  # every env is done: nothing runs, halts stay terminated failures
    assert env.timings.dit_calls == calls and not after.rewards.any()
    assert after.terminated.all() and not after.truncated.any()
    np.testing.assert_array_equal(after.info["halted"], halted)
    first_halted = int(np.flatnonzero(halted)[0])
    env.uncertainty_threshold = 1e9  # no new halts from here on
    env.reset_envs([first_halted])  # clears that env's halt only
    np.testing.assert_array_equal(env.chunk_step(actions()).info["halted"][halted], [False, True])
    env.reset(ids=[0, 1, 2, 0], seed=0)  # clears every halt
    assert not env.chunk_step(actions()).info["halted"].any()


def test_a_halt_with_relative_rewards_returns_what_a_failure_returns(wm_dir, member_dir):
    env, halted = halting_env(wm_dir, member_dir, reward_type="relative")
    reset_probs = env._rule.last_prob.copy()
    step = env.chunk_step(actions())
    np.testing.assert_allclose(step.rewards.sum(1)[halted], -reset_probs[halted])  # scored as probability 0


def test_ensemble_settings_are_checked(wm_dir, tmp_path):
    import shutil

    with pytest.raises(ValueError, match="uncertainty_threshold needs ensemble_world_model_dirs"):
        make(wm_dir, uncertainty_threshold=1.0)
    with pytest.raises(ValueError, match="disagreement must be one of"):
        make(wm_dir, ensemble_world_model_dirs=[str(wm_dir)], disagreement="median")
    with pytest.raises(ValueError, match="uncertainty_threshold must be > 0"):
        make(wm_dir, ensemble_world_model_dirs=[str(wm_dir)], uncertainty_threshold=0.0)
    with pytest.raises(FileNotFoundError, match="ensemble_world_model_dirs: .*nowhere"):
        make(wm_dir, ensemble_world_model_dirs=[str(tmp_path / "nowhere")])
    sums = make_world_model(tmp_path / "running_sums", action_integral_scale=0.5)
    with pytest.raises(ValueError, match=r"running_sums does not fit.*action_integral_scale=0.5 but .* has 0.0"):
        make(wm_dir, ensemble_world_model_dirs=[str(sums)])
    other_data = make_world_model(tmp_path / "other_data", seed=1)
    with pytest.raises(ValueError, match="other_data does not fit.*differs from the env's action statistics"):
        make(wm_dir, ensemble_world_model_dirs=[str(other_data)])
    # an env running a student needs the members' students
    student = Path(shutil.copytree(wm_dir, tmp_path / "student"))
    settings = json.loads((student / "world_model.json").read_text())
    settings["paths"]["distilled_dit"] = "dit/model"
    settings["distilled_sampler"] = {**settings["sampler"], "num_steps": 1}
    (student / "world_model.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="no distilled DiT"):
        make(student, distilled=True, ensemble_world_model_dirs=[str(wm_dir)], disagreement="sample")
    assert len(make(student, distilled=True, ensemble_world_model_dirs=[str(student)], disagreement="sample").ensemble) == 1
    # the means come from the trained DiTs, which every world model has
    assert len(make(student, distilled=True, ensemble_world_model_dirs=[str(wm_dir)]).ensemble) == 2


def test_offload_round_trip(wm_dir):
    env = make(wm_dir)
    expected = rollout(env, [0, 1, 2, 0], seed=4)
    env.reset(ids=[0, 1, 2, 0], seed=4)
    env.offload()
    assert not env.is_onloaded and env.model_devices() == {"cpu"}
    assert env._context.device.type == "cpu"
    with pytest.raises(RuntimeError, match="offloaded"):
        env.chunk_step(actions(0))
    with pytest.raises(RuntimeError, match="offloaded"):
        env.reset(ids=[0, 1, 2, 0])
    env.onload()
    assert env.is_onloaded
    got = [env.chunk_step(actions(c)).obs.images for c in range(2)]
    np.testing.assert_array_equal(np.stack(got), expected[1:])


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((B, CHUNK)), "shape"),
        (np.zeros((B + 1, CHUNK, 4)), "shape"),
        (np.zeros((B, CHUNK, 3)), "shape"),
        (np.full((B, CHUNK, 4), np.nan), "NaN"),
        (np.zeros((B, CHUNK + 1, 4)), "chunk_size"),
    ],
)
def test_bad_actions_are_rejected(wm_dir, bad, message):
    env = make(wm_dir)
    env.reset(ids=[0, 1, 2, 0], seed=0)
    with pytest.raises(ValueError, match=message):
        env.chunk_step(bad)


def test_step_before_reset_and_inconsistent_parts_fail_clearly(wm_dir, tmp_path):
    with pytest.raises(RuntimeError, match="before reset"):
        make(wm_dir).chunk_step(actions())
    with pytest.raises(ValueError, match="multiple of|exceeds"):
        make(wm_dir, chunk_size=20)
    from rlinf_wm.data.statistics import ActionStatistics

    ActionStatistics.from_actions(np.zeros((4, 3))).save(tmp_path / "stats3.json")
    with pytest.raises(ValueError, match="action_dim=4 but the action statistics have 3"):
        make(wm_dir, stats_path=str(tmp_path / "stats3.json"))
    with pytest.raises(FileNotFoundError, match="train the world model first"):
        make(tmp_path / "missing")


def test_initial_states_file_round_trip_and_trajectory_directory(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 6, SIZE, SIZE, 3), dtype=np.uint8)
    episodes = [
        Episode(frames=frames[i], actions=np.zeros((5, 4), np.float32), rewards=np.zeros(5, np.float32),
                dones=np.zeros(5, bool), success=False, instruction=f"task {i}", task="t", attrs={"task_id": 7 + i})
        for i in range(2)
    ]
    states = InitialStates.from_episodes(episodes, 3)
    assert states.frames.shape == (2, 3, SIZE, SIZE, 3) and (states.frames[:, 2] == frames[:, 0]).all()
    np.testing.assert_array_equal(states.reset_ids, [7, 8])
    states.save(tmp_path / "states.hdf5")
    loaded = InitialStates.load(tmp_path / "states.hdf5")
    np.testing.assert_array_equal(loaded.frames, states.frames)
    assert loaded.instructions == ["task 0", "task 1"] and loaded.tasks == ["t", "t"]
    np.testing.assert_array_equal(loaded.reset_ids, [7, 8])
    write_episodes(tmp_path / "data" / "shard_0.hdf5", episodes)
    from_dir = InitialStates.load(tmp_path / "data")
    assert from_dir.frames.shape == (2, 1, SIZE, SIZE, 3) and from_dir.instructions == ["task 0", "task 1"]
    (tmp_path / "bad.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.hdf5"):
        InitialStates.load(tmp_path / "bad.hdf5")
    with pytest.raises(FileNotFoundError):
        InitialStates.load(tmp_path / "none.hdf5")
    with pytest.raises(ValueError, match="uint8"):
        InitialStates(frames=np.zeros((1, 1, 4, 4, 3), np.float32), instructions=["x"])


def test_branched_states_come_from_inside_episodes_before_success(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 11, SIZE, SIZE, 3), dtype=np.uint8)
    rewards = np.zeros((2, 10), np.float32)
    rewards[1, 3] = 1.0  # episode 1: the action at step 3 solves the task, so frames 4.. show success
    recorded = rng.uniform(-1, 1, (2, 10, 4)).astype(np.float32)
    episodes = [
        Episode(frames=frames[i], actions=recorded[i], rewards=rewards[i], dones=np.zeros(10, bool),
                success=bool(i), instruction=f"task {i}", task="t", attrs={"task_id": 7 + i})
        for i in range(2)
    ]
    wide = ActionStatistics.from_actions(recorded.reshape(-1, 4))  # the data's own range: nothing is clipped
    states = InitialStates.branched(episodes, num_frames=2, states_per_episode=50, max_start_step=6, statistics=wide,
                                    seed=0)
    assert len(states) == 100
    first, second = states.start_steps[:50], states.start_steps[50:]
    assert set(first.tolist()) == set(range(7)) and set(second.tolist()) == set(range(4))  # <= max / <= solving step
    for state, start in enumerate(states.start_steps):
        episode = state // 50
        expected = frames[episode, [max(start - 1, 0), start]]
        np.testing.assert_array_equal(states.frames[state], expected)
        np.testing.assert_allclose(states.action_sums[state], recorded[episode, :start].sum(0), atol=1e-6)
    np.testing.assert_array_equal(np.unique(states.reset_ids), [7, 8])
    states.save(tmp_path / "branched.hdf5")
    loaded = InitialStates.load(tmp_path / "branched.hdf5")
    np.testing.assert_array_equal(loaded.start_steps, states.start_steps)
    np.testing.assert_array_equal(loaded.action_sums, states.action_sums)
    with pytest.raises(ValueError, match="start_steps"):
        InitialStates(frames=states.frames[:1], instructions=["x"], start_steps=[-1])
    # a narrower range clips the actions before they are summed, as the DiT's running-sum inputs do
    narrow = ActionStatistics.from_actions(recorded.reshape(-1, 4) * 0.5)
    clipped = InitialStates.branched(episodes, num_frames=2, states_per_episode=50, max_start_step=6, seed=0,
                                     statistics=narrow)
    np.testing.assert_array_equal(clipped.start_steps, states.start_steps)
    inputs = DiTActionInputs(narrow, action_scaler=1.0, integral_scale=1.0)
    for state, start in enumerate(clipped.start_steps):
        expected = inputs.advance(np.zeros(4), recorded[state // 50, :start])
        np.testing.assert_allclose(clipped.action_sums[state], expected, atol=1e-9)
    assert np.abs(clipped.action_sums - states.action_sums).max() > 0.1


def test_an_env_from_a_branched_state_has_the_remaining_steps_only(wm_dir, tmp_path):
    stock = InitialStates.load(wm_dir / "initial_states.hdf5")
    starts = np.array([0, 2] + [0] * (len(stock) - 2))
    InitialStates(frames=stock.frames, instructions=stock.instructions, start_steps=starts).save(tmp_path / "b.hdf5")
    env = make(wm_dir, max_episode_steps=2 * CHUNK + 1, initial_states_path=str(tmp_path / "b.hdf5"))
    env.reset(ids=[0, 1, 0, 1], seed=0)
    first = env.chunk_step(actions(0))
    assert not first.truncated.any()
    np.testing.assert_array_equal(first.info["episode_length"], [CHUNK, CHUNK + 2] * 2)
    second = env.chunk_step(actions(1))
    # the envs from the state at step 2 had one step left: truncated in the second chunk, the others not yet
    assert second.truncated[[1, 3]].all() and not second.truncated[[0, 2]].any()
    np.testing.assert_array_equal(second.info["episode_length"], [2 * CHUNK, 2 * CHUNK + 1] * 2)
    with pytest.raises(ValueError, match="max_episode_steps=2"):
        make(wm_dir, max_episode_steps=2, initial_states_path=str(tmp_path / "b.hdf5"))


def test_branch_script_writes_states_with_the_world_models_frame_count(wm_dir, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "world_model" / "branch_initial_states.py"
    spec = importlib.util.spec_from_file_location("branch_initial_states", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    frames = np.random.default_rng(0).integers(0, 256, (3, 9, SIZE, SIZE, 3), dtype=np.uint8)
    write_episodes(tmp_path / "episodes" / "shard_0.hdf5", [
        Episode(frames=frames[i], actions=np.zeros((8, 4), np.float32), rewards=np.zeros(8, np.float32),
                dones=np.zeros(8, bool), success=False, instruction="open", task="t") for i in range(3)])
    output = script.main(["--world-model-dir", str(wm_dir), "--episodes", str(tmp_path / "episodes"),
                          "--states-per-episode", "2", "--max-start-step", "5", "--output", str(tmp_path / "b.hdf5")])
    states = InitialStates.load(output)
    assert len(states) == 6 and states.num_frames == InitialStates.load(wm_dir / "initial_states.hdf5").num_frames
    assert states.start_steps.max() <= 5
    env = make(wm_dir, initial_states_path=str(output))
    assert env.num_initial_states == 6


def test_env_yaml_derives_every_path_from_world_model_dir_and_builds(wm_dir):
    from rlinf_wm.config.validate import validate
    from rlinf_wm.config.world_model_env_schema import WorldModelEnvConfig

    yaml_path = Path(__file__).resolve().parents[1] / "examples/embodiment/config/env/wm_metaworld_drawer_open.yaml"
    env_yaml = OmegaConf.load(yaml_path)
    root = OmegaConf.create({"task": "drawer-open-v3", "artifacts_dir": "outputs/x", "env": {"train": env_yaml, "eval": env_yaml}})
    for section in ("train", "eval"):
        resolved = OmegaConf.to_container(root.env[section], resolve=True)
        assert resolved["world_model_dir"] == "outputs/x/world_model"
        assert resolved["compile"] == "auto"
        for key in ("tokenizer_path", "reward_model_path", "stats_path", "initial_states_path"):
            assert resolved[key].startswith("outputs/x/world_model/"), key
        assert resolved["dit_path"] is None and resolved["distilled"] == "auto"  # world_model.json's DiT
    # command-line style overrides of the sampler and window keys
    overrides = OmegaConf.from_dotlist([
        f"env.train.world_model_dir={wm_dir}", "env.train.sampler.num_steps=1", "env.train.sampler.guidance=1.5",
        "env.train.sampler.guidance_interval=[0.0,0.5]", "env.train.num_envs=2", "env.train.batch_size=2", "env.train.reward_threshold=1.01",
        "env.train.compile=false",  # the YAML's auto would compile for one chunk (see test_a_compiled_env_...)
    ])
    merged = OmegaConf.merge(root, overrides)
    cfg = validate(merged.env.train, WorldModelEnvConfig, "env.train")
    assert cfg.sampler.num_steps == 1 and cfg.sampler.guidance == 1.5
    kwargs = cfg.env_kwargs()
    env = make_env(kwargs.pop("env_type"), **kwargs)
    assert env.sampler.num_steps == 1 and env.chunk_size == CHUNK and env.num_envs == 2
    assert env.sampler.guidance == 1.5 and env.sampler.guidance_interval == (0.0, 0.5)
    env.reset(ids=[0, 1], seed=0)
    env.timings.clear()
    env.chunk_step(actions(0, 2))
    # the one solver step (s = 0.995) lies outside the guidance interval: one branch for the 2 envs
    assert (env.timings.dit_calls, env.timings.dit_rows) == (1, 2)


def test_schema_rejects_bad_values():
    from rlinf_wm.config.validate import ConfigError, validate
    from rlinf_wm.config.world_model_env_schema import WorldModelEnvConfig

    base = {"env_type": "world_model", "world_model_dir": "x"}
    for key, value, match in [
        ("reward_type", "dense", "reward_type"),
        ("num_envs", 0, "num_envs"),
        ("sampler", {"num_steps": 0}, "sampler.num_steps"),
        ("sampler", {"solver": "rk4"}, "sampler.solver"),
        ("sampler", {"guidance_interval": [0.6, 0.2]}, "sampler.guidance_interval"),
        ("sampler", {"guidance_interval": [0.5]}, "sampler.guidance_interval"),
        ("chunk_size", 0, "chunk_size"),
        ("dtype", "float64x", "dtype"),
        ("success_consecutive", 0, "success_consecutive"),
        ("disagreement", "median", "disagreement"),
        ("uncertainty_threshold", 0.5, "needs ensemble_world_model_dirs"),
        ("state_uncertainty_threshold", 0.5, "needs state_model_path"),
    ]:
        with pytest.raises(ConfigError, match=match):
            validate({**base, key: value}, WorldModelEnvConfig, "env.train")
    with pytest.raises(ConfigError, match="uncertainty_threshold: must be > 0"):
        validate({**base, "ensemble_world_model_dirs": ["d"], "uncertainty_threshold": -1.0}, WorldModelEnvConfig,
                 "env.train")
    with pytest.raises(ConfigError, match="state_uncertainty_threshold: must be > 0"):
        validate({**base, "state_model_path": "auto", "state_uncertainty_threshold": 0.0}, WorldModelEnvConfig,
                 "env.train")
    ok = validate(base, WorldModelEnvConfig, "env.train")
    assert json.dumps(ok.env_kwargs())  # plain data, passable to a Ray actor


def test_bad_success_settings_are_rejected_before_any_model_loads(tmp_path):
    missing = str(tmp_path / "no_world_model_here")  # loading it would fail with another error
    with pytest.raises(ValueError, match="reward_type must be one of"):
        WorldModelEnv(missing, reward_type="dense")
    with pytest.raises(ValueError, match="success_consecutive must be >= 1"):
        WorldModelEnv(missing, success_consecutive=0)


@pytest.mark.skipif(not compiler_available("cpu"), reason="torch.compile on CPU needs a C++ compiler")
def test_a_compiled_env_generates_the_eager_frames(wm_dir):
    compiled, eager = make(wm_dir, compile=True), make(wm_dir)
    assert compiled.dit.compile_forward and compiled._frames.compiled_tokenizer
    assert not eager.dit.compile_forward and not eager._frames.compiled_tokenizer
    a, b = rollout(compiled, [0, 1, 2, 0], seed=1), rollout(eager, [0, 1, 2, 0], seed=1)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # fused kernels round differently
    with pytest.raises(ValueError, match="compile must be one of"):
        make(wm_dir, compile="on")


def test_bfloat16_runs_the_dit_in_it_and_the_other_models_under_autocast_close_to_float32(wm_dir, monkeypatch):
    half, full = make(wm_dir, dtype="bfloat16"), make(wm_dir)
    assert {p.dtype for p in half.dit.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in (half.tokenizer, half.reward_model) for p in m.parameters()} == {torch.float32}
    calls = {"decode_to_uint8": [], "encode": [], "forward": []}

    def record(model, name):
        original = getattr(model, name)
        monkeypatch.setattr(model, name, lambda *args: calls[name].append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None) or original(*args))

    for model, name in ((half.tokenizer, "decode_to_uint8"), (half.tokenizer, "encode"), (half.reward_model, "forward")):
        record(model, name)
    a, b = rollout(half, [0, 1, 2, 0], seed=1, chunks=1), rollout(full, [0, 1, 2, 0], seed=1, chunks=1)
    assert calls["decode_to_uint8"] == [torch.bfloat16]
    assert calls["encode"] and set(calls["encode"]) == {torch.bfloat16}  # reset states and the re-encoded context
    assert calls["forward"] and set(calls["forward"]) == {torch.bfloat16}  # reset frames and the chunk's last
    np.testing.assert_array_equal(a[0], b[0])  # the same reset frames
    # the same noise and actions: the generated frames differ by bfloat16 rounding only
    assert np.abs(a[1].astype(int) - b[1].astype(int)).mean() < 2.0
    assert not np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="dtype must be one of"):
        make(wm_dir, dtype="half")


def test_steps_to_decode_cover_the_scored_frames_their_history_and_the_new_context():
    from types import SimpleNamespace

    from rlinf_wm.envs.world_model_frames import WorldModelFrames

    frames = SimpleNamespace(reward_model=SimpleNamespace(num_frames=2), chunk_size=4, num_cond_latent_frames=2)
    ends = np.array([4, 2])  # the second env's episode ends after 2 of the chunk's 4 steps
    scored, wanted = WorldModelFrames.steps_to_decode(frames, ends, score_every_step=False, reencode_context=False)
    assert scored == [[3], [1]] and wanted == [[2, 3], [0, 1]]
    scored, wanted = WorldModelFrames.steps_to_decode(frames, ends, score_every_step=True, reencode_context=True)
    assert scored == [[0, 1, 2, 3], [0, 1]]
    assert wanted == [[0, 1, 2, 3], [0, 1, 2, 3]]  # re-encoding needs the chunk's last 2 frames for every env


def test_success_rule_waits_for_the_state_model_and_scores_a_halt_as_probability_zero():
    from rlinf_wm.envs.world_model_success import SuccessRule

    rule = SuccessRule(2, "relative", threshold=0.5, consecutive=1)
    rule.reset(np.arange(2), reset_probs=[0.2, 0.3])
    rewards, terminated = np.zeros((2, 4), np.float32), np.zeros((2, 4), bool)
    # env 0: the frames succeed at step 1, the state model's object only reaches the goal at step 3
    last = rule.settle(0, [(1, 0.8), (3, 0.9)], 4, rewards, terminated, np.array([False, False, False, True]))
    assert last == 3 and rule.success[0] and terminated[0].tolist() == [False, False, False, True]
    np.testing.assert_allclose(rewards[0], [0.0, 0.6, 0.0, 0.1])  # the return is p_final - p_reset
    rule.halt(1, 2, rewards, terminated)
    assert rule.halted[1] and not rule.success[1] and terminated[1].tolist() == [False, False, True, True]
    np.testing.assert_allclose(rewards[1], [0.0, 0.0, -0.3, 0.0])
    assert rule.ended.all()
    with pytest.raises(ValueError, match="success_consecutive"):
        SuccessRule(1, "success_once", 0.5, consecutive=0)
