"""World-model pipeline end to end on a tiny synthetic task made here: a square the actions push around.

Covers: every stage writes its outputs under world_model_dir, re-running skips cached stages, an interrupted DiT run
resumes from its checkpoint, the evaluation reports the model and both baselines per horizon, config errors name
their dotted key, and the Cosmos-2B DiT shape builds from the config (on the meta device).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from rlinf_wm.config.validate import ConfigError, validate
from rlinf_wm.config.world_model_config import WorldModelConfig
from rlinf_wm.data.action_inputs import DiTActionInputs
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode, read_episodes, write_episodes

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "examples" / "embodiment" / "config")
SIZE = 32


def render(position: np.ndarray) -> np.ndarray:
    """A red 6x6 square on a shaded background with a blue goal strip on the right."""
    frame = np.zeros((SIZE, SIZE, 3), np.uint8)
    frame[:] = np.linspace(40, 120, SIZE, dtype=np.uint8)[:, None, None]
    frame[:, SIZE - 4 :, 2] = 220
    x, y = np.round(position).astype(int)
    frame[y : y + 6, x : x + 6] = (230, 30, 30)
    return frame


def make_episode(rng: np.random.Generator, index: int, max_steps: int = 24) -> Episode:
    """Pushed right, the square reaches the goal (success: reward 1, episode ends); random pushes fail."""
    position = np.array([3.0, rng.uniform(4, SIZE - 10)])
    succeed = index % 4 != 3
    frames, actions, rewards = [render(position)], [], []
    for _ in range(max_steps):
        if succeed:
            action = np.array([0.6 + 0.2 * rng.standard_normal(), 0.5 * rng.standard_normal(), 0.0, 0.0])
        else:
            action = rng.uniform(-1, 1, 4)
        action = np.clip(action, -1, 1).astype(np.float32)
        position = np.clip(position + 2.0 * action[:2], 0, SIZE - 6)
        frames.append(render(position))
        actions.append(action)
        reached = position[0] >= SIZE - 12
        rewards.append(float(reached))
        if reached:
            break
    t = len(actions)
    return Episode(
        frames=np.stack(frames), actions=np.stack(actions), rewards=np.array(rewards, np.float32),
        dones=np.eye(t, dtype=bool)[-1], success=bool(rewards[-1]), instruction="push the square to the goal",
        task="square-push", seed=index,
    )


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models gain nothing from threads, and on a shared machine oversubscription slows them many-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("square")
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, i) for i in range(12)]
    write_episodes(root / "data" / "shard_00000.hdf5", episodes)
    ActionStatistics.from_actions(np.concatenate([ep.actions for ep in episodes])).save(
        root / "data" / "dataset_statistics.json"
    )
    return root


def tiny_overrides(root: Path) -> list[str]:
    return [
        f"artifacts_dir={root}",
        "task=square-push",
        "progress=false",
        "holdout_fraction=0.25",
        # tokenizer: 32x32 frames -> 4 x 8 x 8 latents
        f"++tokenizer.image_size={SIZE}",
        "++tokenizer.latent_channels=4",
        "++tokenizer.block_out_channels=[8,16]",
        "++tokenizer.norm_num_groups=8",
        "++tokenizer.kind=per_frame_kl",
        "++train.tokenizer.steps=15",
        "++train.tokenizer.batch_size=8",
        "++train.tokenizer.eval_every=1000",
        "++train.tokenizer.checkpoint_every=1000",
        "++train.tokenizer.stats_max_frames=64",
        "++train.tokenizer.eval_max_frames=32",
        "++train.tokenizer.warmup_steps=5",
        "++train.dit.compile=false",  # compiling costs more than these few steps (tests/test_compilation.py covers it)
        # reward model
        f"++reward_model.image_size={SIZE}",
        "++reward_model.hidden_sizes=[8,16]",
        "++reward_model.depths=[1,1]",
        "++reward_model.embedding_size=8",
        "++reward_model.num_frames=1",
        "train.reward.holdout_fraction=0.25",
        "++train.reward.steps=20",
        "++train.reward.batch_size=8",
        "++train.reward.eval_every=1000",
        "++train.reward.checkpoint_every=1000",
        # DiT: 2 cond + 2 predicted latent frames
        "dit.num_layers=1",
        "dit.num_attention_heads=2",
        "dit.attention_head_dim=24",
        "dit.adaln_lora_dim=8",
        "dit.text_embed_dim=8",
        "dit.action_hidden_dim=32",
        "train.dit.num_cond_latent_frames=2",
        "train.dit.num_pred_latent_frames=2",
        "train.dit.steps=6",
        "train.dit.batch_size=4",
        "train.dit.warmup_steps=2",
        "train.dit.checkpoint_every=3",
        "train.dit.sample_every=4",
        "train.dit.sample_steps=2",
        "train.dit.eval_every=4",
        "sampler.num_steps=2",
        "train.distill.steps=0",  # the one test of the student trains its own (test_distill_stage_...)
        "train.state.steps=0",  # the square has no simulator state (tests/test_state_dynamics.py trains one)
        # evaluation: 3 chunks of 2 frames
        "eval.num_chunks=3",
        "eval.horizons=[2,6]",
        "eval.start_stride=4",
        "eval.max_rollouts=12",
        "eval.batch_size=6",
        "eval.num_videos=2",
    ]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(config_name="world_model_metaworld_drawer_open", overrides=overrides)
    return validate(cfg, WorldModelConfig)


@pytest.fixture(scope="module")
def trained(dataset):
    """The whole pipeline once (module scope: the later tests reuse its outputs)."""
    from rlinf_wm.runners.world_model_pipeline import run_stage

    cfg = compose_config(tiny_overrides(dataset))
    report = run_stage(cfg, "all")
    return cfg, report


def test_all_stages_write_under_world_model_dir(trained, dataset):
    cfg, report = trained
    root = Path(cfg.world_model_dir)
    assert root == dataset / "world_model"
    assert {name: r["status"] for name, r in report.items()} == {
        "tokenizer": "ran", "encode": "ran", "dit": "ran", "reward": "ran"
    }
    for part in ("tokenizer", "dit", "reward_model"):
        assert (root / part / "model" / "config.json").is_file()
        assert (root / part / "model" / "model.safetensors").is_file()
        assert (root / part / "metrics.json").is_file()
    assert (root / "dit" / "tensorboard").is_dir()
    assert json.loads((root / "dataset_statistics.json").read_text()) == json.loads(
        (dataset / "data" / "dataset_statistics.json").read_text()
    )
    with h5py.File(root / "latents.hdf5") as f:
        assert f.attrs["num_episodes"] == 12
        assert f["episodes/ep_00000/latents"].shape[:1] == (4,)  # latent channels
    with h5py.File(root / "initial_states.hdf5") as f:
        assert f["frames"].shape == (12, 2, SIZE, SIZE, 3)  # first frame repeated for 2 conditioning frames
        assert (f["frames"][0, 0] == f["frames"][0, 1]).all()
    settings = json.loads((root / "world_model.json").read_text())
    assert settings["num_cond_latent_frames"] == 2 and settings["num_cond_frames"] == 2
    assert settings["chunk_size"] == 2 and settings["action_dim"] == 4
    assert settings["action_scaler"] == 20.0
    assert settings["latent_shape"] == [4, 8, 8]
    assert settings["sampler"]["num_steps"] == 2 and settings["sampler"]["guidance_interval"] == [0.05, 1.0]
    for key in ("tokenizer", "dit", "reward_model", "initial_states", "dataset_statistics"):
        assert (root / settings["paths"][key]).exists(), key
    timings = json.loads((root / "timings.json").read_text())
    assert set(timings) == {"tokenizer", "encode", "dit", "reward"}


def test_rerun_skips_cached_stages_and_force_reruns(trained):
    from rlinf_wm.runners.world_model_pipeline import run_stage

    cfg, _ = trained
    weights = Path(cfg.world_model_dir) / "dit" / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    (Path(cfg.world_model_dir) / "stage_settings.json").unlink()  # as a world model made by older code
    report = run_stage(cfg, "all")
    assert {r["status"] for r in report.values()} == {"cached"}
    assert weights.stat().st_mtime_ns == before
    # from then on its settings are known: a later change of them is seen
    recorded = json.loads((Path(cfg.world_model_dir) / "stage_settings.json").read_text())
    assert set(recorded) == set(report) and recorded["tokenizer"]["train"]["steps"] == cfg.train.tokenizer.steps
    # a forced single stage reruns from scratch
    report = run_stage(replace(cfg, force=True), "reward")
    assert report["reward"]["status"] == "ran"


def test_each_stage_reruns_when_a_setting_of_its_output_changes_and_not_for_bookkeeping(trained, tmp_path):
    """A caller (the quickstart) may rerun the pipeline on its output after any config change: only the stages made
    with other settings, and those reading their outputs, run again."""
    import shutil

    from rlinf_wm.runners.world_model_pipeline import run_stage

    cfg, _ = trained
    copy = replace(cfg, world_model_dir=str(tmp_path / "world_model"))
    shutil.copytree(cfg.world_model_dir, copy.world_model_dir)  # mtimes kept

    def statuses(changed):
        return {name: r["status"] for name, r in run_stage(changed, "all").items()}

    def train(**sections):
        return replace(copy, train=replace(copy.train, **sections))

    tokenizer, reward = copy.train.tokenizer, copy.train.reward
    quieter = train(tokenizer=replace(tokenizer, log_every=7, checkpoint_every=99), reward=replace(reward, eval_every=3))
    assert set(statuses(quieter).values()) == {"cached"}
    assert statuses(train(reward=replace(reward, steps=reward.steps + 2))) == {
        "tokenizer": "cached", "encode": "cached", "dit": "cached", "reward": "ran"}
    # the tokenizer's steps: the latents it encodes change, and with them everything read from them
    longer = train(tokenizer=replace(tokenizer, steps=tokenizer.steps + 2), reward=replace(reward, steps=reward.steps + 2))
    assert set(statuses(longer).values()) == {"ran"}
    assert set(statuses(longer).values()) == {"cached"}


def test_outputs_whose_record_holds_fewer_settings_stay_current_when_those_agree(trained, tmp_path):
    """Older code recorded only some settings per stage: its outputs stay current (and get the full record) when the
    recorded ones agree, and are stale when one of them differs."""
    import shutil

    from rlinf_wm.runners.world_model_pipeline import run_stage

    cfg, _ = trained
    copy = replace(cfg, world_model_dir=str(tmp_path / "world_model"))
    shutil.copytree(cfg.world_model_dir, copy.world_model_dir)
    settings_file = Path(copy.world_model_dir) / "stage_settings.json"
    full = json.loads(settings_file.read_text())
    older = {"tokenizer": {"refine_from": None}, "encode": {}, "dit": {"refine_from": None},
             "reward": {"generated_episodes": False}}
    settings_file.write_text(json.dumps(older))
    assert {r["status"] for r in run_stage(copy, "all").values()} == {"cached"}
    assert json.loads(settings_file.read_text()) == full
    settings_file.write_text(json.dumps({**older, "dit": {"refine_from": "another/world_model"}}))
    assert run_stage(copy, "dit")["dit"]["status"] == "ran"


def test_interrupted_dit_run_resumes_from_its_checkpoint(trained, monkeypatch, tmp_path):
    import shutil

    from rlinf_wm.runners import train_dit as train_dit_module
    from rlinf_wm.runners.world_model_pipeline import run_stage

    cfg, _ = trained
    dit_dir = Path(cfg.world_model_dir) / "dit"
    real_loss = train_dit_module.flow_matching_loss
    calls = {"n": 0}

    def crashing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interruption")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_dit_module, "flow_matching_loss", crashing_loss)

    # the finished DiT counts as made with other settings: the run starts afresh, crashes, and must then resume
    settings_file = Path(cfg.world_model_dir) / "stage_settings.json"
    recorded = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**recorded, "dit": {"refine_from": "another/world_model"}}))
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, "dit")
    assert not (dit_dir / "metrics.json").exists()
    assert sorted(p.name for p in (dit_dir / "checkpoints").iterdir()) == ["step_0000003"]

    calls["n"] = -100  # no more crashes
    # with another setting (here the EMA's decay) the interrupted run is not resumed but started afresh
    interrupted = tmp_path / "interrupted"
    shutil.copytree(dit_dir, interrupted / "dit")
    shutil.copy(settings_file, interrupted / "stage_settings.json")
    other = replace(cfg, train=replace(cfg.train, dit=replace(cfg.train.dit, ema_decay=0.99)))
    assert run_stage(other, "dit")["dit"]["status"] == "ran"
    assert json.loads((dit_dir / "metrics.json").read_text())["resumed_from_step"] == 0
    shutil.rmtree(dit_dir)
    shutil.copytree(interrupted / "dit", dit_dir)
    shutil.copy(interrupted / "stage_settings.json", settings_file)
    report = run_stage(cfg, "dit")
    assert report["dit"]["status"] == "ran"
    metrics = json.loads((dit_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3 and metrics["steps"] == 6
    assert (dit_dir / "model" / "model.safetensors").is_file()


def test_shipped_dit_is_the_warmed_up_average_not_the_initialisation(trained):
    """The EMA ramps its decay up: after 6 steps at ema_decay 0.999 the shipped DiT is close to the trained weights.
    (A constant decay kept 0.999^6 of the initialisation: its zero-initialised output layer stayed ~0.)"""
    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.utils.checkpoint import load_model

    cfg, _ = trained
    assert cfg.train.dit.ema_decay == 0.999
    dit_dir = Path(cfg.world_model_dir) / "dit"
    shipped = load_model(ActionDiT, dit_dir / "model")
    latest = sorted((dit_dir / "checkpoints").iterdir())[-1]  # raw weights of the last step
    raw = load_model(ActionDiT, latest / "model")
    # proj_out starts at zero (reset_parameters), so its size measures how much training the average holds.
    shipped_w, raw_w = shipped.transformer.proj_out.weight, raw.transformer.proj_out.weight
    assert raw_w.norm() > 0
    assert shipped_w.norm() > 0.5 * raw_w.norm()
    assert (shipped_w - raw_w).norm() < raw_w.norm()


def test_eval_reports_model_and_both_baselines_per_horizon(trained):
    from rlinf_wm.runners.eval_world_model import evaluate_world_model, headline

    cfg, _ = trained
    # latents of other episodes than the ones given (same count, another order) would pair wrong frames and actions
    from rlinf_wm.runners.world_model_pipeline import load_training_episodes

    shuffled = load_training_episodes(cfg)[::-1]
    with pytest.raises(ValueError, match=r"not the 12 of the given episodes in order: rerun the encode stage"):
        evaluate_world_model(cfg, episodes=shuffled, output_dir=Path(cfg.eval.output_dir) / "never")
    summary = evaluate_world_model(cfg)
    out = Path(cfg.eval.output_dir)
    saved = json.loads((out / "eval_summary.json").read_text())
    for method in ("model", "shuffled_actions", "repeat", "reconstruction"):
        assert set(saved["metrics"][method]) == {"2", "6"}
        for row in saved["metrics"][method].values():
            assert 0 < row["psnr"] <= 60 and -1 <= row["ssim"] <= 1
    assert set(saved["gaps"]["6"]) >= {"model_minus_repeat_psnr", "model_minus_shuffled_actions_psnr"}
    assert saved["shuffled_partner_other_episode_fraction"] == 1.0
    assert saved["reward"]["rollouts"] == saved["rollouts"] > 0
    assert saved["success_aligned_rollouts"] >= 1 and saved["reward"]["changed_outcome_rollouts"] >= 1
    assert 0 <= saved["reward"]["agreement_model"] <= 1
    # the real final frames are what the labels describe: the classifier's agreement there is its accuracy
    assert saved["reward"]["agreement_real"] is not None
    assert (out / "rollouts.gif").is_file() and (out / "rollouts_grid.png").is_file()
    assert headline(summary)["horizons"]["6"]["model_psnr"] == round(saved["metrics"]["model"]["6"]["psnr"], 2)


def test_malformed_config_keys_fail_with_dotted_paths(dataset):
    base = tiny_overrides(dataset)
    with pytest.raises(ConfigError, match=r"^train\.dit\.bogus: unknown key"):
        compose_config(base + ["+train.dit.bogus=1"])
    with pytest.raises(ConfigError, match=r"^dit\.num_layers: must be >= 1"):
        compose_config(base + ["dit.num_layers=0"])
    with pytest.raises(ConfigError, match=r"^eval\.horizons: 7 frames exceed"):
        compose_config(base + ["eval.horizons=[2,7]"])
    with pytest.raises(ConfigError, match=r"^train\.reward\.holdout_fraction: "):
        compose_config(base + ["train.reward.holdout_fraction=0.1"])
    with pytest.raises(ConfigError, match=r"^sampler\.solver: "):
        compose_config(base + ["sampler.solver=heun"])
    with pytest.raises(ConfigError, match=r"^sampler\.guidance_interval: must be \[low, high\]"):
        compose_config(base + ["sampler.guidance_interval=[0.9,0.1]"])
    for key in ("train.tokenizer.precision", "train.dit.precision", "train.reward.precision",
                "train.reward_generated_dtype"):
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be one of"):
            compose_config(base + [f"{key}=float16"])


def test_cosmos_2b_dit_builds_from_config_on_meta_device():
    from rlinf_wm.models.dit import ActionDiT

    cfg = compose_config(["model@dit=wm_dit_cosmos_2b", "model@tokenizer=wm_tokenizer_wan"])
    dit = cfg.dit.resolved(cfg.tokenizer, action_dim=7)
    assert dit.actions_per_latent_frame == 4 and dit.latent_channels == 16
    with torch.device("meta"):
        model = ActionDiT(**{k: v for k, v in vars(dit).items()})
    assert model.hidden_size == 2048 and len(model.transformer.transformer_blocks) == 28
    assert model.transformer.transformer_blocks[0].attn1.heads == 16
    parameters = sum(p.numel() for p in model.parameters())
    assert 1.8e9 < parameters < 2.3e9
    # a per-frame tokenizer cannot drive a 4-actions-per-latent-frame DiT: caught at validation
    with pytest.raises(ConfigError, match=r"^dit\.actions_per_latent_frame: "):
        compose_config(["model@dit=wm_dit_cosmos_2b", "++dit.actions_per_latent_frame=4"])


def test_image_metrics_and_baseline_helpers():
    from rlinf_wm.runners.eval_world_model import shuffled_partner
    from rlinf_wm.utils.frame_metrics import FrameErrors, gaussian_window, moving_masks, ssim_map

    rng = np.random.default_rng(0)
    a = torch.rand(2, 3, 16, 16)
    window = gaussian_window(7, 1.5)
    assert torch.allclose(ssim_map(a, a, window), torch.ones(2, 16, 16), atol=1e-5)
    assert ssim_map(a, torch.rand(2, 3, 16, 16), window).mean() < 0.5
    real = rng.integers(0, 256, (3, 4, 16, 16, 3), dtype=np.uint8)
    errors = FrameErrors(real.copy(), real, window)
    psnr, ssim = errors.at(2)
    assert torch.all(psnr == 60.0) and torch.allclose(ssim, torch.ones(3), atol=1e-5)
    noisy = np.clip(real.astype(int) + 10, 0, 255).astype(np.uint8)
    psnr, _ = FrameErrors(noisy, real, window).at(0)
    assert torch.all(psnr < 30)
    # moving pixels: only where a real frame left the reference
    reference = np.zeros((1, 4, 4, 3), np.uint8)
    frames = np.zeros((1, 3, 4, 4, 3), np.uint8)
    frames[0, 1, 0, 0] = 200
    masks = moving_masks(frames, reference, 0.1)
    assert masks[0, 0].sum() == 0 and masks[0, 1].sum() == 1 and masks[0, 2].sum() == 1
    partner, other = shuffled_partner([0, 0, 1, 1, 2])
    episodes = np.array([0, 0, 1, 1, 2])
    assert other == 1.0 and sorted(partner.tolist()) == [0, 1, 2, 3, 4]
    assert (episodes[partner] != episodes).all()


def test_autoregressive_rollout_passes_each_new_window_through_reencode():
    """The evaluation conditions every chunk after the first on the re-encoded window, as the env does."""
    from rlinf_wm.runners.world_model_rollout import autoregressive_rollout

    seen = []

    class EchoSampler:  # "generates" frames equal to 1 + the mean of its conditioning
        def sample(self, model, x, mask, actions, noise=None, guidance=None):
            seen.append(x[:, :, :2].clone())
            out = x.clone()
            out[:, :, 2:] = x[:, :, :2].mean() + 1.0
            return out

    cond = torch.zeros(1, 1, 2, 1, 1)
    noise = [torch.zeros(1, 1, 3, 1, 1)] * 3
    plain = autoregressive_rollout(None, EchoSampler(), cond, torch.zeros(1, 3, 1), 3, 1, 1, noise)
    assert plain.flatten().tolist() == [1.0, 1.5, 2.25]  # windows (0,0) -> (0,1) -> (1,1.5)
    seen.clear()
    doubled = autoregressive_rollout(None, EchoSampler(), cond, torch.zeros(1, 3, 1), 3, 1, 1, noise,
                                     reencode=lambda window: 2 * window)
    assert [w.flatten().tolist() for w in seen] == [[0.0, 0.0], [0.0, 2.0], [4.0, 4.0]]
    assert doubled.flatten().tolist() == [1.0, 2.0, 5.0]


def test_extra_data_dirs_are_trained_on_and_make_the_later_stages_stale(trained, dataset, tmp_path):
    """The base policy's recorded rollouts (another trajectory directory) join the training data; the tokenizer is
    kept, the latents, the DiT and the reward model are redone."""
    import shutil

    from rlinf_wm.data.initial_states import InitialStates
    from rlinf_wm.runners.world_model_pipeline import run_stage, training_data_files

    root = tmp_path / "run"
    shutil.copytree(dataset, root)  # the trained world model of the `trained` fixture, mtimes kept
    extra = tmp_path / "policy_rollouts"
    write_episodes(extra / "shard_00000.hdf5", [make_episode(np.random.default_rng(1), i) for i in range(3)])
    cfg = compose_config(tiny_overrides(root) + [f"extra_data_dirs=[{extra}]"])
    assert training_data_files(cfg) == [root / "data" / "shard_00000.hdf5", extra / "shard_00000.hdf5"]
    report = run_stage(cfg, "all")
    assert report["tokenizer"]["status"] == "cached"
    assert [report[s]["status"] for s in ("encode", "dit", "reward")] == ["ran"] * 3
    assert report["encode"]["episodes"] == 15
    data = json.loads((root / "world_model" / "training_data.json").read_text())
    assert data["episodes"] == 15 and data["files"][-1] == str(extra / "shard_00000.hdf5")
    assert data["env_steps"] == sum(ep.length for path in training_data_files(cfg) for ep in read_episodes(path))
    assert len(InitialStates.load(root / "world_model" / "initial_states.hdf5")) == 15


def test_generated_episodes_replay_the_recorded_actions_and_join_the_reward_models_data(trained, dataset, tmp_path):
    """stage generate: world-model replays of recorded episodes with their real labels, which the reward stage
    trains on (held-out sources stay held out and are scored per episode)."""
    import shutil

    from rlinf_wm.runners.train_tokenizer import split_episodes
    from rlinf_wm.runners.world_model_pipeline import run_stage

    root = tmp_path / "run"
    shutil.copytree(dataset, root)  # the `trained` world model, mtimes kept: only the new stages run
    cfg = compose_config(tiny_overrides(root) + ["train.reward_generated_episodes=12", "train.reward_generated_batch_size=5"])
    report = run_stage(cfg, "all")
    assert {name: r["status"] for name, r in report.items()} == {
        "tokenizer": "cached", "encode": "cached", "dit": "cached", "generate": "ran", "reward": "ran"
    }
    sources = read_episodes(root / "data" / "shard_00000.hdf5")
    generated = read_episodes(root / "world_model" / "generated_episodes.hdf5")
    assert report["generate"]["episodes"] == 12 and report["generate"]["failed"] == sum(not e.success for e in sources)
    assert sorted(int(ep.attrs["source_episode"]) for ep in generated) == list(range(12))
    for ep in generated:
        source = sources[int(ep.attrs["source_episode"])]
        assert ep.attrs["kind"] == "generated" and len(ep.frames) == source.length + 1
        assert (ep.frames[0] == source.frames[0]).all()  # replayed from the recorded first frame
        assert not (ep.frames[1:] == source.frames[1:]).all()  # the rest is generated, not copied
        np.testing.assert_array_equal(ep.actions, source.actions)
        assert ep.success == source.success and (ep.rewards == source.rewards).all()

    metrics = json.loads((root / "world_model" / "reward_model" / "metrics.json").read_text())
    _, held = split_episodes(list(range(12)), cfg.train.reward.holdout_fraction, cfg.seed)
    assert metrics["heldout_generated_episodes"] == len(held) and metrics["train_generated_episodes"] == 12 - len(held)
    assert metrics["heldout_generated_failed_episodes"] == sum(not sources[i].success for i in held)
    # the shipped model carries the threshold chosen on the held-out replays, and world_model.json records it
    shipped = json.loads((root / "world_model" / "reward_model" / "model" / "config.json").read_text())
    assert shipped["threshold"] == metrics["threshold"]
    assert json.loads((root / "world_model" / "world_model.json").read_text())["reward_threshold"] == metrics["threshold"]
    assert {r["status"] for r in run_stage(cfg, "all").values()} == {"cached"}
    # the generated episodes are an input of the reward stage: newer ones make it stale
    later = time.time() + 5
    os.utime(root / "world_model" / "generated_episodes.hdf5", (later, later))
    report = run_stage(cfg, "all")
    assert report["generate"]["status"] == "cached" and report["reward"]["status"] == "ran"
    # the settings that choose the replays are part of the cache: fewer replays, then none, retrain the reward model
    fewer = replace(cfg, train=replace(cfg.train, reward_generated_episodes=6))
    report = run_stage(fewer, "all")
    assert report["generate"]["status"] == "ran" and report["generate"]["episodes"] == 6
    assert report["reward"]["status"] == "ran" and report["dit"]["status"] == "cached"
    assert json.loads((root / "world_model" / "reward_model" / "metrics.json").read_text())["train_generated_episodes"] < 6
    report = run_stage(replace(cfg, train=replace(cfg.train, reward_generated_episodes=0)), "all")
    assert "generate" not in report and report["reward"]["status"] == "ran"
    assert json.loads((root / "world_model" / "reward_model" / "metrics.json").read_text())["train_generated_episodes"] == 0


def test_generated_replays_are_seeded_and_follow_the_actions(trained):
    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.models.samplers import FlowSampler
    from rlinf_wm.models.tokenizer import VideoTokenizer
    from rlinf_wm.runners.generate_episodes import generate_episodes
    from rlinf_wm.utils.checkpoint import load_model

    cfg, _ = trained
    root = Path(cfg.world_model_dir)
    tokenizer = load_model(VideoTokenizer, root / "tokenizer" / "model")
    dit = load_model(ActionDiT, root / "dit" / "model")
    sampler = FlowSampler(num_steps=2, guidance=1.5)
    stats = ActionStatistics.load(root / "dataset_statistics.json")
    episodes = read_episodes(Path(cfg.data_dir) / "shard_00000.hdf5")[:3]

    def replay(eps, seed, dtype=torch.float32):
        return generate_episodes(tokenizer, dit, sampler, DiTActionInputs(stats, 20.0, 0.5), 2, 2, eps, batch_size=2,
                                 seed=seed, dtype=dtype)

    first, again = replay(episodes, 0), replay(episodes, 0)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.frames, b.frames)
    # in bfloat16 (the env's dtype where native) the same replays, to rounding
    mixed = replay(episodes, 0, torch.bfloat16)
    differences = [np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() for a, b in zip(first, mixed)]
    assert 0 < max(differences) < 3.0
    flipped = [replace(ep, actions=-ep.actions) for ep in episodes]
    assert any(not (a.frames[-1] == b.frames[-1]).all() for a, b in zip(first, replay(flipped, 0)))


def test_generated_sources_are_drawn_by_kind_and_a_bad_kind_names_the_key():
    from rlinf_wm.runners.generate_episodes import select_sources

    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, i, max_steps=4) for i in range(6)]
    for i, ep in enumerate(episodes):
        ep.attrs["kind"] = "policy" if i % 2 else "expert"
    assert select_sources(episodes, 10, ["policy"], seed=0) == [1, 3, 5]
    assert len(select_sources(episodes, 2, [], seed=0)) == 2
    with pytest.raises(ValueError, match="reward_generated_kinds"):
        select_sources(episodes, 2, ["random"], seed=0)


def stub_probs(monkeypatch, probs: np.ndarray) -> None:
    from rlinf_wm.runners import reward_scoring

    monkeypatch.setattr(reward_scoring, "predict_probs", lambda model, data, *a, **k: probs)


def frame_offsets(episodes) -> list[int]:
    return np.cumsum([0] + [len(ep.frames) for ep in episodes]).tolist()


def test_generated_episode_metrics_count_flagged_episodes(monkeypatch):
    """A failed replay flagged at any frame is a false success; a successful replay is detected when its success
    frame (the last) is flagged, not an earlier one."""
    from rlinf_wm.models.reward_model import RewardModel
    from rlinf_wm.runners.reward_scoring import generated_episode_metrics

    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, i) for i in range(8)]  # 3 and 7 fail
    start = frame_offsets(episodes)
    probs = np.zeros(start[-1], np.float32)
    probs[start[1] - 1] = 0.9  # episode 0's success frame
    probs[start[1] + 1] = 0.9  # an early frame of episode 1: not its success frame
    probs[start[3] + 1] = 0.9  # a frame of failed episode 3
    stub_probs(monkeypatch, probs)
    model = RewardModel(image_size=SIZE, hidden_sizes=[8], depths=[1], embedding_size=8)
    result = generated_episode_metrics(model, episodes)
    assert result["failed_episodes"] == 2 and result["successful_episodes"] == 6
    assert result["false_success_rate"] == 0.5
    assert result["success_detected_rate"] == 1 / 6
    assert generated_episode_metrics(model, episodes, threshold=0.95)["false_success_rate"] == 0.0


def test_threshold_is_chosen_to_separate_the_replays(monkeypatch):
    """Failed replays reach 0.85 somewhere, successful ones 0.92 at their success frame: 0.9 separates them all."""
    from rlinf_wm.models.reward_model import RewardModel
    from rlinf_wm.runners.reward_scoring import choose_threshold

    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, i) for i in range(8)]
    start = frame_offsets(episodes)
    probs = np.full(start[-1], 0.1, np.float32)
    for i, ep in enumerate(episodes):
        probs[start[i + 1] - 1 if ep.success else start[i] + 2] = 0.92 if ep.success else 0.85
    stub_probs(monkeypatch, probs)
    model = RewardModel(image_size=SIZE, hidden_sizes=[8], depths=[1], embedding_size=8)
    assert choose_threshold(model, episodes) == 0.9
    assert choose_threshold(model, episodes, grid=[0.3, 0.5]) == 0.3  # equally bad: the lower one
    assert choose_threshold(model, [ep for ep in episodes if ep.success]) is None


def test_the_env_rule_scores_chunk_ends_and_needs_consecutive_hits():
    """As WorldModelEnv with reward_frames=last: frames K, 2K, ... and the last are scored; the reset frame never."""
    from rlinf_wm.runners.reward_scoring import SuccessRule

    rule = SuccessRule(scored_every=4, consecutive=2)
    probs = np.zeros(11, np.float32)  # reset frame + 10 generated: scored frames 4, 8, 10
    probs[[0, 1, 2, 3, 5, 6, 7]] = 0.99  # everything between chunk ends
    assert SuccessRule().fires(probs, 0.9) and not rule.fires(probs, 0.9)
    probs[4] = 0.99  # one chunk end alone (frame 5 is not scored)
    assert SuccessRule(4, 1).fires(probs, 0.9) and not rule.fires(probs, 0.9)
    probs[10] = 0.99  # frames 4 and 10 hit but frame 8 between them does not: no streak
    assert not rule.fires(probs, 0.9)
    probs[8] = 0.99
    assert rule.fires(probs, 0.9) and not rule.fires(probs, 0.995)


def test_the_threshold_is_chosen_under_the_envs_rule(monkeypatch):
    """Failed replays reach 0.96 on odd frames and 0.65 on the even ones, which the env scores at K=2: any-frame
    scoring needs 0.97, the env's rule (chunk ends, two in a row) only 0.7."""
    from rlinf_wm.models.reward_model import RewardModel
    from rlinf_wm.runners.reward_scoring import SuccessRule, choose_threshold, generated_episode_metrics

    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, i) for i in range(8)]
    start = frame_offsets(episodes)
    probs = np.full(start[-1], 0.1, np.float32)
    for i, ep in enumerate(episodes):
        if ep.success:
            probs[start[i + 1] - 1] = 0.99
        else:
            probs[start[i] + 1 : start[i + 1] : 2] = 0.96
            probs[start[i] + 2 : start[i + 1] : 2] = 0.65
    stub_probs(monkeypatch, probs)
    model = RewardModel(image_size=SIZE, hidden_sizes=[8], depths=[1], embedding_size=8)
    rule = SuccessRule(scored_every=2, consecutive=2)
    assert choose_threshold(model, episodes) == 0.97
    assert choose_threshold(model, episodes, rule=rule) == 0.7
    metrics = generated_episode_metrics(model, episodes, threshold=0.9, env_rule=rule)
    assert metrics["false_success_rate"] == 1.0 and metrics["env_rule_false_success_rate"] == 0.0
    assert metrics["success_detected_rate"] == 1.0


def test_running_action_sums_are_on_by_default_and_can_be_switched_off(trained, dataset, tmp_path):
    """The default DiT takes 2 x action_dim inputs (actions + running sums; the other tests here drive it through
    replays, the evaluation and the env) and world_model.json records the scale; at 0 the DiT takes the actions only."""
    import shutil

    from rlinf_wm.envs.world_model_env import WorldModelEnv
    from rlinf_wm.runners.world_model_pipeline import run_stage

    cfg, _ = trained
    wm = Path(cfg.world_model_dir)
    assert json.loads((wm / "dit" / "model" / "config.json").read_text())["action_dim"] == 8
    assert json.loads((wm / "world_model.json").read_text())["action_integral_scale"] == 0.5

    root = tmp_path / "run"
    shutil.copytree(dataset, root)
    off = compose_config(tiny_overrides(root) + ["train.dit.action_integral_scale=0"])
    assert run_stage(off, "dit")["dit"]["status"] == "ran"  # a setting of the DiT's: it is retrained
    wm = root / "world_model"
    assert json.loads((wm / "dit" / "model" / "config.json").read_text())["action_dim"] == 4
    assert json.loads((wm / "world_model.json").read_text())["action_integral_scale"] == 0.0
    env = WorldModelEnv(str(wm), num_envs=2, reward_threshold=1.01)
    env.reset(ids=[0, 1], seed=0)
    assert env.chunk_step(np.zeros((2, env.chunk_size, 4), np.float32)).obs.images.shape == (2, SIZE, SIZE, 3)

    # a DiT trained before the running sums existed (no key in its train_config.json) is described as without them
    from rlinf_wm.data.world_model_layout import Layout, world_model_settings

    saved = json.loads((wm / "dit" / "train_config.json").read_text())
    del saved["train"]["action_integral_scale"]
    (wm / "dit" / "train_config.json").write_text(json.dumps(saved))
    assert world_model_settings(cfg, Layout(wm), None)["action_integral_scale"] == 0.0


def test_refining_copies_the_tokenizer_and_continues_the_trained_dit(trained, dataset, tmp_path):
    """refine_from (a Dyna-style refit on more data): the latent space is kept, the DiT starts from the trained
    one's weights (at a vanishing learning rate it ships them unchanged), and the new data is encoded."""
    import shutil

    from safetensors.torch import load_file

    from rlinf_wm.runners.train_dit import _initial_dit
    from rlinf_wm.runners.world_model_pipeline import run_stage, training_data_files
    from rlinf_wm.runners.world_model_stages import heldout_indices, split_segments

    cfg, _ = trained
    source = Path(cfg.world_model_dir)
    extra = tmp_path / "rl_rollouts"
    write_episodes(extra / "shard_00000.hdf5", [make_episode(np.random.default_rng(2), i) for i in range(3)])
    target = tmp_path / "refined"
    refine = compose_config(tiny_overrides(dataset) + [
        f"world_model_dir={target}", f"refine_from={source}", f"extra_data_dirs=[{extra}]",
        "train.dit.steps=2", "train.dit.lr=1e-12", "train.dit.min_lr=0",
    ])
    report = run_stage(refine, "all")
    assert report["tokenizer"]["copied_from"] == str(source / "tokenizer")
    assert report["encode"]["episodes"] == 15
    # the source's 12 episodes keep its held-out split: the refit never holds out one its DiT trained on
    assert json.loads((target / "training_data.json").read_text())["split_segments"] == [12]
    assert set(heldout_indices(15, refine)[1]) & set(range(12)) == set(heldout_indices(12, cfg)[1])
    # a refit of the refit keeps both splits (the quickstart's --rounds)
    again = replace(refine, world_model_dir=str(tmp_path / "refined_twice"), refine_from=str(target),
                    extra_data_dirs=[str(extra), str(extra)])
    assert split_segments(again, training_data_files(again)) == [12, 15]
    with pytest.raises(ValueError, match=r"refine_from: the training files must start with the 1 files"):
        swapped = replace(refine, data_dir=str(extra), extra_data_dirs=[str(dataset / "data")])
        split_segments(swapped, training_data_files(swapped))
    weights = "model/model.safetensors"
    assert (target / "tokenizer" / weights).read_bytes() == (source / "tokenizer" / weights).read_bytes()
    # a new file time: the stages reading the tokenizer see it as new (refine_from set on an existing directory)
    assert (target / "tokenizer" / weights).stat().st_mtime > (source / "tokenizer" / weights).stat().st_mtime
    trained_dit, refined_dit = load_file(source / "dit" / weights), load_file(target / "dit" / weights)
    assert trained_dit.keys() == refined_dit.keys()
    for name, tensor in trained_dit.items():
        torch.testing.assert_close(refined_dit[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert json.loads((target / "dit" / "train_config.json").read_text())["init_weights"] == str(source / "dit" / "model")
    assert (target / "world_model.json").is_file()
    assert {r["status"] for r in run_stage(refine, "all").values()} == {"cached"}
    # a source DiT retrained since (same tokenizer, same settings): the refit continues from the new one
    later = time.time() + 5
    os.utime(source / "dit" / weights, (later, later))
    report = run_stage(refine, "all")
    assert (report["encode"]["status"], report["dit"]["status"]) == ("cached", "ran")
    # refine_from is part of what the tokenizer stage was made with: without it the tokenizer is trained anew
    report = run_stage(replace(refine, refine_from=None), "tokenizer")
    assert report["tokenizer"]["status"] == "ran" and "copied_from" not in report["tokenizer"]

    other = json.loads((source / "dit" / "model" / "config.json").read_text()) | {"num_layers": 2}
    with pytest.raises(ValueError, match=r"num_layers"):
        _initial_dit(source / "dit" / "model", other, refine.train.dit)
    # the same architecture trained on other action inputs: its weights answer other inputs
    scaled = replace(refine.train.dit, action_scaler=refine.train.dit.action_scaler / 2)
    same_architecture = json.loads((source / "dit" / "model" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"train\.dit\.\['action_scaler'\]"):
        _initial_dit(source / "dit" / "model", same_architecture, scaled)
    # a world model whose action statistics differ (another data_dir): its DiT saw other normalised actions
    other_source = tmp_path / "other_source"
    shutil.copytree(source, other_source)
    statistics = json.loads((other_source / "dataset_statistics.json").read_text())
    statistics["action"]["comment"] = "another data set"
    (other_source / "dataset_statistics.json").write_text(json.dumps(statistics))
    with pytest.raises(ValueError, match=r"refine_from: .*dataset_statistics\.json differs"):
        run_stage(replace(refine, world_model_dir=str(tmp_path / "refined_again"), refine_from=str(other_source)), "all")
    with pytest.raises(Exception, match="refine_from"):
        compose_config(tiny_overrides(dataset) + [f"refine_from={source}"])


def test_line_noise_puts_the_first_euler_step_on_the_teachers_sample():
    """The student's pairs: from the noise draw z at the first flow time s0, one Euler step along the line velocity
    z' - x0 lands exactly on x0 (with z itself as the noise end it would miss by (1 - s0) |x0 - z|)."""
    from rlinf_wm.models.samplers import FlowSampler
    from rlinf_wm.runners.distill_dit import line_noise, student_sampler

    generator = torch.Generator().manual_seed(0)
    target, noise = torch.randn(3, 2, 4, 2, 2, generator=generator), torch.randn(3, 2, 4, 2, 2, generator=generator)
    mask = torch.zeros(3, 1, 4, 2, 2)
    mask[:, :, :2] = 1
    x_cond = torch.where(mask.expand_as(target) > 0, target, torch.zeros_like(target))
    sampler = student_sampler(FlowSampler(solver="2ab", num_steps=4, guidance=1.5), 1)
    assert (sampler.solver, sampler.num_steps, sampler.guidance) == ("euler", 1, 0.0)
    s0 = float(sampler.sigmas()[0])
    for noise_end, exact in ((line_noise(noise, target, s0), True), (noise, False)):
        def line_velocity(x, timestep, actions, condition_mask, drop_actions=None, noise_end=noise_end):
            assert not drop_actions.any()  # guidance is baked in: one branch
            return noise_end - target

        sample = sampler.sample(line_velocity, x_cond, mask, torch.zeros(3, 4, 1), noise=noise)
        error = (sample - target)[:, :, 2:].abs().max().item()
        assert (error < 1e-5) if exact else (error > 1e-3)


def test_distill_stage_trains_a_one_step_student_the_env_runs_with_distilled(trained, dataset, tmp_path):
    """stage=distill fits the guided teacher's samples in one Euler step far better than the teacher does at that
    cost, world_model.json records the student and its sampler, and the env's distilled=true runs it with one
    DiT call per chunk; a world model without a student and steps=0 fail naming what to do."""
    import shutil

    from safetensors.torch import load_file

    from rlinf_wm.config.world_model_env_schema import WorldModelEnvConfig
    from rlinf_wm.data.world_model_layout import Layout, world_model_settings
    from rlinf_wm.envs.world_model_env import WorldModelEnv
    from rlinf_wm.models.dit import ActionDiT
    from rlinf_wm.runners.world_model_pipeline import run_stage
    from rlinf_wm.utils.checkpoint import load_model, save_model_atomic

    root = tmp_path / "run"
    shutil.copytree(dataset, root)  # the trained world model of the `trained` fixture, mtimes kept
    wm = root / "world_model"
    # The fixture's 6-step DiT still predicts ~0 (zero-initialised output), a straight flow a single step already
    # follows; random weights make the teacher's guided 2-step samples far from its own 1-step unguided ones.
    teacher = load_model(ActionDiT, wm / "dit" / "model")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    save_model_atomic(teacher, wm / "dit" / "model")
    with pytest.raises(ValueError, match=r"distilled=true .*stage=distill"):
        WorldModelEnv(str(wm), num_envs=2, distilled=True)
    assert WorldModelEnv(str(wm), num_envs=2, distilled="auto").sampler.solver == "2ab"  # no student: the teacher
    with pytest.raises(ConfigError, match=r"env.train.distilled"):
        validate({"env_type": "world_model", "world_model_dir": str(wm), "distilled": "sometimes"},
                 WorldModelEnvConfig, "env.train")
    with pytest.raises(ValueError, match=r"train.distill.steps"):
        run_stage(compose_config(tiny_overrides(root)), "distill")
    cfg = compose_config(tiny_overrides(root) + [
        "sampler.guidance=1.5", "train.distill.steps=80", "train.distill.num_pairs=8", "train.distill.batch_size=8",
        "train.distill.pair_batch_size=4", "train.distill.heldout_pairs=4", "train.distill.lr=3e-3",
        "train.distill.warmup_steps=0", "train.distill.log_every=10", "train.distill.compile=false",
    ])
    from rlinf_wm.runners.eval_world_model import evaluate_world_model

    student_eval = replace(cfg, eval=replace(cfg.eval, distilled=True))
    with pytest.raises(ValueError, match=r"eval.distilled=true .*stage=distill"):
        evaluate_world_model(student_eval, output_dir=tmp_path / "eval")
    report = run_stage(cfg, "all")
    assert [report[s]["status"] for s in ("tokenizer", "encode", "dit", "reward")] == ["cached"] * 4
    assert report["distill"]["status"] == "ran"
    metrics = json.loads((wm / "dit_distilled" / "metrics.json").read_text())
    assert metrics["final_train_loss"] < 0.5 * metrics["first_train_loss"]
    assert metrics["train_student_teacher_mse"] < 0.5 * metrics["train_teacher_at_student_cost_mse"]
    assert metrics["heldout_windows"] == 4 and np.isfinite(metrics["heldout_student_teacher_mse"])

    settings = json.loads((wm / "world_model.json").read_text())
    assert settings["paths"]["distilled_dit"] == "dit_distilled/model"
    assert settings["distilled_sampler"]["solver"] == "euler" and settings["distilled_sampler"]["num_steps"] == 1
    assert settings["distilled_sampler"]["guidance"] == 0.0 and settings["sampler"]["guidance"] == 1.5
    env = WorldModelEnv(str(wm), num_envs=2, distilled=True, seed=0, dtype="float32")
    assert (env.sampler.solver, env.sampler.num_steps, env.sampler.guidance) == ("euler", 1, 0.0)
    assert WorldModelEnv(str(wm), num_envs=2, distilled="auto").sampler.solver == "euler"
    student = load_file(wm / "dit_distilled" / "model" / "model.safetensors")
    for name, tensor in env.dit.state_dict().items():
        torch.testing.assert_close(tensor, student[name], msg=name)
    env.reset(ids=[0, 1], seed=0)
    env.timings.clear()
    env.chunk_step(np.zeros((2, env.chunk_size, 4), np.float32))
    assert env.timings.dit_calls == 1 and env.timings.dit_rows == 2  # one branch, one step, both envs
    teacher = WorldModelEnv(str(wm), num_envs=2, seed=0, dtype="float32")
    assert (teacher.sampler.solver, teacher.sampler.guidance) == ("2ab", 1.5)
    assert run_stage(cfg, "distill")["distill"]["status"] == "cached"
    summary = evaluate_world_model(student_eval, output_dir=tmp_path / "eval")
    assert summary["sampler"]["solver"] == "euler" and summary["sampler"]["num_steps"] == 1
    assert summary["sampler"]["guidance"] == 0.0 and 0 < summary["metrics"]["model"]["6"]["psnr"] <= 60
    # a DiT retrained after the student makes it stale: world_model.json no longer offers it
    earlier = (wm / "dit" / "model" / "model.safetensors").stat().st_mtime - 10
    os.utime(wm / "dit_distilled" / "metrics.json", (earlier, earlier))
    assert "distilled_sampler" not in world_model_settings(cfg, Layout(wm), None)
    with pytest.raises(FileNotFoundError, match="older than the DiT it distils: run stage=distill"):
        run_stage(replace(cfg, train=replace(cfg.train, reward_generated_episodes=2)), "generate")
    assert run_stage(cfg, "distill")["distill"]["status"] == "ran"
    assert "distilled_sampler" in world_model_settings(cfg, Layout(wm), None)
    # the teacher's sampler decides the student's targets: another guidance distils again
    assert run_stage(replace(cfg, sampler=replace(cfg.sampler, guidance=1.0)), "distill")["distill"]["status"] == "ran"
    # with distillation switched off the student on disk is no longer offered
    off = replace(cfg, train=replace(cfg.train, distill=replace(cfg.train.distill, steps=0)))
    assert "distilled_dit" not in world_model_settings(off, Layout(wm), None)["paths"]


def test_dit_training_episodes_are_a_seeded_share_in_order():
    from rlinf_wm.config.world_model_config import DiTTrainConfig
    from rlinf_wm.runners.world_model_stages import dit_training_episodes

    train_idx = list(range(3, 23))
    assert dit_training_episodes(train_idx, DiTTrainConfig()) == train_idx
    half = dit_training_episodes(train_idx, DiTTrainConfig(episode_fraction=0.5, seed=2))
    assert len(half) == 10 and half == sorted(half) and set(half) <= set(train_idx)
    assert half == dit_training_episodes(train_idx, DiTTrainConfig(episode_fraction=0.5, seed=2))
    assert half != dit_training_episodes(train_idx, DiTTrainConfig(episode_fraction=0.5, seed=3))
    assert len(dit_training_episodes(train_idx[:1], DiTTrainConfig(episode_fraction=0.1))) == 1


def test_a_dit_on_a_share_of_the_episodes_trains_on_fewer_and_its_share_makes_the_stage_stale(trained, tmp_path,
                                                                                               dataset):
    import shutil

    from rlinf_wm.runners.world_model_pipeline import run_stage

    cfg, _ = trained
    member = replace(cfg, world_model_dir=str(tmp_path / "member"))
    shutil.copytree(cfg.world_model_dir, member.world_model_dir)
    full = json.loads((Path(cfg.world_model_dir) / "dit" / "metrics.json").read_text())["train_episodes"]
    half = replace(member, train=replace(member.train, dit=replace(member.train.dit, episode_fraction=0.5)))
    assert run_stage(half, "dit")["dit"]["status"] == "ran"
    trained_on = json.loads((Path(member.world_model_dir) / "dit" / "metrics.json").read_text())["train_episodes"]
    assert trained_on == round(full / 2)
    assert run_stage(half, "dit")["dit"]["status"] == "cached"
    assert run_stage(member, "dit")["dit"]["status"] == "ran"  # back to every episode: stale
    # so does another held-out split (the episodes left for training change)
    assert run_stage(replace(member, holdout_fraction=0.05), "dit")["dit"]["status"] == "ran"
    assert run_stage(member, "dit")["dit"]["status"] == "ran"
    assert run_stage(member, "dit")["dit"]["status"] == "cached"
    with pytest.raises(ConfigError, match=r"^train\.dit\.episode_fraction: must be in \(0, 1\]"):
        compose_config(tiny_overrides(dataset) + ["train.dit.episode_fraction=0"])


def test_a_refits_split_keeps_its_sources_split_and_splits_the_new_episodes_apart():
    from rlinf_wm.runners.train_tokenizer import split_episodes, split_indices

    source_train, source_held = split_episodes(list(range(40)), 0.1, 0)
    train, held = split_indices(60, 0.1, 0, segments=[40])
    assert set(held) & set(range(40)) == set(source_held)  # the source's training episodes are never held out
    assert train[: len(source_train)] == source_train and len(held) == len(source_held) + 2
    assert sorted(train + held) == list(range(60)) and not set(train) & set(held)
    # prefix property per part: the reward model's larger held-out set contains the DiT's
    assert set(held) <= set(split_indices(60, 0.2, 0, segments=[40])[1])
    plain = split_episodes(list(range(60)), 0.1, 0)
    assert split_indices(60, 0.1, 0) == plain and split_indices(60, 0.1, 0, segments=[60]) == plain
    assert set(plain[1]) & set(source_train)  # what one permutation of the larger count did: the leak
    # a refit of the refit: both earlier splits are kept
    assert set(split_indices(80, 0.1, 0, segments=[40, 60])[1]) & set(range(60)) == set(held)
    with pytest.raises(ValueError, match="must increase"):
        split_indices(80, 0.1, 0, segments=[60, 40])
