"""Real-simulator success per initial state, sorted by where Meta-World put the object.

Reads an evaluation's ``summary.json`` (``examples/embodiment/eval_embodied_agent.py``), resets the task's env to each
initial state it visited, reads the object's position (Meta-World's ``_get_pos_objects()``; for drawer-open the
handle) and prints one line per state, sorted by the chosen coordinate, with that state's episode outcomes. Shows
whether failures are a property of the initial state (a contiguous region that always fails: GRPO gets no signal
there) or of sampling (states that sometimes succeed).

    .venv/bin/python benchmarks/success_by_object_position.py outputs/drawer-open-v3/eval_base/summary.json [--axis 0]

Prints a JSON line last: the states in order with their coordinate and outcomes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

from rlinf_wm.envs.metaworld_env import MetaWorldEnv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path, help="an evaluation's summary.json")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="object coordinate to sort by (x=0)")
    args = parser.parse_args()

    summary = json.loads(args.summary.read_text())
    if summary.get("env", {}).get("env_type") != "metaworld":
        raise SystemExit(f"{args.summary}: env.env_type is {summary.get('env', {}).get('env_type')!r}, not 'metaworld'")
    outcomes: dict[int, list[int]] = defaultdict(list)
    for episode in summary["episodes"]:
        outcomes[int(episode["initial_state"])].append(int(episode["success"]))

    env = MetaWorldEnv(task=summary["env"]["task"], num_envs=1, image_size=(16, 16))
    try:
        positions = {}
        for state in outcomes:
            env.reset(ids=[state])
            positions[state] = float(env._envs[0]._get_pos_objects()[args.axis])
    finally:
        env.close()

    rows = [{"initial_state": s, "position": round(positions[s], 4), "successes": outcomes[s]}
            for s in sorted(outcomes, key=positions.get)]
    for row in rows:
        print(f"{row['position']:+.3f}  state {row['initial_state']:3d}  {row['successes']}")
    print(json.dumps({"summary": str(args.summary), "axis": args.axis, "states": rows}))


if __name__ == "__main__":
    main()
