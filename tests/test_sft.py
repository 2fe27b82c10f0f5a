import json

import numpy as np
import pytest
import torch

from rlinf_wm.config.policy_schema import SFTConfig, SFTRunConfig, TinyVLAConfig
from rlinf_wm.data import ActionStatistics, Episode, write_episodes
from rlinf_wm.models.policy import TinyVLA, load_policy
from rlinf_wm.runners.sft import (
    build_chunk_dataset,
    chunk_loss,
    latest_checkpoint,
    random_shift,
    run_sft,
    select_demonstrations,
)
from rlinf_wm.utils.checkpoint import load_model

SIZE, LENGTH, NUM_EPISODES = 16, 6, 4


def synthetic_episode(index: int, success: bool = True, kind: str | None = None) -> Episode:
    """Solid frames whose red channel names the episode and green channel the step: the action is a
    fixed function of (episode, step), so a policy that reads the image can fit it exactly."""
    rng = np.random.default_rng(100 + index)
    frames = np.zeros((LENGTH + 1, SIZE, SIZE, 3), np.uint8)
    frames[..., 0] = (60 * index) % 256
    frames[..., 1] = (40 * np.arange(LENGTH + 1))[:, None, None]
    actions = rng.uniform(-1, 1, (LENGTH, 4)).astype(np.float32)
    dones = np.zeros(LENGTH, bool)
    dones[-1] = True
    return Episode(
        frames=frames, actions=actions, rewards=np.zeros(LENGTH, np.float32), dones=dones, success=success,
        instruction="open the drawer", task="drawer-open-v3", seed=index,
        attrs={} if kind is None else {"kind": kind},
    )


def tiny_model_config(**overrides) -> TinyVLAConfig:
    values = dict(chunk_size=3, num_bins=16, encoder_channels=[8, 16], image_grid=2, hidden_dim=32, num_layers=2,
                  num_heads=2, max_instruction_length=16)
    values.update(overrides)
    return TinyVLAConfig(**values)


@pytest.fixture
def data_dir(tmp_path):
    directory = tmp_path / "data"
    # A successful non-expert episode (the collector's "perturbed" kind) must not be used as a demo.
    episodes = [synthetic_episode(i) for i in range(NUM_EPISODES)] + [
        synthetic_episode(9, success=False), synthetic_episode(10, kind="perturbed")]
    write_episodes(directory / "demos.hdf5", episodes)
    ActionStatistics.from_actions(np.concatenate([ep.actions for ep in episodes])).save(
        directory / "dataset_statistics.json"
    )
    return directory


def make_run(data_dir, output_dir, model: TinyVLAConfig | None = None, **sft_overrides) -> SFTRunConfig:
    sft = dict(num_demos=NUM_EPISODES, batch_size=24, max_steps=300, learning_rate=3e-3, warmup_steps=10,
               random_shift=0, log_every=10, save_every=100, seed=0, num_threads=1)
    sft.update(sft_overrides)
    return SFTRunConfig(task="drawer-open-v3", artifacts_dir=str(data_dir.parent), data_dir=str(data_dir),
                        output_dir=str(output_dir), model=model or tiny_model_config(), sft=SFTConfig(**sft))


def test_select_demonstrations_keeps_successful_expert_episodes_in_order():
    episodes = [synthetic_episode(0, kind="expert"), synthetic_episode(1, success=False),
                synthetic_episode(2, kind="random"), synthetic_episode(3), synthetic_episode(4, kind="expert")]
    assert [ep.seed for ep in select_demonstrations(episodes, -1)] == [0, 3, 4]
    assert [ep.seed for ep in select_demonstrations(episodes, 2)] == [0, 3]
    with pytest.raises(ValueError, match="num_demos=4 but data holds only 3"):
        select_demonstrations(episodes, 4)
    with pytest.raises(ValueError, match="none of 1 episodes"):
        select_demonstrations([synthetic_episode(1, success=False)], 1)
    past_success = synthetic_episode(5)
    past_success.rewards[2], past_success.dones[2:] = 1.0, True  # solved at step 2, recorded on past it
    (demo,) = select_demonstrations([past_success], -1)
    assert demo.length == 3 and len(demo.frames) == 4  # the demonstration ends where the task was solved


@pytest.mark.parametrize("padding", ["mask", "repeat"])
def test_chunk_windows_start_at_every_step_and_pad_past_the_end(padding):
    episode = synthetic_episode(0)
    stats = ActionStatistics.from_actions(episode.actions)
    config = tiny_model_config(image_size=SIZE, action_dim=4, action_q01=stats.q01.tolist(),
                               action_q99=stats.q99.tolist())
    policy = TinyVLA(config)
    dataset = build_chunk_dataset([episode], policy, padding)
    assert len(dataset) == LENGTH and dataset.tokens.shape == (LENGTH, 3, 4)
    expected = policy.tokenize_actions(episode.actions)
    assert np.array_equal(dataset.tokens[2], expected[2:5])
    assert np.array_equal(dataset.tokens[LENGTH - 1], np.repeat(expected[-1:], 3, axis=0))
    assert np.array_equal(dataset.frames, episode.frames[:LENGTH])
    if padding == "mask":
        assert dataset.mask[LENGTH - 2].tolist() == [True, True, False]
        assert dataset.mask[: LENGTH - 2].all()
    else:
        assert dataset.mask.all()


def test_masked_loss_ignores_padded_steps():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, 1] = 10.0  # step 0 predicts token 1 confidently; step 1 is wrong but masked
    tokens = torch.tensor([[[1], [3]]])
    loss, metrics = chunk_loss(logits, tokens, torch.tensor([[True, False]]))
    assert loss.item() < 1e-3 and metrics["token_accuracy"] == 1.0
    loss_all, _ = chunk_loss(logits, tokens, torch.tensor([[True, True]]))
    assert loss_all.item() > 0.5


def test_random_shift_translates_each_image():
    generator = torch.Generator().manual_seed(0)
    images = torch.arange(2 * 8 * 8 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 8, 8, 3)
    assert torch.equal(random_shift(images, 0, generator), images)
    shifted = random_shift(images, 2, generator)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="replicate")
    for b in range(2):
        crops = [padded[b, :, dy:dy + 8, dx:dx + 8].permute(1, 2, 0) for dy in range(5) for dx in range(5)]
        assert any(torch.equal(crop.to(torch.uint8), shifted[b]) for crop in crops)


def test_sft_reduces_loss_and_overfits_a_learnable_mapping(data_dir, tmp_path):
    summary = run_sft(make_run(data_dir, tmp_path / "sft"), show_progress=False)
    assert summary["num_demos"] == NUM_EPISODES and summary["steps"] == 300
    assert summary["num_windows"] == NUM_EPISODES * LENGTH
    assert summary["final_metrics"]["loss"] < 0.25 * summary["first_loss"]
    policy = load_policy(tmp_path / "sft")
    demos = select_demonstrations(
        [synthetic_episode(i) for i in range(NUM_EPISODES)], -1
    )
    dataset = build_chunk_dataset(demos, policy)
    # Greedy actions reproduce the demonstrations' tokens on the training frames.
    logits, _ = policy(torch.from_numpy(dataset.frames), dataset.instruction_ids)
    predicted = logits.argmax(-1).numpy()
    accuracy = (predicted == dataset.tokens)[dataset.mask].mean()
    assert accuracy > 0.95
    saved = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert saved["steps"] == 300
    assert any((tmp_path / "sft" / "tensorboard").iterdir())


def test_sft_trains_the_gaussian_head_towards_the_demonstrated_bins(data_dir, tmp_path):
    # The discretised Gaussian fits more slowly than free logits (one mean and width per dimension; measured
    # here: half the greedy tokens within one bin after these 300 steps, against > 95 % exact for free logits).
    run = make_run(data_dir, tmp_path / "sft", model=tiny_model_config(action_head="gaussian"))
    summary = run_sft(run, show_progress=False)
    assert summary["final_metrics"]["loss"] < 0.5 * summary["first_loss"]
    policy = load_policy(tmp_path / "sft")
    assert policy.config.action_head == "gaussian"
    dataset = build_chunk_dataset(select_demonstrations([synthetic_episode(i) for i in range(NUM_EPISODES)], -1), policy)
    logits, _ = policy(torch.from_numpy(dataset.frames), dataset.instruction_ids)
    off_by = np.abs(logits.argmax(-1).numpy() - dataset.tokens)[dataset.mask]
    assert (off_by <= 1).mean() > 0.4  # chance (16 bins): under 0.2


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(data_dir, tmp_path):
    run = make_run(data_dir, tmp_path / "sft", max_steps=20, save_every=10, keep_checkpoints=3, random_shift=2)
    run_sft(run, show_progress=False)
    uninterrupted = load_model(TinyVLA, tmp_path / "sft" / "model").state_dict()
    assert latest_checkpoint(tmp_path / "sft").name == "step_0000020"

    # Simulate a crash right after the step-10 checkpoint.
    (tmp_path / "sft" / "checkpoints" / "latest.json").write_text(json.dumps({"name": "step_0000010", "step": 10}))
    resumed_summary = run_sft(run, show_progress=False)
    assert resumed_summary["steps"] == 20
    resumed = load_model(TinyVLA, tmp_path / "sft" / "model").state_dict()
    for name, tensor in uninterrupted.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6), name


def test_checkpoint_rotation_keeps_this_runs_checkpoints(data_dir, tmp_path):
    for old in ("step_0001500", "step_0002000"):  # a longer earlier run's, in the same directory
        (tmp_path / "sft" / "checkpoints" / old).mkdir(parents=True)
    run_sft(make_run(data_dir, tmp_path / "sft", max_steps=3, save_every=1, keep_checkpoints=2), show_progress=False)
    assert latest_checkpoint(tmp_path / "sft").name == "step_0000003"
    assert sorted(p.name for p in (tmp_path / "sft" / "checkpoints").glob("step_*")) == [
        "step_0000002", "step_0000003", "step_0001500", "step_0002000"]


def test_resume_refuses_a_checkpoint_from_a_different_model(data_dir, tmp_path):
    run_sft(make_run(data_dir, tmp_path / "sft", max_steps=2, save_every=1), show_progress=False)
    other = make_run(data_dir, tmp_path / "sft", max_steps=4)
    other.model = tiny_model_config(hidden_dim=64)
    with pytest.raises(ValueError, match="different model config"):
        run_sft(other, show_progress=False)


def test_too_few_demos_is_a_clear_error(data_dir, tmp_path):
    with pytest.raises(ValueError, match="num_demos=50"):
        run_sft(make_run(data_dir, tmp_path / "sft", num_demos=50), show_progress=False)
