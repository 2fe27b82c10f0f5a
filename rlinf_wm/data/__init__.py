from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.trajectories import (
    CAMERA_KEY,
    Episode,
    find_trajectory_files,
    load_episodes,
    read_episodes,
    write_episodes,
)

__all__ = [
    "ActionStatistics",
    "CAMERA_KEY",
    "Episode",
    "find_trajectory_files",
    "load_episodes",
    "read_episodes",
    "write_episodes",
]
