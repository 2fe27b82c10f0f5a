"""Does a state model tell GRPO's false imagined successes from its true ones?

GRPO in the pixel world model is rewarded for action sequences whose real outcome is failure (the DiT's false
successes; ``wm_imagined_replay.py``), and a second DiT shares them (``--ensemble`` there). This probe scores a state
model (:mod:`rlinf_wm.models.state_dynamics`, ``python -m rlinf_wm.runners.train_state_model``: another model class
on the same real episodes) on the real replays of such action sequences: run open loop from each replay's real
initial state with its actions, its smallest predicted object-to-goal distance against the real outcome (AUC between
real successes and failures) and how many it calls successes at its calibrated ``success_distance``.

The replays are those ``wm_imagined_replay.py --save-replays DIR`` wrote (``DIR/policy<n>.hdf5``, episode ``i``
started from reset id ``i // --episodes-per-state``):

    .venv/bin/python benchmarks/wm_state_probe.py --state-model outputs/drawer-open-v3/world_model/state_model/model \
        --replays outputs/drawer-open-v3/explore/counterexamples/episodes [--episodes-per-state 2]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rlinf_wm.models.state_dynamics import StateDynamics  # noqa: E402
from rlinf_wm.runners.reward_scoring import roc_auc  # noqa: E402
from rlinf_wm.runners.train_state_model import closest_approaches  # noqa: E402
from rlinf_wm.utils.checkpoint import load_model  # noqa: E402


def score(model: StateDynamics, path: Path, episodes_per_state: int, members: str) -> dict:
    with h5py.File(path, "r") as f:
        count = len(f["data"])
        actions = [f[f"data/demo_{i}/actions"][:] for i in range(count)]
        real = np.array([bool(f[f"data/demo_{i}"].attrs["success"]) for i in range(count)])
    starts = model.reset_state(np.arange(count) // episodes_per_state).numpy()
    distance = closest_approaches(model, list(zip(starts, actions)), members)
    called = distance <= model.success_distance
    return {"episodes": count, "real_successes": int(real.sum()), "auc": roc_auc(real, -distance),
            "called_success_real_success": int((called & real).sum()),
            "called_success_real_failure": int((called & ~real).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-model", type=Path, required=True)
    parser.add_argument("--replays", type=Path, required=True, help="wm_imagined_replay.py --save-replays DIR")
    parser.add_argument("--episodes-per-state", type=int, default=2)
    parser.add_argument("--members", choices=("mean", "all"), default="mean",
                        help="the env's state_model_members: the members' mean distance, or every member's")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    model = load_model(StateDynamics, args.state_model).eval()
    report = {"state_model": str(args.state_model), "success_distance": model.success_distance, "members": args.members}
    files = sorted(args.replays.glob("policy*.hdf5"))
    if not files:
        raise FileNotFoundError(f"no policy*.hdf5 replays in {args.replays} (wm_imagined_replay.py --save-replays)")
    for path in files:
        report[path.stem] = score(model, path, args.episodes_per_state, args.members)
        print(path.stem, report[path.stem], flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
