import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rlinf_wm.config.policy_schema import EvalRunConfig, SFTRunConfig, TinyVLAConfig
from rlinf_wm.config.validate import ConfigError, validate
from rlinf_wm.data.trajectories import load_episodes, write_episodes
from rlinf_wm.envs import ChunkEnv, ChunkStep, Obs
from rlinf_wm.models.policy import PolicyOutput, TinyVLA
from rlinf_wm.runners.evaluate import run_evaluation, split_episodes, summarize
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.utils.stats import wilson_interval
from rlinf_wm.workers.eval_worker import run_episodes

CONFIG_DIR = Path(__file__).resolve().parents[1] / "examples" / "embodiment" / "config"


# --- statistics ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "successes, trials, expected",
    [  # reference values: statsmodels proportion_confint(method="wilson")
        (50, 100, (0.403832, 0.596168)),
        (1, 10, (0.017875, 0.404155)),
        (0, 10, (0.0, 0.277533)),
        (10, 10, (0.722467, 1.0)),
    ],
)
def test_wilson_interval_matches_reference_values(successes, trials, expected):
    low, high = wilson_interval(successes, trials)
    assert low == pytest.approx(expected[0], abs=1e-5) and high == pytest.approx(expected[1], abs=1e-5)


def test_wilson_interval_rejects_bad_counts():
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_split_episodes_covers_every_episode_once():
    parts = split_episodes(11, 3)
    assert [len(p) for p in parts] in ([4, 3, 4], [3, 4, 4], [4, 4, 3])
    assert [i for p in parts for i in p] == list(range(11))
    assert split_episodes(2, 5) == [range(0, 1), range(1, 2)]


# --- the episode loop on a scripted env ------------------------------------------------------------------
class CountdownEnv(ChunkEnv):
    """Env ``b`` reaches success after ``3 * (reset_id % 4) + 2`` steps; reset id 3 never succeeds."""

    action_dim = 2
    num_initial_states = 4

    def __init__(self, num_envs: int, max_episode_steps: int = 12, report_success: bool = True,
                 step_frames: bool = False):
        self.num_envs, self.max_episode_steps, self.report_success = num_envs, max_episode_steps, report_success
        self.step_frames = step_frames  # info["frames"]: pixel (0, 0, 0) of step i's frame = the step count after it
        self.resets: list[list[int]] = []

    def reset(self, ids=None, seed=None) -> Obs:
        self.ids = np.asarray(ids)
        self.resets.append(self.ids.tolist())
        self.t = np.zeros(self.num_envs, int)
        self.ended = np.zeros(self.num_envs, bool)
        self.succeeded = np.zeros(self.num_envs, bool)
        return self._obs()

    def _obs(self) -> Obs:
        images = np.zeros((self.num_envs, 8, 8, 3), np.uint8)
        images[:, 0, 0, 0] = np.minimum(self.t, 255)
        # Per-env instructions, as multi-task envs (LIBERO) give: recorded episodes must keep their own.
        return Obs(images=images, instructions=[f"count to {i}" for i in self.ids % self.num_initial_states])

    def chunk_step(self, actions) -> ChunkStep:
        k = actions.shape[1]
        terminated = np.zeros((self.num_envs, k), bool)
        truncated = np.zeros((self.num_envs, k), bool)
        frames = np.zeros((self.num_envs, k, 8, 8, 3), np.uint8)
        for b in range(self.num_envs):
            for i in range(k):
                frames[b, i:, 0, 0, 0] = min(self.t[b] + (not self.ended[b]), 255)
                if self.ended[b]:
                    terminated[b, i], truncated[b, i] = self.succeeded[b], not self.succeeded[b]
                    continue
                self.t[b] += 1
                if self.ids[b] % 4 != 3 and self.t[b] == 3 * (self.ids[b] % 4) + 2:
                    self.succeeded[b] = self.ended[b] = terminated[b, i] = True
                elif self.t[b] >= self.max_episode_steps:
                    self.ended[b] = truncated[b, i] = True
        info = {"success": self.succeeded.copy()} if self.report_success else {}
        if self.step_frames:
            info["frames"] = frames
        return ChunkStep(self._obs(), np.zeros((self.num_envs, k), np.float32), terminated, truncated, info)


class ConstantPolicy:
    chunk_size = 4

    def act(self, obs, deterministic=False, temperature=1.0, generator=None) -> PolicyOutput:
        shape = (obs.batch_size, self.chunk_size, 2)
        return PolicyOutput(np.zeros(shape, np.float32), np.zeros(shape, np.int64), np.zeros(shape, np.float32))


@pytest.mark.parametrize("report_success", [True, False])
def test_run_episodes_counts_success_and_length_per_episode(report_success):
    env = CountdownEnv(num_envs=3, report_success=report_success)
    result = run_episodes(env, ConstantPolicy(), reset_ids=[0, 1, 2, 3, 4], num_videos=2)
    # Two rounds of 3 envs; the short last round pads with a repeated id whose result is dropped.
    assert env.resets == [[0, 1, 2], [3, 4, 4]]
    assert [ep["reset_id"] for ep in result["episodes"]] == [0, 1, 2, 3, 4]
    assert [ep["initial_state"] for ep in result["episodes"]] == [0, 1, 2, 3, 0]
    assert [ep["success"] for ep in result["episodes"]] == [True, True, True, False, True]
    assert [ep["length"] for ep in result["episodes"]] == [2, 5, 8, 12, 2]
    # Videos: initial frame + one frame per chunk until that env ended.
    assert [len(v) for v in result["videos"]] == [2, 3]
    assert result["videos"][1][-1][0, 0, 0] == 5


def test_recorded_episodes_hold_every_step_and_round_trip_through_hdf5(tmp_path):
    env = CountdownEnv(num_envs=3, step_frames=True)
    result = run_episodes(env, ConstantPolicy(), reset_ids=[0, 1, 2, 3, 4], record_episodes=True)
    recorded = result["recorded"]
    assert [ep.length for ep in recorded] == [2, 5, 8, 12, 2]
    for ep, summary in zip(recorded, result["episodes"]):
        assert len(ep.frames) == ep.length + 1  # the reset frame, then one per executed step
        assert ep.frames[:, 0, 0, 0].tolist() == list(range(ep.length + 1))
        assert ep.actions.shape == (ep.length, 2)
        assert ep.success == summary["success"] and bool(ep.dones[-1]) == ep.success and not ep.dones[:-1].any()
        assert ep.attrs == {"kind": "policy", "task_id": summary["initial_state"]}
        assert ep.instruction == f"count to {summary['initial_state']}"
    write_episodes(tmp_path / "episodes" / "shard_00000.hdf5", recorded)
    loaded = load_episodes(tmp_path / "episodes")
    assert [ep.length for ep in loaded] == [2, 5, 8, 12, 2]
    np.testing.assert_array_equal(loaded[3].frames, recorded[3].frames)
    with pytest.raises(ValueError, match=r"info\['frames'\]"):
        run_episodes(CountdownEnv(num_envs=1), ConstantPolicy(), reset_ids=[0], record_episodes=True)


def test_summary_statistics():
    episodes = [{"reset_id": i % 2, "success": i < 3, "length": 10 + i} for i in range(4)]
    summary = summarize(episodes)
    assert summary["success_rate"] == 0.75 and summary["num_successes"] == 3
    assert summary["mean_episode_length"] == 11.5 and summary["mean_success_length"] == 11.0
    assert summary["num_distinct_initial_states"] == 2
    # state 0: episodes 0 and 2 succeed; state 1: episode 1 succeeds, episode 3 fails
    assert summary["initial_states_by_outcome"] == {"always": 1, "sometimes": 1, "never": 0}
    never = summarize([{"reset_id": 5, "success": False, "length": 3}] * 2)
    assert never["initial_states_by_outcome"] == {"always": 0, "sometimes": 0, "never": 1}
    assert summary["success_rate_ci95"] == list(wilson_interval(3, 4))


# --- the real simulator -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = TinyVLAConfig(chunk_size=4, num_bins=16, encoder_channels=[8, 16], image_grid=2, hidden_dim=32,
                           num_layers=1, num_heads=2, image_size=32, action_dim=4, action_q01=[-1.0] * 4,
                           action_q99=[1.0] * 4)
    directory = tmp_path_factory.mktemp("policy") / "model"
    save_model_atomic(TinyVLA(config), directory)
    return directory


def eval_run(policy_dir, output_dir, num_workers: int, **eval_overrides) -> EvalRunConfig:
    env = {"env_type": "metaworld", "task": "drawer-open-v3", "num_envs": 2, "image_size": [32, 32],
           "max_episode_steps": 12}
    evaluation = {"num_episodes": 3, "num_workers": num_workers, "cpus_per_worker": 0.5, "num_videos": 1,
                  "output_dir": str(output_dir), "first_reset_id": 5}
    evaluation.update(eval_overrides)
    return validate({"task": "drawer-open-v3", "artifacts_dir": str(output_dir), "policy_path": str(policy_dir),
                     "env": {"eval": env}, "eval": evaluation}, EvalRunConfig)


def check_summary(summary: dict, output_dir: Path) -> None:
    assert json.loads((output_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["num_episodes"] == 3 and len(summary["episodes"]) == 3
    assert [ep["reset_id"] for ep in summary["episodes"]] == [5, 6, 7]
    assert [ep["initial_state"] for ep in summary["episodes"]] == [5, 6, 7]  # < 50: not wrapped
    assert summary["num_distinct_initial_states"] == 3
    assert [ep["episode"] for ep in summary["episodes"]] == [0, 1, 2]
    assert all(1 <= ep["length"] <= 12 for ep in summary["episodes"])
    low, high = summary["success_rate_ci95"]
    assert 0.0 <= low <= summary["success_rate"] <= high <= 1.0
    assert summary["success_rate"] == sum(ep["success"] for ep in summary["episodes"]) / 3
    assert len(summary["videos"]) == 1 and Path(summary["videos"][0]).is_file()


@pytest.fixture(scope="module")
def in_process_run(policy_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("eval_local")
    return run_evaluation(eval_run(policy_dir, output_dir, num_workers=0), show_progress=False), output_dir


def test_evaluation_in_metaworld_writes_a_well_formed_summary(in_process_run):
    summary, output_dir = in_process_run
    check_summary(summary, output_dir)
    # An untrained policy does not open the drawer in 12 steps: every episode is truncated.
    assert summary["mean_episode_length"] == 12.0


@pytest.mark.ray
@pytest.mark.slow
def test_evaluation_on_ray_workers_matches_the_in_process_run(policy_dir, in_process_run, tmp_path):
    import ray

    try:
        distributed = run_evaluation(eval_run(policy_dir, tmp_path / "ray", num_workers=2), show_progress=False)
    finally:
        ray.shutdown()
    check_summary(distributed, tmp_path / "ray")
    # Deterministic policy and resets by id: the same episodes whichever worker ran them.
    local, _ = in_process_run
    assert distributed["episodes"] == local["episodes"]


# --- configs ------------------------------------------------------------------------------------------
def compose(name: str, overrides: list[str] | None = None) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = hydra_compose(config_name=name, overrides=overrides or [])
    return OmegaConf.to_container(cfg, resolve=True)


def test_shipped_sft_and_eval_configs_validate():
    sft = validate(compose("sft_metaworld_drawer_open"), SFTRunConfig)
    assert sft.data_dir == "outputs/drawer-open-v3/data" and sft.output_dir == "outputs/drawer-open-v3/sft"
    assert sft.model.image_size is None  # filled from the data
    evaluation = validate(compose("eval_metaworld_drawer_open"), EvalRunConfig)
    assert evaluation.policy_path == "outputs/drawer-open-v3/sft/model"
    assert evaluation.env.eval.env_type == "metaworld" and evaluation.env.eval.task == "drawer-open-v3"
    assert evaluation.eval.num_episodes >= 100


def test_bad_eval_config_names_the_key():
    with pytest.raises(ConfigError, match=r"eval\.num_episode"):
        validate(compose("eval_metaworld_drawer_open", ["+eval.num_episode=3"]), EvalRunConfig)
    with pytest.raises(ConfigError, match=r"env\.eval\.task"):
        validate(compose("eval_metaworld_drawer_open", ["env.eval.task=drawer-close-v3"]), EvalRunConfig)
    # success in the world model is imagined: evaluate.py reports real-simulator success only
    with pytest.raises(ConfigError, match=r"env\.eval\.env_type"):
        validate(compose("eval_metaworld_drawer_open", ["env@env.eval=wm_metaworld_drawer_open"]), EvalRunConfig)
    with pytest.raises(ConfigError, match=r"sft\.num_demos"):
        validate(compose("sft_metaworld_drawer_open", ["sft.num_demos=0"]), SFTRunConfig)
