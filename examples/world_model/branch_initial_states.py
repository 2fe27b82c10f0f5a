"""Reset states for the world-model env taken inside recorded episodes (branched imagined rollouts).

    python examples/world_model/branch_initial_states.py --world-model-dir outputs/drawer-open-v3/world_model \
        --episodes outputs/drawer-open-v3/eval_base/episodes [--states-per-episode 4 --max-start-step 100]

writes ``<world-model-dir>/branched_states.hdf5`` (``--output`` to choose), with as many conditioning frames as the
world model's own ``initial_states.hdf5``. RL then imagines from them with
``env.train.initial_states_path=<that file>``: each imagined episode starts at a step the recorded policy really
reached and has ``max_episode_steps`` minus that step left (see ``InitialStates.branched``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlinf_wm.data.initial_states import INITIAL_STATES_FILE, InitialStates
from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import load_episodes
from rlinf_wm.data.world_model_layout import STATISTICS_FILE

BRANCHED_STATES_FILE = "branched_states.hdf5"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-model-dir", type=Path, required=True)
    parser.add_argument("--episodes", type=Path, nargs="+", required=True, help="trajectory directories or files")
    parser.add_argument("--states-per-episode", type=int, default=4)
    parser.add_argument("--max-start-step", type=int, default=100, help="latest start step (leave time to succeed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    reference = args.world_model_dir / INITIAL_STATES_FILE
    num_frames = InitialStates.load(reference).num_frames
    episodes = [episode for root in args.episodes for episode in load_episodes(root)]
    if not episodes:
        raise SystemExit(f"no episodes found in {[str(root) for root in args.episodes]}")
    statistics = ActionStatistics.load(args.world_model_dir / STATISTICS_FILE)  # the DiT's running sums clip to it
    states = InitialStates.branched(episodes, num_frames, args.states_per_episode, args.max_start_step, statistics,
                                    args.seed)
    output = args.output or args.world_model_dir / BRANCHED_STATES_FILE
    states.save(output)
    print(f"{len(states)} states from {len(episodes)} episodes (start steps {int(states.start_steps.min())}.."
          f"{int(states.start_steps.max())}, {num_frames} frames each) -> {output}")
    return output


if __name__ == "__main__":
    main()
