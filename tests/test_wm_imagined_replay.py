"""benchmarks/wm_imagined_replay.py: a policy's imagined episodes recorded, replayed in another env, and the false
imagined successes attributed to the reward model or the DiT."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rlinf_wm.envs.base import ChunkStep, Obs
from rlinf_wm.envs.world_model_env import WorldModelEnv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from world_model_fixtures import CHUNK, make_world_model  # noqa: E402

spec = importlib.util.spec_from_file_location("wm_imagined_replay", ROOT / "benchmarks" / "wm_imagined_replay.py")
replay_benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay_benchmark)


class PushEnv:
    """A real env stand-in: success once the summed first action component reaches 1 (chunk_size 2)."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs

    def reset(self, ids) -> Obs:
        self.total = np.zeros(self.num_envs)
        self.success = np.zeros(self.num_envs, bool)
        self.ids = np.asarray(ids)
        return self._obs()

    def chunk_step(self, actions) -> ChunkStep:
        self.total += actions[:, :, 0].sum(axis=1)
        self.success |= self.total >= 1.0
        flags = np.zeros((self.num_envs, actions.shape[1]), bool)
        return ChunkStep(self._obs(), np.zeros(flags.shape, np.float32), flags, flags, {"success": self.success.copy()})

    def _obs(self) -> Obs:
        images = np.zeros((self.num_envs, 2, 2, 3), np.uint8)
        images[..., 0] = (self.total * 100).clip(0, 255)[:, None, None]
        return Obs(images=images, instructions=["push"] * self.num_envs)


def episode(pushes: list[float]) -> dict:
    actions = np.zeros((len(pushes), 2, 4), np.float32)
    actions[:, 0, 0] = pushes
    return {"actions": actions}


def test_replay_counts_real_success_only_within_the_chunks_the_episode_ran():
    episodes = [episode([0.5, 0.5]),        # reaches 1 in its last chunk: a success
                episode([0.5]),             # ends at 0.5: the zero actions after it never push further
                episode([0.2, 0.2, 0.2]),   # never reaches 1
                episode([1.0])]             # success in its first chunk (on the second batch of envs)
    out = replay_benchmark.replay(PushEnv(num_envs=3), [0, 1, 2, 3], episodes)
    assert [e["success"] for e in out] == [True, False, False, True]
    # a frame per chunk the episode ran, after the reset frame
    assert [len(e["frames"]) for e in out] == [3, 2, 4, 2]
    assert out[0]["frames"][-1][0, 0, 0] == 100 and out[1]["frames"][-1][0, 0, 0] == 50


class RecordingPushEnv(PushEnv):
    """PushEnv rendering a frame per step (``info["frames"]``) and ending an episode at its success step."""

    def reset(self, ids) -> Obs:
        self.ended = np.zeros(self.num_envs, bool)
        return super().reset(ids)

    def chunk_step(self, actions) -> ChunkStep:
        frames, terminated = [], np.zeros((self.num_envs, actions.shape[1]), bool)
        for k in range(actions.shape[1]):
            self.total += np.where(self.ended, 0.0, actions[:, k, 0])
            self.success |= self.total >= 1.0
            self.ended |= self.success
            terminated[:, k] = self.ended
            frames.append(self._obs().images)
        info = {"success": self.success.copy(), "frames": np.stack(frames, 1)}
        return ChunkStep(self._obs(), terminated.astype(np.float32), terminated, np.zeros_like(terminated), info)


def test_recorded_replays_are_training_episodes_of_the_steps_the_real_env_ran():
    episodes = [episode([0.5, 0.5]),        # success at its third step (the second chunk's first)
                episode([0.5]),             # one chunk, no success
                episode([1.0, 0.3, 0.3])]   # success at its first step: the real episode ends there
    out = replay_benchmark.replay(RecordingPushEnv(num_envs=2), [4, 5, 6], episodes, record=True)
    recorded = [e["episode"] for e in out]
    assert [r.success for r in recorded] == [True, False, True]
    assert [r.length for r in recorded] == [3, 2, 1]
    assert [r.attrs for r in recorded] == [{"kind": "imagined_replay", "task_id": t} for t in (4, 5, 6)]
    np.testing.assert_array_equal(recorded[0].actions[:, 0], [0.5, 0.0, 0.5])
    # a frame before each step and one after the last: the pushes so far, in the red channel
    np.testing.assert_array_equal(recorded[0].frames[:, 0, 0, 0], [0, 50, 50, 100])
    np.testing.assert_array_equal(recorded[2].frames[:, 0, 0, 0], [0, 100])
    assert recorded[0].dones.tolist() == [False, False, True] and not recorded[1].dones.any()
    for r in recorded:
        r.validate()


def test_false_imagined_successes_are_split_between_reward_model_and_dit():
    imagined = np.array([True, True, True, False, False])
    replayed = np.array([True, False, False, True, False])
    reward_fires_on_real = np.array([True, True, False, False, False])
    assert replay_benchmark.attribute(imagined, replayed, reward_fires_on_real) == {
        "imagined_successes": 3, "false_imagined_successes": 2, "false_by_reward_model": 1, "false_by_dit": 1,
        "missed_imagined_successes": 1}


class FixedPolicy:
    """Pushes by +0.5 on the first action component every step, whatever it sees."""

    def act(self, obs, deterministic, temperature, generator):
        actions = np.zeros((len(obs.instructions), CHUNK, 4), np.float32)
        actions[:, :, 0] = 0.5
        return SimpleNamespace(actions=actions)


@pytest.mark.parametrize("threshold, expect_success", [(-1.0, True), (2.0, False)])
def test_imagined_episodes_record_actions_and_frames_up_to_the_episode_end(tmp_path, threshold, expect_success):
    env = WorldModelEnv(str(make_world_model(tmp_path / "wm")), num_envs=2, max_episode_steps=6,
                        reward_threshold=threshold)
    episodes = replay_benchmark.imagined_episodes(env, FixedPolicy(), [0, 1, 2], seed=0, temperature=1.0)
    assert len(episodes) == 3  # the last round ran with a spare env whose episode is dropped
    chunks = 1 if expect_success else 6 // CHUNK  # every frame scores >= -1: success after the first chunk
    for e in episodes:
        assert e["success"] is expect_success
        assert e["actions"].shape == (chunks, CHUNK, 4) and np.all(e["actions"][..., 0] == 0.5)
        assert e["frames"].shape[0] == chunks + 1


def test_resampling_with_the_rollouts_own_noise_reproduces_its_successes(tmp_path):
    env = WorldModelEnv(str(make_world_model(tmp_path / "wm", seed=2)), num_envs=2, max_episode_steps=8)
    # a threshold between this model's scores, far from each, so successes are mixed and not a rounding matter
    probs, _ = replay_benchmark.run_imagined(env, np.array([0, 1]), np.full((2, 4, CHUNK, 4), 0.5, np.float32), seed=0)
    ordered = np.sort(probs.ravel())
    gap = int(np.argmax(np.diff(ordered[2:-2]))) + 2
    env.reward_threshold = float(ordered[gap : gap + 2].mean())
    episodes = replay_benchmark.imagined_episodes(env, FixedPolicy(), [0, 1], seed=0, temperature=1.0)
    original = [e["success"] for e in episodes]
    assert sorted(original) == [False, True]
    same = replay_benchmark.resampled_successes(env, [0, 1], episodes, seeds=[0, 0])
    assert same.tolist() == [[success] * 2 for success in original]
    # other noise, other rollouts: the same actions do not always end the same way
    other = replay_benchmark.resampled_successes(env, [0, 1], episodes, seeds=[5, 6, 7])
    assert (other != np.array(original)[:, None]).any()


class InvertingTokenizer:
    """A tokenizer stand-in whose reconstruction is the negative image (uint8 [B, 1, H, W, 3] in and out)."""

    def encode(self, frames):
        assert frames.ndim == 5 and frames.shape[1] == 1
        return frames

    def decode_to_uint8(self, latents):
        return 255 - latents


def test_the_real_closed_loop_can_observe_through_the_tokenizer():
    env = replay_benchmark.ThroughTokenizer(PushEnv(num_envs=2), InvertingTokenizer())
    assert env.num_envs == 2  # everything but the frames is the real env's
    obs = env.reset(ids=[0, 1])
    assert (obs.images == 255).all() and obs.instructions == ["push", "push"]
    actions = np.zeros((2, 2, 4), np.float32)
    actions[0, :, 0] = 0.6
    step = env.chunk_step(actions)
    assert step.info["success"].tolist() == [True, False]
    assert step.obs.images[0, 0, 0, 0] == 255 - 120 and step.obs.images[1, 0, 0, 0] == 255


def test_imagined_episodes_record_the_ensembles_disagreement_per_chunk(tmp_path):
    import shutil

    wm = make_world_model(tmp_path / "wm")
    member = Path(shutil.copytree(wm, tmp_path / "member"))
    shutil.rmtree(member / "dit")
    shutil.copytree(make_world_model(tmp_path / "other", seed=1) / "dit", member / "dit")  # other weights, same data
    env = WorldModelEnv(str(wm), num_envs=2, max_episode_steps=6, reward_threshold=2.0,
                        ensemble_world_model_dirs=[str(member)])
    episodes = replay_benchmark.imagined_episodes(env, FixedPolicy(), [0, 1], seed=0, temperature=1.0)
    for e in episodes:
        assert e["disagreement"].shape == (6 // CHUNK,) and (e["disagreement"] > 0).all()
    single = WorldModelEnv(str(wm), num_envs=2, max_episode_steps=6, reward_threshold=2.0)
    alone = replay_benchmark.imagined_episodes(single, FixedPolicy(), [0], 0, 1.0)[0]
    # no ensemble and no state model: both disagreements are NaN
    assert np.isnan(alone["disagreement"]).all() and np.isnan(alone["state_spread"]).all()


def test_disagreement_report_counts_what_each_threshold_would_halt():
    # imagined successes 0-3 (0, 1 true; 2, 3 false), a failure 4; false successes disagree more
    spread = [[0.1, 0.2], [0.1], [0.5, 0.9], [0.3, 0.6], [0.2, 0.2, 0.2]]
    imagined = [{"state_spread": np.array(s, np.float32)} for s in spread]  # any disagreement key reads the same
    i_success = np.array([True, True, True, True, False])
    r_success = np.array([True, True, False, False, False])
    report = replay_benchmark.disagreement_report(imagined, i_success, r_success, "state_spread")["state_spread"]
    assert report["auc_false_vs_true_successes"] == 1.0
    assert report["auc_at_success_chunk"] == 1.0  # last chunks: true 0.2, 0.1; false 0.9, 0.6
    assert report["largest_mean"]["false_successes"] == pytest.approx(0.75)
    p50 = report["halted_at_chunk_quantile"]["p50"]  # median of the 10 chunks: 0.2; largest <= it: episodes 0, 1, 4
    assert p50["threshold"] == pytest.approx(0.2)
    assert (p50["true_successes_kept"], p50["false_successes_kept"], p50["episodes_kept"]) == (2, 0, 3)
    assert replay_benchmark.auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    nan = [{"disagreement": np.full(2, np.nan, np.float32)}]
    assert replay_benchmark.disagreement_report(nan, np.array([True]), np.array([True]), "disagreement") == {}
