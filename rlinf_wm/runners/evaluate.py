"""Evaluate a policy checkpoint in a real simulator over ``N`` episodes, spread over Ray workers.

Episode ``i`` resets with initial-state id ``eval.first_reset_id + i`` (Meta-World wraps ids modulo
its 50 ML1 initial states, so 100 episodes visit each state twice). Workers take contiguous
slices of episodes; results are gathered in episode order, so with mean actions (``eval.deterministic``)
the summary does not depend on the number of workers. Sampled actions come from one generator per worker
(seeded from ``eval.seed`` and the worker's index) shared by its batch of envs: a sampled evaluation repeats
exactly with the same ``eval.num_workers`` and ``env.eval.num_envs``, and draws other samples with others.
Writes ``summary.json`` (success rate with a 95 % Wilson interval, lengths, per episode results) and a few
videos into ``eval.output_dir``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlinf_wm.config.policy_schema import EvalConfig, EvalRunConfig
from rlinf_wm.data.trajectories import write_episodes
from rlinf_wm.models.policy import resolve_policy_dir
from rlinf_wm.utils.io import write_json_atomic
from rlinf_wm.utils.media import write_video
from rlinf_wm.utils.stats import wilson_interval
from rlinf_wm.workers.eval_worker import EvalWorker

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes/shard_00000.hdf5"  # a trajectory directory of one shard: load_episodes(<output_dir>/episodes)


def split_episodes(num_episodes: int, num_workers: int) -> list[range]:
    """Contiguous, near-equal slices of ``range(num_episodes)``, one per worker (none empty)."""
    num_workers = max(1, min(num_workers, num_episodes))
    bounds = np.linspace(0, num_episodes, num_workers + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    successes = sum(ep["success"] for ep in episodes)
    outcomes_by_state: dict[int, set[bool]] = {}
    for ep in episodes:
        outcomes_by_state.setdefault(ep.get("initial_state", ep["reset_id"]), set()).add(bool(ep["success"]))
    lengths = np.array([ep["length"] for ep in episodes], float)
    success_lengths = np.array([ep["length"] for ep in episodes if ep["success"]], float)
    low, high = wilson_interval(successes, len(episodes))
    return {
        "num_episodes": len(episodes),
        "num_successes": int(successes),
        "success_rate": successes / len(episodes),
        "success_rate_ci95": [low, high],
        "mean_episode_length": float(lengths.mean()),
        "mean_success_length": float(success_lengths.mean()) if len(success_lengths) else None,
        # Deterministic episodes from one initial state repeat each other: this is the effective sample.
        "num_distinct_initial_states": len(outcomes_by_state),
        # GRPO learns only from initial states whose episodes differ in outcome: with "never" and "always"
        # states dominating, a group of rollouts from them carries no advantage.
        "initial_states_by_outcome": {
            "always": sum(o == {True} for o in outcomes_by_state.values()),
            "sometimes": sum(o == {True, False} for o in outcomes_by_state.values()),
            "never": sum(o == {False} for o in outcomes_by_state.values()),
        },
    }


def run_evaluation(run: EvalRunConfig, show_progress: bool = True) -> dict[str, Any]:
    cfg: EvalConfig = run.eval
    env_cfg = dataclasses.asdict(run.env.eval) if dataclasses.is_dataclass(run.env.eval) else dict(run.env.eval)
    if cfg.save_episodes and "render_every_step" in env_cfg:
        env_cfg["render_every_step"] = True  # a frame per step, as collected trajectories have
    policy_path = str(resolve_policy_dir(run.policy_path))
    output_dir = Path(cfg.output_dir)
    started = time.perf_counter()
    slices = split_episodes(cfg.num_episodes, cfg.num_workers)
    jobs = [
        dict(reset_ids=[cfg.first_reset_id + i for i in part], seed=cfg.seed + 7919 * w,
             deterministic=cfg.deterministic, temperature=cfg.temperature,
             num_videos=cfg.num_videos if w == 0 else 0, record_episodes=cfg.save_episodes)
        for w, part in enumerate(slices)
    ]
    if cfg.num_workers == 0:
        worker = EvalWorker(env_cfg, policy_path, cfg.num_threads)
        try:
            results = [worker.run(**jobs[0])]
        finally:
            worker.close()
    else:
        import ray

        from rlinf_wm.runners.ray_setup import init_ray

        logger.info(init_ray())
        actor_class = ray.remote(num_cpus=cfg.cpus_per_worker)(EvalWorker)
        workers = [actor_class.remote(env_cfg, policy_path, cfg.num_threads, w) for w in range(len(jobs))]
        try:
            pending = {worker.run.remote(**job): w for w, (worker, job) in enumerate(zip(workers, jobs))}
            results: list[Any] = [None] * len(jobs)
            from tqdm import tqdm

            with tqdm(total=cfg.num_episodes, desc="eval", disable=not show_progress) as progress:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    w = pending.pop(ready[0])
                    results[w] = ray.get(ready[0])
                    progress.update(len(results[w]["episodes"]))
        finally:
            for worker in workers:
                ray.kill(worker)

    episodes = [dict(episode=i, **ep) for i, ep in enumerate(ep for r in results for ep in r["episodes"])]
    videos = [video for r in results for video in r["videos"]]
    summary = {
        "task": run.task,
        "policy_path": policy_path,
        "env": env_cfg,
        "deterministic": cfg.deterministic,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "num_workers": cfg.num_workers,
        **summarize(episodes),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "videos": [],
        "episodes": episodes,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    for index, frames in enumerate(videos):
        outcome = "success" if episodes[index]["success"] else "failure"
        path = write_video(output_dir / f"episode_{index:03d}_{outcome}", frames, cfg.video_fps, cfg.video_format)
        summary["videos"].append(str(path))
    if cfg.save_episodes:
        recorded = [episode for r in results for episode in r["recorded"]]
        summary["episodes_file"] = str(write_episodes(output_dir / EPISODES_FILE, recorded,
                                                      env_args={"env": env_cfg, "policy_path": policy_path}))
    write_json_atomic(output_dir / "summary.json", summary)  # last: marks the evaluation complete
    return summary
