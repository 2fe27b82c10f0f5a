"""Train the state model (:mod:`rlinf_wm.models.state_dynamics`) on a world model's training episodes.

The world-model pipeline's stage ``state`` (``train.state.steps > 0``) runs it; by hand, on the episodes of a
trained world model's ``training_data.json``:

    python -m rlinf_wm.runners.train_state_model --world-model-dir outputs/drawer-open-v3/world_model \
        --out DIR [--members 3] [--horizon 16] [--steps 3000]

Episodes recorded without ``obs/robot_state`` (a policy's evaluation episodes) get their states by replaying their
actions in the real simulator from their reset id (``task_id``; the env their file's ``env_args`` name, which must
be deterministic per reset id, as Meta-World is). A seeded ``--holdout`` share of the episodes is kept out of
training (its own split: the model is no part of the world model's evaluation); on it the success distance is
calibrated (the threshold on the smallest predicted object-to-goal distance with the best balanced accuracy against
the real outcomes) and the AUC reported. Writes ``DIR/model`` (``save_pretrained``, atomically) and
``DIR/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from rlinf_wm.models.state_dynamics import StateDynamics
from rlinf_wm.runners.reward_scoring import roc_auc
from rlinf_wm.utils.checkpoint import save_model_atomic
from rlinf_wm.utils.io import read_json, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass
class StateEpisode:
    states: np.ndarray  # float32 [T, S]: the state before each action
    actions: np.ndarray  # float32 [T, A]
    success: bool
    reset_id: int  # -1: unknown


def replayed_states(env, reset_id: int, actions: np.ndarray) -> np.ndarray:
    """The state before each action, replayed in ``env`` (``include_states``). An env that reports the state after
    every step of a chunk (``info["states"]``, as Meta-World's does) replays all but the first step in one chunk:
    one render instead of one per step."""
    states = [env.reset(ids=[reset_id]).states[0]]
    if len(actions) < 2:
        return np.asarray(states, np.float32)
    first = env.chunk_step(actions[None, :1])
    states.append(first.obs.states[0])
    rest = actions[1:-1]
    if "states" in first.info:
        if len(rest):
            states.extend(env.chunk_step(rest[None]).info["states"][0])
    else:
        states.extend(env.chunk_step(action[None, None]).obs.states[0] for action in rest)
    return np.asarray(states, np.float32)


def read_state_episodes(files: list[str], progress: bool = True) -> list[StateEpisode]:
    episodes, envs = [], {}
    try:
        _read_into(episodes, envs, files, progress)
    finally:
        for env in envs.values():
            env.close()
    if not episodes:
        raise ValueError(f"no episodes in {files}")
    return episodes


def _read_into(episodes: list[StateEpisode], envs: dict, files: list[str], progress: bool) -> None:
    from rlinf_wm.envs.registry import make_env

    for path in files:
        with h5py.File(path, "r") as f:
            env_cfg = json.loads(f["data"].attrs.get("env_args", "{}")).get("env", {})
            for name, demo in tqdm(list(f["data"].items()), desc=Path(path).name, disable=not progress, leave=False):
                actions, reset_id = demo["actions"][:], int(demo.attrs.get("task_id", -1))
                if "robot_state" in demo["obs"]:
                    states = demo["obs/robot_state"][:]
                else:
                    if reset_id < 0 or "env_type" not in env_cfg:
                        raise ValueError(f"{path}: {name} has no obs/robot_state and no reset id (task_id) and "
                                         "env_args to replay it from")
                    key = json.dumps(env_cfg, sort_keys=True)
                    if key not in envs:
                        kwargs = {k: v for k, v in env_cfg.items() if k not in ("env_type", "num_envs")}
                        envs[key] = make_env(env_cfg["env_type"], **{**kwargs, "include_states": True,
                                                                      "render_every_step": False})
                    states = replayed_states(envs[key], reset_id, actions)
                episodes.append(StateEpisode(states, actions, bool(demo.attrs["success"]), reset_id))


def fit(model: StateDynamics, episodes: list[StateEpisode], horizon: int, steps: int, batch: int, seed: int,
        progress: bool = True) -> float:
    """Normalisation from the data, then ``steps`` Adam steps on ``horizon``-step windows unrolled on the model's
    own predictions (each member its own random draws of windows). Returns the last loss."""
    dims = model.tracked_dims
    x = np.concatenate([e.states[:-1, dims] for e in episodes])
    delta = np.concatenate([e.states[1:, dims] - e.states[:-1, dims] for e in episodes])
    goals = np.concatenate([e.states[:-1, model.goal_dims] for e in episodes])
    actions = np.concatenate([e.actions[:-1] for e in episodes])
    features = model.features(torch.tensor(x), torch.tensor(goals), torch.tensor(actions))
    model.feature_mean.copy_(features.mean(0))
    model.feature_std.copy_(features.std(0) + 1e-6)
    model.delta_mean.copy_(torch.tensor(delta.mean(0)))
    model.delta_std.copy_(torch.tensor(delta.std(0) + 1e-6))
    scale = torch.tensor(x.std(0) + 1e-6)
    starts = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep.states) - horizon)]
    if not starts:
        raise ValueError(f"no training episode is longer than horizon={horizon} steps (train.state.horizon)")
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    members, loss = len(model.nets), torch.zeros(())
    for _ in tqdm(range(steps), desc="state model", disable=not progress):
        picks = [[starts[i] for i in rng.integers(0, len(starts), batch)] for _ in range(members)]
        seq = torch.tensor(np.stack([[episodes[e].states[t : t + horizon + 1] for e, t in p] for p in picks]))
        act = torch.tensor(np.stack([[episodes[e].actions[t : t + horizon] for e, t in p] for p in picks]))
        state, loss = seq[:, :, 0, dims], 0.0
        for k in range(horizon):
            state = model.step(state, seq[:, :, k, model.goal_dims], act[:, :, k])
            loss = loss + (((state - seq[:, :, k + 1, dims]) / scale) ** 2).mean() / horizon
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return float(loss.detach())


def closest_approaches(model: StateDynamics, cases: list[tuple[np.ndarray, np.ndarray]],
                       members: str = "mean") -> np.ndarray:
    """The smallest predicted object-to-goal distance of each (initial state [S], actions [T, A]) pair."""
    return np.array([float(model.closest_approach(torch.tensor(s0)[None], torch.tensor(a)[None], members)[0])
                     for s0, a in cases])


def calibrate(distance: np.ndarray, success: np.ndarray) -> tuple[float, float]:
    """The threshold on ``distance`` with the best balanced accuracy (the smallest among ties) and that accuracy."""
    if success.all() or not success.any():
        raise ValueError(f"calibration needs held-out successes and failures, got {int(success.sum())} of "
                         f"{len(success)} successful")
    best = (-1.0, 0.0)
    for threshold in np.unique(distance):
        called = distance <= threshold
        accuracy = 0.5 * (called[success].mean() + (~called[~success]).mean())
        if accuracy > best[0]:
            best = (accuracy, float(threshold))
    return best[1], best[0]


def train_state_model(files: list[str], out_dir: str | Path, members: int = 3, horizon: int = 16, steps: int = 3000,
                      batch: int = 128, holdout: float = 0.1, seed: int = 0, progress: bool = True) -> dict:
    """Train on the episodes of trajectory ``files``; writes ``out_dir/model`` and ``out_dir/metrics.json``."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(seed)
    episodes = read_state_episodes(files, progress)
    order = np.random.default_rng(seed).permutation(len(episodes))
    held_count = max(1, int(round(holdout * len(episodes))))
    if held_count >= len(episodes):
        raise ValueError(f"{len(episodes)} episodes: holding out {held_count} leaves none to train on")
    held, train = [episodes[i] for i in order[:held_count]], [episodes[i] for i in order[held_count:]]
    state_dim, action_dim = episodes[0].states.shape[1], episodes[0].actions.shape[1]
    resets = {}
    for e in episodes:  # a reset id is one scene: its episodes must start from one state
        if e.reset_id >= 0 and not np.allclose(resets.setdefault(e.reset_id, e.states[0]), e.states[0], atol=1e-4):
            raise ValueError(f"episodes of reset id {e.reset_id} start from different states: are {files} of "
                             "one task?")
    settings = {"state_dim": state_dim, "action_dim": action_dim, "members": members,
                "num_reset_states": max(resets, default=-1) + 1}
    model = StateDynamics(**settings)
    for reset_id, state in resets.items():
        model.reset_states[reset_id] = torch.tensor(state)
        model.reset_known[reset_id] = True
    loss = fit(model, train, horizon, steps, batch, seed, progress)
    model.eval()
    distance = closest_approaches(model, [(e.states[0], e.actions) for e in held])
    success = np.array([e.success for e in held])
    if success.all() or not success.any():  # tiny data (smoke runs): nothing to calibrate on
        logger.warning("state model: the %d held-out episodes are all %s; success_distance stays %.3f", len(held),
                       "successes" if success.all() else "failures", model.success_distance)
        success_distance, accuracy = model.success_distance, None
    else:
        success_distance, accuracy = calibrate(distance, success)
    calibrated = StateDynamics(**settings, success_distance=success_distance)  # saved in its config.json
    calibrated.load_state_dict(model.state_dict())
    save_model_atomic(calibrated, out_dir / "model")
    auc = roc_auc(success, -distance)  # NaN when the held-out episodes are of one outcome
    metrics = {"train_episodes": len(train), "heldout_episodes": len(held), "heldout_successes": int(success.sum()),
               "members": members, "horizon": horizon, "steps": steps, "final_loss": loss,
               "heldout_auc": None if np.isnan(auc) else auc,
               "success_distance": success_distance, "heldout_balanced_accuracy": accuracy,
               "reset_states": len(resets), "seconds": round(time.perf_counter() - started, 1)}
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-model-dir", required=True)
    parser.add_argument("--out", required=True, help="a directory (the pipeline's stage state owns "
                        "<world_model_dir>/state_model)")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    files = read_json(Path(args.world_model_dir) / "training_data.json")["files"]
    metrics = train_state_model(files, args.out, args.members, args.horizon, args.steps, args.batch, args.holdout,
                                args.seed)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
