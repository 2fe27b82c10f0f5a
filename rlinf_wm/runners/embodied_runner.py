"""The embodied RL loop (DESIGN.md section 4): sync weights, pipelined rollouts, learner update,
periodic real-simulator evaluation and checkpoints, with crashed env/rollout workers restarted.

One iteration::

    actor --weights (one object in the Ray store)--> rollout workers                    time/sync
    env workers reset (GRPO: each initial state group_size times)
    env workers <-> rollout workers, pipelined over env batches      time/env, time/rollout, time/overlap_ratio
    trajectories (one ray.put) --> actor: advantages + clipped PG epochs                 time/actor
    every eval_interval: real-simulator eval; every save_interval: checkpoint
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import torch
from tqdm import tqdm

from rlinf_wm.algorithms import compute_advantages
from rlinf_wm.config.algorithm_schema import AlgorithmConfig
from rlinf_wm.config.embodied_schema import IMAGINED_ENV_TYPES, EmbodiedConfig
from rlinf_wm.runners.metric_logger import MetricLogger
from rlinf_wm.runners.rollout_collection import WorkerFailure, WorkerRef, collect_round, first_line
from rlinf_wm.runners.run_state import (
    POLICY_DIR, STATE_FILE, capture_rng_states, checkpoint_dir, find_checkpoint, restore_rng_states,
)
from rlinf_wm.runners.worker_group import WorkerGroup
from rlinf_wm.utils.checkpoint import load_state, save_state_atomic
from rlinf_wm.utils.io import write_json_atomic
from rlinf_wm.workers.seeding import derive_seed
from rlinf_wm.workers.trajectory import TrajectoryBatch

logger = logging.getLogger(__name__)

FINAL_POLICY_DIR = "final/model"


class EmbodiedRunner:
    def __init__(self, cfg: EmbodiedConfig, resolved_config: dict | None = None):
        self.cfg = cfg
        self.log_dir = Path(cfg.runner.log_dir)
        self.resolved_config = resolved_config
        self.policy_cfg = {"path": cfg.policy.path, "model": asdict(cfg.policy.model),
                           "temperature": cfg.policy.temperature}
        self.iteration = 0  # completed iterations
        self.counters = {"env_steps": 0, "episodes": 0, "worker_restarts": 0}
        self.events: list[str] = []  # what happened besides training (restarts), for summary.json

    # --- entry ------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        cfg = self.cfg
        self.log_dir.mkdir(parents=True, exist_ok=True)
        resume_state, resume_policy = self._load_resume()
        self.workers = WorkerGroup(cfg, self.policy_cfg, resume_policy)
        metric_logger = MetricLogger(self.log_dir, cfg.runner.logger, self.resolved_config,
                                     cfg.runner.wandb_project, cfg.runner.experiment_name)
        last: dict[str, float] = {}
        try:
            self.workers.start()
            self.workers.wait_ready()
            if resume_state is not None:
                self._actor_call("load_state_dict", resume_state["actor"])
            self.spec = self._get(self.workers.env[0], "spec")
            self._check_policy_fits_env(self._get(self.workers.rollout[0], "spec"))
            self._log(f"workers: {len(self.workers.env)} env x {self.spec['num_envs']} envs, "
                      f"{len(self.workers.rollout)} rollout, 1 actor ({cfg.cluster.mode})")
            bar = tqdm(initial=self.iteration, total=cfg.runner.max_iterations, desc="RL",
                       disable=not cfg.runner.progress_bar)
            while not self._finished():
                last = self._iteration()
                bar.update(1)
                bar.set_postfix(success=f"{last['env/success_once']:.2f}")
                metric_logger.log(last, self.iteration)
            bar.close()
            # The trained policy where evaluation and later stages look for it (like SFT's <output_dir>/model).
            self._actor_call("save_policy", str(self.log_dir / FINAL_POLICY_DIR))
        finally:
            metric_logger.close()
            self.workers.shutdown()
        summary = {"iterations": self.iteration, **self.counters, "events": self.events,
                   "final_policy": str(self.log_dir / FINAL_POLICY_DIR),
                   "last_metrics": {k: v for k, v in last.items() if math.isfinite(v)}}
        write_json_atomic(self.log_dir / "summary.json", summary)
        return last

    def _finished(self) -> bool:
        budget = self.cfg.runner.max_env_steps
        return self.iteration >= self.cfg.runner.max_iterations or (
            budget is not None and self.counters["env_steps"] >= budget)

    def _check_policy_fits_env(self, policy: dict[str, Any]) -> None:
        """The loaded policy and the built train env must agree; say which keys to change if not."""
        source = f"the policy ({self.cfg.policy.path or 'policy.model'})"
        env, train = self.spec, self.cfg.env.train
        problems = []
        if env["action_dim"] != policy["action_dim"]:
            problems.append(f"env.train.env_type={train.env_type} takes {env['action_dim']}-d actions but "
                            f"{source} emits {policy['action_dim']}-d ones")
        if env["chunk_size"] is not None and env["chunk_size"] != policy["chunk_size"]:
            problems.append(f"env.train.chunk_size: the env steps {env['chunk_size']} actions per chunk but "
                            f"{source} emits chunks of {policy['chunk_size']}; set env.train.chunk_size="
                            f"{policy['chunk_size']} if the env supports it, or use a matching policy")
        image_size = getattr(train, "image_size", None)
        if image_size is not None and policy["image_size"] is not None and list(image_size) != [policy["image_size"]] * 2:
            problems.append(f"env.train.image_size: {list(image_size)} but {source} was trained on "
                            f"{policy['image_size']}x{policy['image_size']} images")
        if problems:
            raise RuntimeError("; ".join(problems))

    # --- one iteration ----------------------------------------------------------------------
    def _iteration(self) -> dict[str, float]:
        cfg, iteration = self.cfg, self.iteration
        start = time.perf_counter()
        metrics: dict[str, float] = {}

        t = time.perf_counter()
        self.weights_ref = self.workers.actor.handle.get_weights.remote()
        self._sync(self.workers.rollout)
        metrics["time/sync"] = time.perf_counter() - t

        t = time.perf_counter()
        self._set_offload(rollout_phase=True)
        batch, base, collect_metrics = self._collect(iteration)
        self._set_offload(rollout_phase=False)
        metrics.update(collect_metrics)
        metrics["time/offload"] = time.perf_counter() - t - collect_metrics["time/collect"]
        metrics.update(self._env_metrics(base))

        t = time.perf_counter()
        metrics.update(self._actor_call("update", ray.put(batch), iteration))
        metrics["time/actor"] = time.perf_counter() - t

        self.iteration += 1
        self.counters["env_steps"] += int(collect_metrics["env/collected_steps"])
        self.counters["episodes"] += int(collect_metrics["env/collected_episodes"])
        metrics["env/total_steps"] = float(self.counters["env_steps"])

        last_iteration = self._finished()
        eval_interval, save_interval = cfg.runner.eval_interval, cfg.runner.save_interval
        if eval_interval and (self.iteration % eval_interval == 0 or last_iteration):
            t = time.perf_counter()
            metrics.update(self._evaluate())
            metrics["time/eval"] = time.perf_counter() - t
            if cfg.env.train.env_type in IMAGINED_ENV_TYPES:
                metrics["calibration/imagined_minus_real_success"] = (
                    metrics["env/success_once"] - metrics["eval/success_rate"])
        if (save_interval and self.iteration % save_interval == 0) or last_iteration:
            t = time.perf_counter()
            self._save_checkpoint()
            metrics["time/checkpoint"] = time.perf_counter() - t
        metrics["time/iteration"] = time.perf_counter() - start
        return metrics

    def _sync(self, rollout_workers: list[WorkerRef]) -> None:
        # Every worker reads the same object: the weights are stored once per iteration.
        refs = [(w, w.handle.set_weights.remote(self.weights_ref, self.iteration)) for w in rollout_workers]
        for worker, ref in refs:
            self._get_ref(ref, worker, "set_weights")

    def _set_offload(self, rollout_phase: bool) -> None:
        """Colocated: only the running component keeps its device memory."""
        calls = []
        if self.cfg.actor.offload:
            calls.append((self.workers.actor, "offload" if rollout_phase else "onload"))
        if self.cfg.cluster.offload_idle:
            for worker in [*self.workers.env, *self.workers.rollout]:
                calls.append((worker, "onload" if rollout_phase else "offload"))
        refs = [(w, name, getattr(w.handle, name).remote()) for w, name in calls]
        for worker, name, ref in refs:
            self._get_ref(ref, worker, name)

    # --- rollouts ---------------------------------------------------------------------------
    def _collect(self, iteration: int) -> tuple[TrajectoryBatch, TrajectoryBatch, dict[str, float]]:
        """Base rounds (``rollout_epochs``) plus, for DAPO resampling, rounds replacing zero-variance groups.

        Returns the training batch, the base rounds (unbiased env statistics) and timing metrics.
        """
        algo = self.cfg.algorithm
        # Every round's episodes count towards the env-step budget, resampled ones included: they cost env steps.
        timing = {"time/env": 0.0, "time/rollout": 0.0, "time/collect": 0.0, "env/collected_steps": 0.0,
                  "env/collected_episodes": 0.0}
        base = [self._collect_round(iteration, r, timing) for r in range(algo.rollout_epochs)]
        base_batch = TrajectoryBatch.concatenate(base)
        batch, extra_rounds = base_batch, 0
        if algo.name == "grpo" and algo.zero_variance_groups == "resample":
            batch, extra_rounds = self._resample(iteration, base_batch, timing)
        timing["time/overlap_ratio"] = (timing["time/env"] + timing["time/rollout"]) / max(timing["time/collect"], 1e-9)
        timing["rollout/resample_rounds"] = float(extra_rounds)
        return batch, base_batch, timing

    def _collect_round(self, iteration: int, round_index: int, timing: dict[str, float]) -> TrajectoryBatch:
        cfg = self.cfg
        seed, group_size = cfg.runner.seed, cfg.algorithm.group_size
        num_workers, per_worker = len(self.workers.env), self.spec["num_envs"]
        groups_per_worker = per_worker // group_size
        num_groups = num_workers * groups_per_worker
        rng = np.random.default_rng(derive_seed(seed, "reset_ids", iteration, round_index))
        num_states = self.spec["num_initial_states"]
        if num_states is None:  # any id is valid
            initial = rng.integers(0, 2**31 - 1, size=num_groups)
        else:  # distinct initial states per group while there are enough
            initial = rng.choice(num_states, size=num_groups, replace=num_groups > num_states)
        group_ids = round_index * num_groups + np.arange(num_groups)
        reset_ids = [np.repeat(initial[w * groups_per_worker:(w + 1) * groups_per_worker], group_size)
                     for w in range(num_workers)]
        env_group_ids = [np.repeat(group_ids[w * groups_per_worker:(w + 1) * groups_per_worker], group_size)
                         for w in range(num_workers)]
        reset_seeds = [derive_seed(seed, "reset", iteration, round_index, w) for w in range(num_workers)]
        max_chunks = self.spec["max_episode_steps"]  # every chunk is >= 1 env step
        for attempt in range(cfg.runner.max_worker_restarts + 1):
            try:
                parts, round_timing = collect_round(
                    self.workers.env, self.workers.rollout, reset_ids, env_group_ids, reset_seeds,
                    lambda b, c: derive_seed(seed, "act", iteration, round_index, b, c),
                    max_chunks, need_final_values=cfg.algorithm.uses_critic,
                )
                break
            except WorkerFailure as failure:
                if attempt == cfg.runner.max_worker_restarts:
                    raise RuntimeError(
                        f"iteration {iteration + 1}: {failure.worker} died ({failure.reason}) and "
                        f"runner.max_worker_restarts={cfg.runner.max_worker_restarts} restarts are used up"
                    ) from failure
                self._restart_dead(failure, iteration)
        timing["time/env"] += round_timing.env_seconds
        timing["time/rollout"] += round_timing.rollout_seconds
        timing["time/collect"] += round_timing.wall_seconds
        batch = TrajectoryBatch.concatenate(parts)
        timing["env/collected_steps"] += float(batch.episode_lengths().sum())
        timing["env/collected_episodes"] += float(batch.num_trajectories)
        return batch

    def _restart_dead(self, failure: WorkerFailure, iteration: int) -> None:
        dead = self.workers.dead_workers() or [
            (w, failure.reason) for w in [*self.workers.env, *self.workers.rollout] if w.name == failure.worker
        ]
        for worker, reason in dead:
            fresh = self.workers.restart(worker)
            self.counters["worker_restarts"] += 1
            self._log(f"iteration {iteration + 1}: {worker.name} died ({reason}); restarted it and redoing the round")
            if fresh.name.startswith("rollout"):
                self._sync([fresh])
        self.workers.wait_ready()

    def _resample(self, iteration: int, base: TrajectoryBatch, timing: dict[str, float]) -> tuple[TrajectoryBatch, int]:
        first_extra = self.cfg.algorithm.rollout_epochs
        return resample_zero_variance_groups(
            self.cfg.algorithm, base, lambda extra: self._collect_round(iteration, first_extra + extra, timing))

    @staticmethod
    def _env_metrics(batch: TrajectoryBatch) -> dict[str, float]:
        alive = batch.alive()[..., None]
        metrics = {
            "env/success_once": float(batch.success.mean()),
            "env/episode_len": float(batch.episode_lengths().mean()),
            "env/return": float((batch.rewards * alive).sum(axis=(1, 2)).mean()),
            "env/num_trajectories": float(batch.num_trajectories),
        }
        if batch.halted is not None:  # a world-model ensemble ended these for disagreement
            metrics["env/halted"] = float(batch.halted.mean())
        return metrics

    # --- evaluation and checkpoints --------------------------------------------------------
    def _evaluate(self) -> dict[str, float]:
        """Episodes in the real simulator (``env.eval``) with the current weights: mean actions, or sampled at
        ``runner.eval_temperature``.

        The same initial states and sampling seed every time, so evaluations are comparable.
        """
        from rlinf_wm.config.policy_schema import EvalConfig, EvalEnvGroup, EvalRunConfig
        from rlinf_wm.runners.evaluate import run_evaluation

        cfg = self.cfg
        policy_dir = self.log_dir / "eval_policy"
        self._actor_call("save_policy", str(policy_dir))
        eval_cfg = EvalConfig(
            num_episodes=cfg.runner.eval_episodes, num_workers=cfg.runner.eval_workers,
            cpus_per_worker=max(cfg.cluster.env.num_cpus, 0.01), seed=cfg.runner.seed,
            deterministic=cfg.runner.eval_temperature is None, temperature=cfg.runner.eval_temperature or 1.0,
            num_videos=cfg.runner.eval_videos, output_dir=str(self.log_dir / "eval" / f"iter_{self.iteration}"),
        )
        if eval_cfg.num_workers:
            needed = eval_cfg.num_workers * eval_cfg.cpus_per_worker
            free = ray.available_resources().get("CPU", 0.0)
            if free < needed:
                raise RuntimeError(
                    f"runner.eval_workers={eval_cfg.num_workers} evaluation workers need {needed:g} CPUs "
                    f"(cluster.env.num_cpus each) but the Ray cluster has {free:g} free besides the training "
                    "workers; lower runner.eval_workers (0 runs evaluation in the driver) or add CPUs"
                )
        run = EvalRunConfig(task=cfg.task, artifacts_dir=cfg.artifacts_dir, policy_path=str(policy_dir),
                            env=EvalEnvGroup(eval=cfg.env.eval), eval=eval_cfg)
        summary = run_evaluation(run, show_progress=False)
        low, high = summary["success_rate_ci95"]
        return {
            "eval/success_rate": summary["success_rate"],
            "eval/success_rate_lower": low,
            "eval/success_rate_upper": high,
            "eval/episode_len": summary["mean_episode_length"],
            "eval/num_episodes": float(summary["num_episodes"]),
        }

    def _save_checkpoint(self) -> Path:
        directory = checkpoint_dir(self.log_dir, self.iteration)
        self._actor_call("save_policy", str(directory / POLICY_DIR))
        state = {
            "iteration": self.iteration,
            "counters": dict(self.counters),
            "rng": capture_rng_states(),
            "actor": self._actor_call("state_dict"),
        }
        save_state_atomic(state, directory / STATE_FILE)  # last: marks the checkpoint complete
        return directory

    def _load_resume(self) -> tuple[dict[str, Any] | None, str | None]:
        if self.cfg.runner.resume_dir is None:
            return None, None
        directory = find_checkpoint(self.cfg.runner.resume_dir)
        state = load_state(directory / STATE_FILE)
        self.iteration = int(state["iteration"])
        self.counters.update({k: int(v) for k, v in state["counters"].items()})
        restore_rng_states(state["rng"])
        self._log(f"resuming from {directory} after iteration {self.iteration}")
        return state, str(directory / POLICY_DIR)

    # --- Ray calls with readable errors -----------------------------------------------------
    def _actor_call(self, method: str, *args: Any) -> Any:
        return self._get(self.workers.actor, method, *args)

    def _get(self, worker: WorkerRef, method: str, *args: Any) -> Any:
        return self._get_ref(getattr(worker.handle, method).remote(*args), worker, method)

    def _get_ref(self, ref: ray.ObjectRef, worker: WorkerRef, method: str) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as error:
            hint = ""
            if worker is self.workers.actor:
                hint = (f"; the learner state is lost: resume from the last checkpoint with "
                        f"runner.resume_dir={self.log_dir}")
            raise RuntimeError(f"{worker.name} died during {method}: {first_line(error)}{hint}") from error
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None) or error
            raise RuntimeError(f"{worker.name} failed in {method}: {type(cause).__name__}: {cause}") from error

    def _log(self, message: str) -> None:
        self.events.append(message)
        logger.warning(message) if "died" in message else logger.info(message)
        with open(self.log_dir / "events.log", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": time.time(), "iteration": self.iteration, "message": message}) + "\n")


def informative_groups(algorithm: AlgorithmConfig, batch: TrajectoryBatch) -> list[int]:
    """GRPO group ids whose episodes did not all get the same return, in order of appearance."""
    result = compute_advantages(
        algorithm, rewards=torch.from_numpy(batch.rewards), terminated=torch.from_numpy(batch.terminated),
        truncated=torch.from_numpy(batch.truncated), success=torch.from_numpy(batch.success),
        group_id=torch.from_numpy(batch.group_ids),
    )
    zero = set(result.zero_variance_group_ids.tolist())
    return [g for g in dict.fromkeys(batch.group_ids.tolist()) if g not in zero]


def resample_zero_variance_groups(
    algorithm: AlgorithmConfig, base: TrajectoryBatch, collect_round: Callable[[int], TrajectoryBatch]
) -> tuple[TrajectoryBatch, int]:
    """DAPO dynamic sampling (Yu et al. 2025): replace zero-variance groups by informative ones.

    Collects up to ``algorithm.max_resample_rounds`` extra rounds (``collect_round(k)`` for the
    k-th, with fresh group ids) while the pool holds fewer informative groups than ``base`` has
    groups. Returns a batch of as many groups as ``base`` (informative first, in collection order,
    then ``base``'s zero-variance ones, which the loss masks out) and the number of extra rounds.
    """
    target = len(np.unique(base.group_ids))
    pool, extra_rounds = base, 0
    while extra_rounds < algorithm.max_resample_rounds and len(informative_groups(algorithm, pool)) < target:
        pool = TrajectoryBatch.concatenate([pool, collect_round(extra_rounds)])
        extra_rounds += 1
    informative = informative_groups(algorithm, pool)
    fallback = [g for g in dict.fromkeys(base.group_ids.tolist()) if g not in set(informative)]
    keep = (informative + fallback)[:target]
    return pool.select(np.flatnonzero(np.isin(pool.group_ids, keep))), extra_rounds
