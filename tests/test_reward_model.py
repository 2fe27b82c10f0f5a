import shutil

import numpy as np
import pytest
import torch

from rlinf_wm.config.validate import ConfigError, validate
from rlinf_wm.config.world_model_schema import RewardModelConfig, RewardTrainConfig
from rlinf_wm.data.trajectories import Episode
from rlinf_wm.data.trajectories import success_frame_labels, success_step
from rlinf_wm.models.reward_model import RewardModel, stack_frame_history
from rlinf_wm.runners.reward_scoring import label_episodes, roc_auc
from rlinf_wm.runners.train_reward import train_reward_model
from rlinf_wm.utils.checkpoint import load_model, save_model_atomic

TINY = RewardModelConfig(image_size=32, embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1])


def square_episodes(count=6, length=11, size=32, seed=0):
    """Noisy frames with a square that turns bright at the success step (dark before it)."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(count):
        success_at = int(rng.integers(2, length - 2))
        frames = rng.integers(0, 60, (length + 1, size, size, 3), dtype=np.uint8)
        y, x = rng.integers(4, size - 12, 2)
        for j in range(length + 1):
            frames[j, y : y + 8, x : x + 8] = 230 if j > success_at else 70
        rewards = np.zeros(length, np.float32)
        rewards[success_at] = 1.0
        episodes.append(
            Episode(
                frames=frames,
                actions=np.zeros((length, 4), np.float32),
                rewards=rewards,
                dones=np.arange(length) == length - 1,
                success=True,
                instruction="light the square",
                seed=e,
            )
        )
    return episodes


def test_success_step_and_frame_labels():
    assert success_step(np.array([0, 0, 1, 0], np.float32)) == 2
    # frame j is the observation before action j: success reached at step 2 shows from frame 3 on
    np.testing.assert_array_equal(success_frame_labels(5, 2), [False, False, False, True, True])
    assert success_step(np.zeros(4), np.zeros(4, bool), success=False) == -1
    assert not success_frame_labels(5, -1).any()
    # success only flagged by the episode attribute: the first done step counts
    assert success_step(np.zeros(4), np.array([0, 0, 1, 1], bool), success=True) == 2
    assert success_step(np.zeros(4), np.zeros(4, bool), success=True) == 3


def test_labels_from_episodes_follow_rewards():
    episodes = square_episodes(count=2)
    data = label_episodes(episodes, num_frames=1)
    assert len(data.labels) == sum(len(ep.frames) for ep in episodes)
    first = episodes[0]
    step = int(np.flatnonzero(first.rewards)[0])
    np.testing.assert_array_equal(data.labels[: len(first.frames)], np.arange(len(first.frames)) > step)
    # a sample's frame is the episode frame itself
    np.testing.assert_array_equal(data.inputs(np.array([3]))[0, 0], first.frames[3])


def test_frame_history_repeats_first_frame():
    history = stack_frame_history(np.arange(4), 3)
    np.testing.assert_array_equal(history, [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]])


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.random(50) < 0.3
    scores = np.round(rng.random(50), 1)  # with ties
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairwise)
    assert np.isnan(roc_auc(np.ones(3, bool), np.ones(3)))


def test_predict_success_shapes_threshold_and_errors():
    model = RewardModel(**vars(TINY)).eval()
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    assert model(frames).shape == (3,)
    assert model.predict_success(frames).dtype == torch.bool
    prob = model.predict_proba(frames)
    model.threshold = float(prob[0]) + 1e-4
    assert not model.predict_success(frames).any()
    model.threshold = float(prob[0]) - 1e-4
    assert model.predict_success(frames).all()
    with pytest.raises(ValueError, match="H = W = 32"):
        model(np.zeros((1, 64, 64, 3), np.uint8))
    stacked = RewardModel(**{**vars(TINY), "num_frames": 2})
    assert stacked(np.zeros((2, 2, 32, 32, 3), np.uint8)).shape == (2,)
    with pytest.raises(ValueError, match="\\[B, 2, H, W, 3\\]"):
        stacked(frames)


def test_save_load_identical_outputs(tmp_path):
    model = RewardModel(**vars(TINY)).eval()
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    save_model_atomic(model, tmp_path / "reward")
    loaded = load_model(RewardModel, tmp_path / "reward").eval()
    assert torch.equal(model(frames), loaded(frames))
    (tmp_path / "reward" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="could not load RewardModel"):
        load_model(RewardModel, tmp_path / "reward")


def test_schema_rejects_bad_values():
    with pytest.raises(ConfigError, match="reward.depths"):
        validate({"hidden_sizes": [8, 16], "depths": [1]}, RewardModelConfig, "reward")
    with pytest.raises(ConfigError, match="reward.threshold"):
        validate({"threshold": 1.5}, RewardModelConfig, "reward")


def tiny_train(**overrides):
    base = dict(steps=30, batch_size=16, lr=3e-3, eval_every=10, checkpoint_every=10, log_every=5,
                holdout_fraction=0.34, augment_shift=2, num_threads=1)
    return RewardTrainConfig(**{**base, **overrides})


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_learns_separable_task_with_minority_success(tmp_path, precision):
    episodes = square_episodes()
    metrics = train_reward_model(tiny_train(precision=precision), None, tmp_path / "run", TINY, episodes, progress=False)
    assert metrics["heldout_positive_fraction"] < 0.6  # success frames are not the majority
    assert metrics["heldout_accuracy"] > 0.95 and metrics["heldout_balanced_accuracy"] > 0.95
    assert metrics["heldout_auc"] > 0.98
    model = load_model(RewardModel, tmp_path / "run" / "model")
    bright = square_episodes(count=1, seed=5)[0]
    step = success_step(bright.rewards)
    predicted = model.predict_success(bright.frames).numpy()
    assert (predicted == (np.arange(len(bright.frames)) > step)).mean() > 0.9
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # mixed precision: float32 weights


def test_a_bad_training_precision_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.reward\.precision"):
        tiny_train(precision="float16").check("train.reward")


def test_refuses_data_without_success_frames(tmp_path):
    episodes = square_episodes(count=3)
    for ep in episodes:
        ep.rewards[:] = 0.0
        ep.success = False
    with pytest.raises(ValueError, match="0 success"):
        train_reward_model(tiny_train(), None, tmp_path / "run", TINY, episodes, progress=False)


def test_resume_continues_from_saved_step(tmp_path):
    episodes = square_episodes(count=4)
    cfg = tiny_train(steps=8, checkpoint_every=4, eval_every=100)
    train_reward_model(cfg, None, tmp_path / "run", TINY, episodes, progress=False)
    reference = load_model(RewardModel, tmp_path / "run" / "model").state_dict()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000008")
    shutil.rmtree(tmp_path / "run" / "model")
    metrics = train_reward_model(cfg, None, tmp_path / "run", TINY, episodes, progress=False)
    assert metrics["steps"] == 8
    # resumed at step 4 with optimizer, schedule and sampling RNG restored: same weights as the straight run
    for key, value in load_model(RewardModel, tmp_path / "run" / "model").state_dict().items():
        assert torch.allclose(value.float(), reference[key].float(), atol=1e-5), key


def test_shipped_yaml_validates_and_builds():
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).parents[1] / "examples/embodiment/config/model/wm_reward_resnet.yaml"
    cfg = validate(OmegaConf.load(path), RewardModelConfig, "reward_model")
    model = RewardModel(**vars(cfg)).eval()
    assert model(np.zeros((2, cfg.image_size, cfg.image_size, 3), np.uint8)).shape == (2,)


def test_reconstruction_augmentation_covers_all_success_frames(tmp_path):
    from rlinf_wm.models.tokenizer import VideoTokenizer
    from rlinf_wm.runners.train_reward import reconstruct_subset

    tokenizer = VideoTokenizer(image_size=32, latent_channels=4, block_out_channels=[8, 16], norm_num_groups=8)
    data = label_episodes(square_episodes(count=2), num_frames=2)
    num_pos = int(data.labels.sum())
    recon = reconstruct_subset(tokenizer, data, max_samples=2 * num_pos + 2, rng=np.random.default_rng(0))
    assert set(np.flatnonzero(data.labels)) <= set(recon.samples) and len(recon.samples) == 2 * num_pos + 2
    # a small budget is split between the classes, so both stay measurable
    small = reconstruct_subset(tokenizer, data, max_samples=4, rng=np.random.default_rng(0))
    assert data.labels[small.samples].sum() == 2 and len(small.samples) == 4
    sample = recon.samples[:1]
    real = data.inputs(sample)
    mixed = data.inputs(sample, recon, use_recon=np.array([True]))
    assert mixed.shape == real.shape and not np.array_equal(mixed, real)  # an untrained tokenizer blurs
    np.testing.assert_array_equal(data.inputs(sample, recon, use_recon=np.array([False])), real)

    metrics = train_reward_model(
        tiny_train(steps=4, reconstruction_max_frames=8), None, tmp_path / "run", TINY, square_episodes(),
        tokenizer=tokenizer, tokenizer_reconstruction_prob=0.5, progress=False,
    )
    assert 0.0 <= metrics["heldout_reconstructed_auc"] <= 1.0


def test_a_diverging_run_stops_before_saving_non_finite_weights(tmp_path):
    cfg = tiny_train(steps=20, lr=1e30, checkpoint_every=1, keep_checkpoints=2, eval_every=100)
    with pytest.raises(FloatingPointError, match=r"reward model (loss|gradient norm) is .* lower train\.reward\.lr"):
        train_reward_model(cfg, None, tmp_path / "run", TINY, square_episodes(count=4), progress=False)
    assert not (tmp_path / "run" / "model").exists()
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step_*"):
        weights = load_model(RewardModel, checkpoint / "model").state_dict()
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()), checkpoint.name


def test_reconstruction_augmentation_never_mixes_real_and_reconstructed_frames_in_a_sample():
    from rlinf_wm.runners.reward_scoring import LabelledFrames, Reconstructions

    frames = np.arange(4, dtype=np.uint8)[:, None, None, None].repeat(3, axis=-1)  # frame i has value i
    data = LabelledFrames(frames, np.zeros(4, bool), history=np.array([[0, 0], [0, 1], [1, 2], [2, 3]]))
    # frames 1 and 2 reconstructed (values 101, 102): sample 2 = frames [1, 2] is complete, samples 1 and 3 are not
    recon = Reconstructions(rows=np.array([-1, 0, 1, -1]), frames=frames[1:3] + 100, samples=np.array([2]))
    out = data.inputs(np.array([1, 2, 3]), recon, use_recon=np.array([True, True, True]))[..., 0, 0, 0]
    assert out.tolist() == [[0, 1], [101, 102], [2, 3]]
    assert data.inputs(np.array([2]), recon, use_recon=np.array([False]))[..., 0, 0, 0].tolist() == [[1, 2]]
