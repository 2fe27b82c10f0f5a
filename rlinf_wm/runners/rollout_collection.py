"""Pipelined rollouts: env workers and rollout workers take turns on several env batches at once.

Each env worker holds one env batch. A batch alternates ``act`` (on its rollout worker) and
``chunk_step`` (on its env worker); with two or more batches the policy acts on one while another
steps, so neither side waits for the other. The loop below reacts to whichever call finishes first
(``ray.wait``), which gives that overlap without a fixed schedule.

Every call records the seconds its worker was busy; ``overlap_ratio = (env busy + policy busy) /
wall time`` is 1.0 for strictly alternating stages and approaches 2.0 when they fully overlap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from rlinf_wm.workers.trajectory import TrajectoryBatch, TrajectoryBuilder


class WorkerFailure(RuntimeError):
    """A worker process died (crash, OOM kill, ray.kill); the runner restarts it and redoes the round."""

    def __init__(self, worker: str, reason: str):
        super().__init__(f"{worker} died: {reason}")
        self.worker = worker
        self.reason = reason


@dataclass
class WorkerRef:
    """A worker handle with a readable name, e.g. ``env worker 1``."""

    name: str
    handle: Any


@dataclass
class CollectionTiming:
    env_seconds: float  # summed busy time of the env workers
    rollout_seconds: float  # summed busy time of the rollout workers
    wall_seconds: float

    @property
    def overlap_ratio(self) -> float:
        return (self.env_seconds + self.rollout_seconds) / max(self.wall_seconds, 1e-9)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    # Ray's messages put the useful reason at the end ("The actor is dead because ...").
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "because" in line or "Error" in line:
            return line
    return lines[-1] if lines else type(error).__name__


def _get(ref: ray.ObjectRef, worker: WorkerRef, method: str) -> Any:
    """``ray.get`` that names the worker: a dead process -> WorkerFailure, an exception -> RuntimeError."""
    try:
        return ray.get(ref)
    except RayActorError as error:
        raise WorkerFailure(worker.name, first_line(error)) from error
    except RayTaskError as error:
        cause = error.cause if getattr(error, "cause", None) is not None else error
        if isinstance(cause, RayActorError):  # the call's input came from a worker that died
            raise WorkerFailure(worker.name, first_line(cause)) from error
        raise RuntimeError(f"{worker.name} failed in {method}: {type(cause).__name__}: {cause}") from error


def collect_round(
    env_workers: list[WorkerRef],
    rollout_workers: list[WorkerRef],
    reset_ids: list[np.ndarray],
    group_ids: list[np.ndarray],
    reset_seeds: list[int],
    act_seed: Callable[[int, int], int],
    max_chunks: int,
    need_final_values: bool = False,
) -> tuple[list[TrajectoryBatch], CollectionTiming]:
    """Run one episode in every env of every env worker; returns one batch per env worker.

    ``act_seed(batch_index, chunk_index)`` fixes the sampling of each policy call, so the result
    does not depend on the order in which the pipelined calls happen to finish.
    """
    start = time.perf_counter()
    num_batches = len(env_workers)
    serving = [rollout_workers[i % len(rollout_workers)] for i in range(num_batches)]
    builders: list[TrajectoryBuilder | None] = [None] * num_batches
    pending: dict[ray.ObjectRef, tuple[str, int, Any]] = {}

    def submit_act(i: int, obs_ref: ray.ObjectRef, chunk: int) -> None:
        ref = serving[i].handle.act.remote(obs_ref, act_seed(i, chunk))
        pending[ref] = ("act", i, obs_ref)

    for i, env in enumerate(env_workers):
        submit_act(i, env.handle.reset.remote(reset_ids[i].tolist(), reset_seeds[i]), 0)

    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        kind, i, extra = pending.pop(ref)
        if kind == "act":
            # The observation first: if its env worker died, the act failed for that reason.
            obs = _get(extra, env_workers[i], "reset" if builders[i] is None else "chunk_step")
            output = _get(ref, serving[i], "act")
            if builders[i] is None:
                builders[i] = TrajectoryBuilder(group_ids[i], obs.instructions)
            builders[i].add_action(obs, output)
            next_obs_ref, record_ref = env_workers[i].handle.chunk_step.options(num_returns=2).remote(output.actions)
            pending[record_ref] = ("step", i, next_obs_ref)
        elif kind == "step":
            builders[i].add_step(_get(ref, env_workers[i], "chunk_step"))
            if builders[i].finished:
                if need_final_values:
                    pending[serving[i].handle.values.remote(extra)] = ("values", i, None)
            elif builders[i].num_chunks >= max_chunks:
                raise RuntimeError(
                    f"{env_workers[i].name}: episodes did not end within {max_chunks} chunks; the env must "
                    "truncate at its max_episode_steps"
                )
            else:
                submit_act(i, extra, builders[i].num_chunks)
        else:  # "values": V(final obs), the bootstrap of the last chunk
            builders[i].final_values = _get(ref, serving[i], "values")

    env_seconds = sum(_get(w.handle.take_busy_seconds.remote(), w, "take_busy_seconds") for w in env_workers)
    rollout_seconds = sum(_get(w.handle.take_busy_seconds.remote(), w, "take_busy_seconds") for w in rollout_workers)
    timing = CollectionTiming(env_seconds, rollout_seconds, time.perf_counter() - start)
    return [b.build() for b in builders], timing
