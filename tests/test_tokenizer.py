import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from rlinf_wm.config.validate import ConfigError, validate
from rlinf_wm.config.world_model_schema import TokenizerConfig, TokenizerTrainConfig
from rlinf_wm.data.latents import encode_dataset, load_encoded_dataset
from rlinf_wm.data.trajectories import Episode
from rlinf_wm.models.tokenizer import VideoTokenizer, frames_to_uint8
from rlinf_wm.runners.train_tokenizer import train_tokenizer
from rlinf_wm.utils.checkpoint import load_model, save_model_atomic

TINY_PER_FRAME = dict(
    kind="per_frame_kl", image_size=16, latent_channels=4, block_out_channels=[8, 16], norm_num_groups=8
)
TINY_WAN = dict(kind="wan", image_size=16, latent_channels=4, wan_base_dim=8, wan_num_res_blocks=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_video(batch, frames, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, frames, size, size, 3), dtype=np.uint8)


def synthetic_episodes(count=4, length=9, size=16, success_at=5):
    """A bright square moving right over a dark background; success once it passes the middle."""
    episodes = []
    for e in range(count):
        frames = np.full((length + 1, size, size, 3), 30, np.uint8)
        for t in range(length + 1):
            x = (t + e) % (size - 4)
            frames[t, 6:10, x : x + 4] = (220, 180 - 10 * e, 40)
        rewards = np.zeros(length, np.float32)
        rewards[success_at] = 1.0
        episodes.append(
            Episode(
                frames=frames,
                actions=np.random.default_rng(e).normal(size=(length, 4)).astype(np.float32),
                rewards=rewards,
                dones=np.arange(length) == length - 1,
                success=True,
                instruction="push the square",
                task="synthetic",
                seed=e,
            )
        )
    return episodes


def test_per_frame_shapes_and_uint8_round_trip():
    tok = VideoTokenizer(**TINY_PER_FRAME).eval()
    video = random_video(2, 3)
    latents = tok.encode(video)
    assert latents.shape == (2, 4, 3, 4, 4)  # T' = T, 2x2 blocks then one more 2x downsampling
    frames = tok.decode(latents)
    assert frames.shape == (2, 3, 16, 16, 3) and frames.min() >= -1 and frames.max() <= 1
    as_uint8 = tok.decode_to_uint8(latents)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == frames.shape
    assert torch.equal(frames_to_uint8(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([0, 128, 255], dtype=torch.uint8))


def test_input_layouts_agree():
    tok = VideoTokenizer(**TINY_PER_FRAME).eval()
    video = random_video(1, 2)
    channels_first = torch.from_numpy(video).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        assert torch.allclose(tok.encode(video), tok.encode(channels_first), atol=1e-6)
    with pytest.raises(ValueError, match="3 colour channels"):
        tok.encode(np.zeros((1, 2, 16, 16, 4), np.uint8))
    with pytest.raises(ValueError, match="16x16"):
        tok.encode(np.zeros((1, 2, 32, 32, 3), np.uint8))


def test_per_frame_latents_are_independent_per_frame():
    tok = VideoTokenizer(**TINY_PER_FRAME).eval()
    video = random_video(1, 3)
    changed = video.copy()
    changed[:, 2] = 255 - changed[:, 2]
    with torch.no_grad():
        a, b = tok.encode(video), tok.encode(changed)
    assert torch.equal(a[:, :, 0], b[:, :, 0]) and torch.equal(a[:, :, 1], b[:, :, 1])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_wan_temporal_compression_and_causality():
    tok = VideoTokenizer(**TINY_WAN).eval()
    assert (tok.temporal_compression, tok.spatial_compression) == (4, 8)
    video = random_video(1, 9)
    with torch.no_grad():
        latents = tok.encode(video)
        assert latents.shape == (1, 4, 3, 2, 2)  # 1 + (9 - 1) / 4 latent frames
        assert tok.decode(latents).shape == (1, 9, 16, 16, 3)
        later_changed = video.copy()
        later_changed[:, 5:] = 255 - later_changed[:, 5:]
        other = tok.encode(later_changed)
    # The first latent frame sees only frame 0, the second frames 0..4.
    assert torch.equal(latents[:, :, :2], other[:, :, :2])
    assert not torch.allclose(latents[:, :, 2], other[:, :, 2])
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tok.encode(random_video(1, 4))


def test_latent_statistics_normalise_and_survive_save_load(tmp_path):
    tok = VideoTokenizer(**TINY_PER_FRAME).eval()
    clips = [random_video(4, 2, seed=s) for s in range(3)]
    mean, std = tok.fit_latent_statistics(clips)
    with torch.no_grad():
        normalised = torch.cat([tok.encode(c) for c in clips], dim=2)
    per_channel = normalised.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(4), atol=1e-3)

    save_model_atomic(tok, tmp_path / "tok")
    loaded = load_model(VideoTokenizer, tmp_path / "tok").eval()
    assert torch.equal(loaded.latent_mean, mean) and torch.equal(loaded.latent_std, std)
    with torch.no_grad():
        assert torch.equal(loaded.encode(clips[0]), tok.encode(clips[0]))
        assert torch.equal(loaded.decode(normalised[:, :, :2]), tok.decode(normalised[:, :, :2]))
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["block_out_channels"] == [8, 16]


def test_corrupted_checkpoint_gives_clear_error(tmp_path):
    save_model_atomic(VideoTokenizer(**TINY_PER_FRAME), tmp_path / "tok")
    weights = tmp_path / "tok" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="could not load VideoTokenizer from .*tok"):
        load_model(VideoTokenizer, tmp_path / "tok")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(VideoTokenizer, tmp_path / "tok")


def test_config_schema_rejects_inconsistent_values():
    assert validate({"kind": "wan"}, TokenizerConfig).temporal_compression == 4
    with pytest.raises(ConfigError, match="tok.block_out_channels\\[1\\]"):
        validate({"block_out_channels": [32, 48]}, TokenizerConfig, "tok")
    with pytest.raises(ConfigError, match="tok.image_size"):
        validate({"image_size": 60}, TokenizerConfig, "tok")
    with pytest.raises(ConfigError, match="tok.kind"):
        validate({"kind": "vqgan"}, TokenizerConfig, "tok")
    # every schema field is a constructor argument, so a validated section builds the model directly
    VideoTokenizer(**dataclasses.asdict(validate(TINY_PER_FRAME, TokenizerConfig)))


def tiny_train_config(**overrides):
    base = dict(
        steps=6, batch_size=4, eval_every=3, checkpoint_every=3, log_every=1, holdout_fraction=0.25,
        eval_max_frames=8, stats_max_frames=32, warmup_steps=2, num_threads=1,
    )
    return TokenizerTrainConfig(**{**base, **overrides})


def test_training_reduces_loss_and_writes_run_dir(tmp_path):
    episodes = synthetic_episodes()
    model_cfg = TokenizerConfig(**TINY_PER_FRAME)
    before = train_tokenizer(tiny_train_config(steps=1), None, tmp_path / "a", model_cfg, episodes, progress=False)
    after = train_tokenizer(tiny_train_config(steps=40, lr=3e-3), None, tmp_path / "b", model_cfg, episodes, progress=False)
    assert after["heldout_psnr"] > before["heldout_psnr"] + 3
    assert after["train_episodes"] == 3 and after["heldout_episodes"] == 1
    assert abs(after["normalised_latent_std"] - 1.0) < 0.2
    tok = load_model(VideoTokenizer, tmp_path / "b" / "model")
    assert not torch.equal(tok.latent_std, torch.ones(4))  # statistics were fitted and saved
    assert any((tmp_path / "b" / "tensorboard").iterdir())


def test_mixed_precision_training_learns_as_well_in_float32_weights(tmp_path):
    episodes = synthetic_episodes()
    model_cfg = TokenizerConfig(**TINY_PER_FRAME)
    runs = {p: train_tokenizer(tiny_train_config(steps=40, lr=3e-3, precision=p), None, tmp_path / p, model_cfg,
                               episodes, progress=False) for p in ("float32", "bfloat16")}
    assert runs["bfloat16"]["heldout_psnr"] > runs["float32"]["heldout_psnr"] - 1.0
    full, mixed = (load_model(VideoTokenizer, tmp_path / p / "model") for p in ("float32", "bfloat16"))
    assert {p.dtype for p in mixed.parameters()} == {torch.float32}
    # the same seed and data: only the bfloat16 forward passes make the weights differ
    assert any(not torch.equal(a, b) for a, b in zip(full.parameters(), mixed.parameters()))
    with pytest.raises(ConfigError, match=r"train\.tokenizer\.precision"):
        tiny_train_config(precision="half").check("train.tokenizer")


def test_resume_continues_from_saved_step(tmp_path):
    episodes = synthetic_episodes()
    model_cfg = TokenizerConfig(**TINY_PER_FRAME)
    cfg = tiny_train_config(steps=6, checkpoint_every=3, keep_checkpoints=2)
    full = train_tokenizer(cfg, None, tmp_path / "run", model_cfg, episodes, progress=False)
    reference = load_model(VideoTokenizer, tmp_path / "run" / "model").state_dict()
    # Simulate a crash after step 3: drop the later checkpoint and the final model.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000006")
    shutil.rmtree(tmp_path / "run" / "model")
    resumed = train_tokenizer(cfg, None, tmp_path / "run", model_cfg, episodes, progress=False)
    assert resumed["steps"] == full["steps"] == 6
    # Only steps 4..6 ran again, with restored optimizer, schedule and RNG: same weights as the straight run.
    for key, value in load_model(VideoTokenizer, tmp_path / "run" / "model").state_dict().items():
        assert torch.allclose(value, reference[key], atol=1e-6), key
    # A different architecture must not silently resume from these checkpoints.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000006")
    with pytest.raises(ValueError, match="different model config"):
        train_tokenizer(cfg, None, tmp_path / "run", TokenizerConfig(**{**TINY_PER_FRAME, "latent_channels": 8}), episodes, progress=False)


@pytest.mark.parametrize("config, latent_frames", [(TINY_PER_FRAME, 10), (TINY_WAN, 4)])
def test_encode_dataset_round_trip(tmp_path, config, latent_frames):
    tok = VideoTokenizer(**config).eval()
    episodes = synthetic_episodes(count=2)  # 10 frames each; wan pads to 13 = 1 + 4 * 3 -> 4 latent frames
    path = encode_dataset(tok, episodes, tmp_path / "latents.hdf5", batch_frames=4)
    loaded, attrs = load_encoded_dataset(path)
    assert attrs["temporal_compression"] == tok.temporal_compression and attrs["tokenizer_config"]["kind"] == config["kind"]
    assert len(loaded) == 2
    first = loaded[0]
    assert first.latents.shape == (4, latent_frames, 2 if config is TINY_WAN else 4, 2 if config is TINY_WAN else 4)
    assert first.success_step == 5 and first.success and first.num_frames == 10
    np.testing.assert_array_equal(first.actions, episodes[0].actions)
    with torch.no_grad():
        direct = tok.encode(episodes[0].frames[None, :1])[0, :, 0]
    np.testing.assert_allclose(first.latents[:, 0], direct.numpy(), atol=1e-5)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.mark.parametrize("name, latent_frames", [("wm_tokenizer_per_frame", 5), ("wm_tokenizer_wan", 2)])
def test_shipped_yaml_validates_and_builds(name, latent_frames):
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).parents[1] / "examples/embodiment/config/model" / f"{name}.yaml"
    cfg = validate(OmegaConf.load(path), TokenizerConfig, name)
    tok = VideoTokenizer(**dataclasses.asdict(cfg)).eval()
    with torch.no_grad():
        latents = tok.encode(random_video(1, 5, size=cfg.image_size))
    assert latents.shape == (1, 16, latent_frames, 8, 8)  # 16 x 8 x 8 per latent frame at 64x64


def test_split_is_by_episode_and_nested_across_fractions():
    from rlinf_wm.runners.train_tokenizer import split_episodes

    episodes = synthetic_episodes(count=10)
    train, held = split_episodes(episodes, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8 and not {id(e) for e in train} & {id(e) for e in held}
    _, held_more = split_episodes(episodes, 0.4, seed=3)
    assert {id(e) for e in held} <= {id(e) for e in held_more}
    with pytest.raises(ValueError, match="at least 2 episodes"):
        split_episodes(episodes[:1], 0.5, seed=0)


def test_a_diverging_run_stops_before_saving_non_finite_weights(tmp_path):
    episodes = synthetic_episodes()
    cfg = tiny_train_config(steps=12, lr=1e30, warmup_steps=0, checkpoint_every=1, keep_checkpoints=2)
    with pytest.raises(FloatingPointError, match=r"tokenizer (loss|gradient norm) is .* lower train\.tokenizer\.lr"):
        train_tokenizer(cfg, None, tmp_path / "run", TokenizerConfig(**TINY_PER_FRAME), episodes, progress=False)
    assert not (tmp_path / "run" / "model").exists()
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert checkpoints, "the steps before the divergence were checkpointed"
    for checkpoint in checkpoints:  # rotation kept only checkpoints of finite weights
        weights = load_model(VideoTokenizer, checkpoint / "model").state_dict()
        assert all(torch.isfinite(w).all() for w in weights.values()), checkpoint.name
