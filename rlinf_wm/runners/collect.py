"""Collect scripted-expert episodes (Meta-World or LIBERO, by ``env.env_type``) into HDF5 shards, resumably.

Episode ``g`` (global index) belongs to shard ``g // episodes_per_shard``; its kind (expert /
perturbed / random / noisy / near_miss), seed and initial state depend only on ``g`` and the config, so a rerun
regenerates exactly the episodes of missing shards. Shards are written atomically: a shard file
under its final name is complete, and complete shards are skipped on resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from rlinf_wm.config.env_schemas import NEAR_MISS_OFFSET, CollectConfig
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import Episode, read_episodes, write_episodes
from rlinf_wm.utils.io import write_json_atomic

logger = logging.getLogger(__name__)

STATISTICS_FILE = "dataset_statistics.json"
SUMMARY_FILE = "collection_summary.json"
# Settings added after shards were first written, with the value that older shards were collected with.
_IMPLICIT_SETTINGS = {"steps_after_success": 0, "noisy_fraction": 0.0, "noisy_expert_std": 1.0,
                      "near_miss_fraction": 0.0, "near_miss_offset": [list(c) for c in NEAR_MISS_OFFSET]}


@dataclass(frozen=True)
class EpisodePlan:
    shard: int
    slot: int  # position inside the shard
    global_index: int
    kind: str
    seed: int
    task_id: int  # reset id (the env wraps it modulo its number of initial states)


def shard_path(output_dir: str | Path, shard: int) -> Path:
    return Path(output_dir) / f"shard_{shard:05d}.hdf5"


def episode_seed(base_seed: int, global_index: int) -> int:
    return base_seed * 1_000_000 + global_index


def episode_kind(index: int, perturbed_fraction: float, random_fraction: float, noisy_fraction: float = 0.0,
                 near_miss_fraction: float = 0.0) -> str:
    """Kind of the ``index``-th episode of a collection: the shares hold closely even for a few episodes.

    A golden-ratio sequence spreads ``index`` evenly over [0, 1) (deterministic, so a resumed
    collection assigns the same kinds). Near-miss episodes take the top of [0, 1), so adding them leaves the
    first episode (u = 0.5) an expert demonstration, the one a 1-demo SFT policy learns from.
    """
    u = (0.5 + index * 0.6180339887498949) % 1.0
    if u >= 1.0 - near_miss_fraction:
        return "near_miss"
    if u < random_fraction:
        return "random"
    if u < random_fraction + perturbed_fraction:
        return "perturbed"
    if u < random_fraction + perturbed_fraction + noisy_fraction:
        return "noisy"
    return "expert"


def plan_episodes(cfg: CollectConfig) -> list[list[EpisodePlan]]:
    """Episodes per shard; the last shard may be smaller."""
    shards = []
    for shard in range(math.ceil(cfg.num_episodes / cfg.episodes_per_shard)):
        first = shard * cfg.episodes_per_shard
        last = min(first + cfg.episodes_per_shard, cfg.num_episodes)
        shards.append([
            EpisodePlan(
                shard=shard,
                slot=g - first,
                global_index=g,
                kind=episode_kind(g, cfg.perturbed_fraction, cfg.random_fraction, cfg.noisy_fraction,
                                  cfg.near_miss_fraction),
                seed=episode_seed(cfg.seed, g),
                task_id=g,  # cycles through the initial states evenly
            )
            for g in range(first, last)
        ])
    return shards


def collection_settings(cfg: CollectConfig) -> dict:
    """Everything that determines a shard's content; stored in each shard and compared on resume."""
    env = {k: v for k, v in dataclasses.asdict(cfg.env).items() if k not in ("num_envs",)}
    keys = ("seed", "episodes_per_shard", "expert_noise_std", "perturbed_fraction", "random_fraction",
            "steps_after_success", "noisy_fraction", "noisy_expert_std", "near_miss_fraction", "near_miss_offset")
    # Through JSON so it compares equal to what a shard stores (tuples become lists).
    return json.loads(json.dumps({"env": env, "collect": {k: getattr(cfg, k) for k in keys}}))


def _shard_status(path: Path, expected_episodes: int, settings: dict) -> bool:
    """True if ``path`` is a complete shard of this collection; raises if it is from other settings."""
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            stored = json.loads(f["data"].attrs["env_args"])
            count = sum(1 for name in f["data"] if name.startswith("demo_"))
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: existing shard is unreadable ({error}); delete it to recollect") from error
    diffs = []
    for section, values in settings.items():
        old = stored.get(section) or {}
        for key, value in values.items():
            stored_value = old.get(key, _IMPLICIT_SETTINGS.get(key))
            if stored_value != value:
                diffs.append(f"{section}.{key}: {stored_value!r} on disk vs {value!r} now")
    if diffs:
        raise ValueError(
            f"{path} was collected with different settings ({'; '.join(diffs)}); "
            "use another output_dir or delete the old shards"
        )
    # A shard with another episode count is from a different num_episodes: recollect it.
    return count == expected_episodes


def _read_kinds(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        data = f["data"]
        names = sorted((n for n in data if n.startswith("demo_")), key=lambda n: int(n.split("_")[1]))
        return [str(data[n].attrs.get("kind", "unknown")) for n in names]


def _collector_args(cfg: CollectConfig) -> tuple:
    """EpisodeCollector's arguments; near-miss offsets only where near-miss episodes are planned (Meta-World)."""
    near_miss_offset = cfg.near_miss_offset if cfg.near_miss_fraction > 0 else None
    return (dataclasses.asdict(cfg.env), cfg.expert_noise_std, cfg.steps_after_success, cfg.noisy_expert_std,
            near_miss_offset)


class _InProcessRecorder:
    """Runs episodes one by one in this process (``num_workers=0``; tests, notebooks)."""

    def __init__(self, cfg: CollectConfig) -> None:
        from rlinf_wm.workers.collector_worker import EpisodeCollector

        self.collector = EpisodeCollector(*_collector_args(cfg))

    def run(self, plans: deque, on_episode: Callable[[EpisodePlan, Episode], None]) -> None:
        while plans:
            plan = plans.popleft()
            on_episode(plan, self.collector.record(plan.kind, plan.seed, plan.task_id))

    def close(self) -> None:
        self.collector.close()


class _RayRecorder:
    """Keeps each collector actor busy with one episode at a time; results arrive in any order."""

    def __init__(self, cfg: CollectConfig) -> None:
        import ray

        from rlinf_wm.workers.collector_worker import CollectorWorker

        needed = cfg.num_workers * cfg.num_cpus_per_worker
        available = ray.cluster_resources().get("CPU", 0)
        if needed > available:
            raise ValueError(
                f"num_workers={cfg.num_workers} x num_cpus_per_worker={cfg.num_cpus_per_worker} needs {needed} CPUs, "
                f"the Ray cluster has {available}"
            )
        # Episodes are deterministic, so a crashed actor can be restarted and its episode retried.
        self.actors = [
            CollectorWorker.options(num_cpus=cfg.num_cpus_per_worker, max_restarts=2, max_task_retries=2).remote(
                *_collector_args(cfg)
            )
            for _ in range(cfg.num_workers)
        ]

    def run(self, plans: deque, on_episode: Callable[[EpisodePlan, Episode], None]) -> None:
        import ray

        idle = deque(self.actors)
        pending = {}
        while plans or pending:
            while idle and plans:
                actor, plan = idle.popleft(), plans.popleft()
                pending[actor.record.remote(plan.kind, plan.seed, plan.task_id)] = (plan, actor)
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            plan, actor = pending.pop(ready)
            on_episode(plan, ray.get(ready))
            idle.append(actor)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def run_collection(
    cfg: CollectConfig,
    on_shard_written: Callable[[int, Path], None] | None = None,
) -> dict:
    """Collect every missing shard of ``cfg``, then write statistics and a summary; returns the summary.

    ``num_workers=0`` records in this process; otherwise Ray must be initialised (collector actors).
    ``on_shard_written(shard, path)`` is called after each new shard is on disk.
    """
    from tqdm import tqdm

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = collection_settings(cfg)
    shards = plan_episodes(cfg)
    # SFT and the world model read every shard in the directory: one this collection does not plan would join them
    planned = {shard_path(output_dir, plans[0].shard).name for plans in shards}
    strays = sorted(p.name for p in output_dir.glob("shard_*.hdf5") if p.name not in planned)
    if strays:
        raise ValueError(f"output_dir {output_dir} holds shards this collection does not plan ({', '.join(strays[:3])}"
                         f"{' ...' if len(strays) > 3 else ''}; from a larger num_episodes?): delete them or choose "
                         "another output_dir")
    todo = [plans for plans in shards if not _shard_status(shard_path(output_dir, plans[0].shard), len(plans), settings)]
    done_before = cfg.num_episodes - sum(len(plans) for plans in todo)
    if done_before:
        logger.info("resuming: %d of %d episodes already on disk", done_before, cfg.num_episodes)

    if todo:
        recorder = _InProcessRecorder(cfg) if cfg.num_workers == 0 else _RayRecorder(cfg)
        received: dict[int, dict[int, Episode]] = defaultdict(dict)
        expected = {plans[0].shard: len(plans) for plans in todo}
        progress = tqdm(total=cfg.num_episodes, initial=done_before, desc="episodes", disable=not cfg.progress_bar)

        def on_episode(plan: EpisodePlan, episode: Episode) -> None:
            received[plan.shard][plan.slot] = episode
            progress.set_postfix(kind=plan.kind, success=episode.success, refresh=False)
            progress.update(1)
            if len(received[plan.shard]) == expected[plan.shard]:
                episodes = [received[plan.shard][slot] for slot in range(expected[plan.shard])]
                path = write_episodes(shard_path(output_dir, plan.shard), episodes, env_args={**settings, "shard": plan.shard})
                del received[plan.shard]
                if on_shard_written is not None:
                    on_shard_written(plan.shard, path)

        try:
            recorder.run(deque(plan for plans in todo for plan in plans), on_episode)
        finally:
            progress.close()
            recorder.close()

    return summarize(cfg, [shard_path(output_dir, plans[0].shard) for plans in shards])


def summarize(cfg: CollectConfig, paths: list[Path]) -> dict:
    """Write ``dataset_statistics.json`` (all actions) and ``collection_summary.json``; return the summary."""
    output_dir = Path(cfg.output_dir)
    by_kind: dict[str, list[tuple[bool, int]]] = defaultdict(list)
    actions = []
    for path in paths:
        episodes = read_episodes(path, load_frames=False)
        for kind, episode in zip(_read_kinds(path), episodes):
            by_kind[kind].append((episode.success, episode.length))
            actions.append(episode.actions)
    ActionStatistics.from_actions(np.concatenate(actions)).save(output_dir / STATISTICS_FILE)
    everything = [item for items in by_kind.values() for item in items]
    summary = {
        "task": cfg.task,
        "output_dir": str(output_dir),
        "episodes": len(everything),
        "steps": int(sum(length for _, length in everything)),
        "success_rate": float(np.mean([s for s, _ in everything])),
        "by_kind": {
            kind: {
                "episodes": len(items),
                "success_rate": float(np.mean([s for s, _ in items])),
                "mean_length": float(np.mean([length for _, length in items])),
            }
            for kind, items in sorted(by_kind.items())
        },
    }
    write_json_atomic(output_dir / SUMMARY_FILE, summary)
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"collected {summary['episodes']} episodes ({summary['steps']} steps) of {summary['task']} "
        f"in {summary['output_dir']}: success rate {summary['success_rate']:.2f}"
    ]
    for kind, row in summary["by_kind"].items():
        lines.append(
            f"  {kind:<10} {row['episodes']:>5} episodes  success {row['success_rate']:.2f}  mean length {row['mean_length']:.1f}"
        )
    return "\n".join(lines)
