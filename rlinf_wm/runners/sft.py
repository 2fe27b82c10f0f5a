"""Supervised fine-tuning of a TinyVLA on expert demonstrations (behaviour cloning on action tokens).

Every step of every selected episode starts one training window: the frame before action ``t`` and
the ``K`` actions ``t .. t+K-1`` as tokens. Steps past the episode end are masked out of the loss
(``future_padding: mask``) or filled with the last action (``repeat``). The loss is the
cross-entropy of every (chunk step, action dimension) categorical, averaged over valid entries.

Run directory (``output_dir``)::

    model/                      final policy (config.json + model.safetensors)
    checkpoints/step_NNNNNNN/   model/ + state.pt (optimizer, scheduler, RNG, step)
    checkpoints/latest.json     the newest complete checkpoint, written last (so a crash keeps the old one)
    tensorboard/                loss, token accuracy, action L1 error, learning rate
    config.yaml, summary.json
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rlinf_wm.config.policy_schema import SFTConfig, SFTRunConfig, TinyVLAConfig
from rlinf_wm.data import ActionStatistics, Episode, load_episodes
from rlinf_wm.models.policy import TinyVLA
from rlinf_wm.utils.checkpoint import load_model, load_state, save_model_atomic, save_state_atomic
from rlinf_wm.utils.io import atomic_path, read_json, write_json_atomic

logger = logging.getLogger(__name__)

STATISTICS_FILE = "dataset_statistics.json"


# --- data ----------------------------------------------------------------------------------------
def select_demonstrations(episodes: list[Episode], num_demos: int, source: str = "data") -> list[Episode]:
    """The first ``num_demos`` successful expert episodes, in file order (-1 = all of them), each cut after its
    success step (a collection may record steps past success; the policy's episodes end there).

    An episode whose attrs carry ``kind`` (the collector marks ``expert`` vs. e.g. ``random``) must
    be ``expert``; without the attr every successful episode counts as a demonstration.
    """
    def kind(ep: Episode) -> str:
        value = ep.attrs.get("kind", "expert")
        return value.decode() if isinstance(value, bytes) else str(value)

    demos = [ep.until_success() for ep in episodes if ep.success and kind(ep) == "expert"]
    if not demos:
        raise ValueError(f"{source}: none of {len(episodes)} episodes is a successful expert demonstration")
    if num_demos == -1:
        return demos
    if num_demos > len(demos):
        raise ValueError(f"sft.num_demos={num_demos} but {source} holds only {len(demos)} successful expert episodes")
    return demos[:num_demos]


@dataclass
class ChunkDataset:
    """All training windows, in memory."""

    frames: np.ndarray  # uint8 [N, H, W, 3]: the frame before the window's first action
    tokens: np.ndarray  # int64 [N, K, A]
    mask: np.ndarray  # bool [N, K]: chunk step lies inside the episode
    instruction_ids: torch.Tensor  # long [N, L]

    def __len__(self) -> int:
        return len(self.frames)


def build_chunk_dataset(episodes: list[Episode], policy: TinyVLA, future_padding: str = "mask") -> ChunkDataset:
    k = policy.chunk_size
    frames, tokens, masks, instructions = [], [], [], []
    for ep in episodes:
        t = ep.length
        if t == 0:
            continue
        index = np.arange(t)[:, None] + np.arange(k)[None, :]  # [T, K]
        valid = index < t
        # Past the end: the last action (its loss is masked unless future_padding == "repeat").
        window = ep.actions[np.minimum(index, t - 1)]  # [T, K, A]
        frames.append(ep.frames[:t])
        tokens.append(policy.tokenize_actions(window))
        masks.append(valid if future_padding == "mask" else np.ones_like(valid))
        instructions += [ep.instruction] * t
    if not frames:
        raise ValueError("no training windows: every selected episode is empty")
    return ChunkDataset(
        frames=np.concatenate(frames),
        tokens=np.concatenate(tokens),
        mask=np.concatenate(masks),
        instruction_ids=policy.tokenize_instructions(instructions),
    )


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad by ``pad`` pixels, crop back at a random offset per image."""
    if pad <= 0:
        return images
    b, h, w, _ = images.shape
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [B, 1, W]
    shifted = padded[torch.arange(b)[:, None, None], :, rows, cols]  # [B, H, W, C]
    return shifted.to(torch.uint8)


def chunk_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Masked cross-entropy over ``[B, K, A]`` categoricals, plus accuracy / L1 metrics (normalised units)."""
    num_bins = logits.shape[-1]
    per_entry = F.cross_entropy(
        logits.reshape(-1, num_bins).float(), tokens.reshape(-1), reduction="none", label_smoothing=label_smoothing
    ).view(tokens.shape)
    weight = mask[..., None].expand_as(tokens).float()
    denominator = weight.sum().clamp(min=1.0)
    loss = (per_entry * weight).sum() / denominator
    with torch.no_grad():
        predicted = logits.argmax(-1)
        accuracy = ((predicted == tokens).float() * weight).sum() / denominator
        l1 = ((predicted - tokens).abs().float() * (2.0 / num_bins) * weight).sum() / denominator
    return loss, {"loss": loss.item(), "token_accuracy": accuracy.item(), "action_l1": l1.item()}


# --- run directory ---------------------------------------------------------------------------------
def _checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    pointer = _checkpoint_root(Path(output_dir)) / "latest.json"
    if not pointer.is_file():
        return None
    directory = _checkpoint_root(Path(output_dir)) / read_json(pointer)["name"]
    if not (directory / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} points to {directory}, which has no state.pt")
    return directory


def _save_checkpoint(output_dir: Path, model: TinyVLA, state: dict, keep: int) -> Path:
    root = _checkpoint_root(output_dir)
    directory = root / f"step_{state['step']:07d}"
    save_model_atomic(model, directory / "model")
    save_state_atomic(state, directory / "state.pt")
    write_json_atomic(root / "latest.json", {"name": directory.name, "step": state["step"]})
    # this run's checkpoints only: later steps in the directory are another run's (and names sort as steps do)
    for old in sorted(p for p in root.glob("step_*") if p.name <= directory.name)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


# --- training --------------------------------------------------------------------------------------
def load_statistics(run: SFTRunConfig, demos: list[Episode]) -> ActionStatistics:
    path = Path(run.statistics_path) if run.statistics_path else Path(run.data_dir) / STATISTICS_FILE
    if path.is_file():
        return ActionStatistics.load(path)
    logger.warning("%s not found: computing action statistics from the %d selected demos", path, len(demos))
    return ActionStatistics.from_actions(np.concatenate([ep.actions for ep in demos]))


def complete_model_config(model: TinyVLAConfig, demos: list[Episode], stats: ActionStatistics) -> TinyVLAConfig:
    """Fill image size, action dim and q01/q99 from the data (a value set in the config must agree)."""
    height, width = demos[0].frames.shape[1:3]
    if height != width:
        raise ValueError(f"TinyVLA expects square images, the data has {height}x{width}")
    action_dim = demos[0].actions.shape[1]
    if stats.action_dim != action_dim:
        raise ValueError(f"dataset statistics have {stats.action_dim} action dims, the data has {action_dim}")
    for name, value in (("image_size", height), ("action_dim", action_dim)):
        if getattr(model, name) not in (None, value):
            raise ValueError(f"model.{name}={getattr(model, name)} but the data has {value}")
    return dataclasses.replace(
        model,
        image_size=int(height),
        action_dim=int(action_dim),
        action_q01=[float(v) for v in stats.q01],
        action_q99=[float(v) for v in stats.q99],
    )


def run_sft(run: SFTRunConfig, resolved_config: dict | None = None, show_progress: bool = True) -> dict:
    """Train (or resume) and write the run directory; returns the summary dict."""
    cfg: SFTConfig = run.sft
    output_dir = Path(run.output_dir)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()

    episodes = load_episodes(run.data_dir)
    demos = select_demonstrations(episodes, cfg.num_demos, source=str(run.data_dir))
    stats = load_statistics(run, demos)
    model_config = complete_model_config(run.model, demos, stats)

    checkpoint = latest_checkpoint(output_dir) if cfg.resume else None
    if checkpoint is not None:
        model = load_model(TinyVLA, checkpoint / "model")
        if dataclasses.asdict(model.config) != dataclasses.asdict(model_config):
            raise ValueError(
                f"{checkpoint} was trained with a different model config or data statistics; "
                f"use a new output_dir or sft.resume=false"
            )
    else:
        model = TinyVLA(model_config)
    model.train()

    dataset = build_chunk_dataset(demos, model, cfg.future_padding)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, cfg.warmup_steps, cfg.max_steps)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if checkpoint is not None:
        state = load_state(checkpoint / "state.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step = int(state["step"])
        logger.info("resumed from %s at step %d", checkpoint, step)

    output_dir.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        _write_yaml_atomic(output_dir / "config.yaml", resolved_config)
    from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to import

    writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=step if step else None)
    frames = torch.from_numpy(dataset.frames)
    tokens = torch.from_numpy(dataset.tokens)
    mask = torch.from_numpy(dataset.mask)
    metrics: dict = {}
    first_loss = None
    progress = tqdm(total=cfg.max_steps, initial=step, desc="sft", disable=not show_progress, dynamic_ncols=True)
    while step < cfg.max_steps:
        index = torch.randint(0, len(dataset), (cfg.batch_size,), generator=generator)
        images = random_shift(frames[index], cfg.random_shift, generator)
        logits, _ = model(images, dataset.instruction_ids[index])
        loss, metrics = chunk_loss(logits, tokens[index], mask[index], cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        first_loss = metrics["loss"] if first_loss is None else first_loss
        progress.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            metrics.update(grad_norm=float(grad_norm), lr=scheduler.get_last_lr()[0])
            for name, value in metrics.items():
                writer.add_scalar(f"sft/{name}", value, step)
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['token_accuracy']:.2f}")
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
            }
            _save_checkpoint(output_dir, model, state, cfg.keep_checkpoints)
    progress.close()
    writer.close()

    model.eval()
    save_model_atomic(model, output_dir / "model")
    summary = {
        "task": run.task,
        "num_demos": len(demos),
        "num_windows": len(dataset),
        "steps": step,
        "first_loss": first_loss,
        "final_metrics": metrics,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "policy_path": str(output_dir / "model"),
        "chunk_size": model.chunk_size,
    }
    write_json_atomic(output_dir / "summary.json", summary)
    return summary


def _write_yaml_atomic(path: Path, data: dict) -> None:
    from omegaconf import OmegaConf

    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(data)))
