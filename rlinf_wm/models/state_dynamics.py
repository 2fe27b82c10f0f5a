"""A low-dimensional dynamics model of the agent and the task object: a second opinion on the world model's success.

GRPO in the pixel world model finds action sequences the DiT renders as successes but the real simulator does
not, and a second DiT shares those beliefs (docs/results.md, 2026-12-07 sixth entry). This model learns the same
real episodes in another form: an ensemble of MLPs predicting the next positions of the hand, the gripper
opening and the object from the current ones and the action, trained unrolled on its own predictions (the error
that compounds open loop). Run open loop from an episode's recorded initial state with the policy's actions, it
calls a success when the object comes within ``success_distance`` of the goal (the rule of Meta-World's
object-to-goal tasks, with the distance calibrated on held-out episodes because the model under-predicts the last
centimetres). ``reset_states`` holds the real initial state of every reset id the training episodes started from,
so a world-model env can start the model where it starts the DiT.

Observation layout (index lists, Meta-World's 39-dim state by default): ``agent_dims`` (hand xyz, then more agent
dims such as the gripper), ``object_dims`` (object xyz), ``goal_dims`` (goal xyz).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from rlinf_wm.data.world_model_layout import WORLD_MODEL_FILE
from rlinf_wm.utils.io import read_json

logger = logging.getLogger(__name__)

MEMBER_RULES = ("mean", "all")  # which members' object-to-goal distance decides (StateDynamics.object_distance)


def check_member_rule(members: str) -> str:
    if members not in MEMBER_RULES:
        raise ValueError(f"state_model_members must be one of {MEMBER_RULES}, got {members!r}")
    return members


class StateDynamics(nn.Module, PyTorchModelHubMixin):
    """``step(x, goal, action) -> next x`` per ensemble member; ``x`` = the tracked dims (agent, then object)."""

    def __init__(
        self,
        state_dim: int = 39,
        action_dim: int = 4,
        agent_dims: list[int] = (0, 1, 2, 3),
        object_dims: list[int] = (4, 5, 6),
        goal_dims: list[int] = (36, 37, 38),
        members: int = 3,
        hidden: int = 256,
        success_distance: float = 0.03,
        num_reset_states: int = 0,
    ) -> None:
        super().__init__()
        for name, dims in (("agent_dims", agent_dims), ("object_dims", object_dims), ("goal_dims", goal_dims)):
            if any(not 0 <= d < state_dim for d in dims):
                raise ValueError(f"{name} {list(dims)} must index a {state_dim}-dim state")
        if len(agent_dims) < 3 or len(object_dims) != 3 or len(goal_dims) != 3:
            raise ValueError(f"agent_dims needs hand xyz first (>= 3 dims), object_dims and goal_dims 3 each; got "
                             f"{len(agent_dims)}, {len(object_dims)}, {len(goal_dims)}")
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.agent_dims, self.object_dims, self.goal_dims = list(agent_dims), list(object_dims), list(goal_dims)
        self.success_distance = float(success_distance)
        tracked = len(self.agent_dims) + 3
        in_dim = tracked + 6 + self.action_dim  # tracked dims, hand - object, object - goal, action
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                          nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, tracked))
            for _ in range(members))
        # normalisation of the features and of the per-step change, set from the training data
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.register_buffer("delta_mean", torch.zeros(tracked))
        self.register_buffer("delta_std", torch.ones(tracked))
        self.register_buffer("reset_states", torch.zeros(num_reset_states, state_dim))
        self.register_buffer("reset_known", torch.zeros(num_reset_states, dtype=torch.bool))

    @property
    def tracked_dims(self) -> list[int]:
        return self.agent_dims + self.object_dims

    def features(self, x: torch.Tensor, goal: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        hand, obj = x[..., :3], x[..., -3:]
        action = action.clamp(-1, 1).expand(*x.shape[:-1], action.shape[-1])
        return torch.cat([x, hand - obj, obj - goal, action], -1)

    def step(self, x: torch.Tensor, goal: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """x ``[M, B, D]`` (one row per member), goal ``[B, 3]``, action ``[B, A]`` -> next x ``[M, B, D]``."""
        f = (self.features(x, goal, action) - self.feature_mean) / self.feature_std
        delta = torch.stack([net(f[m]) for m, net in enumerate(self.nets)])
        return x + delta * self.delta_std + self.delta_mean

    def start(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full states ``[B, S]`` -> (tracked dims per member ``[M, B, D]``, goals ``[B, 3]``)."""
        x = states[:, self.tracked_dims].float()
        return x.expand(len(self.nets), *x.shape).clone(), states[:, self.goal_dims].float()

    @staticmethod
    def object_distance(x: torch.Tensor, goal: torch.Tensor, members: str = "mean") -> torch.Tensor:
        """``[B]``: the object-to-goal distance of the ensemble: its members' ``mean``, or the farthest member's
        (``all``: every member must bring the object to the goal)."""
        distances = (x[..., -3:] - goal).norm(dim=-1)
        return distances.mean(0) if check_member_rule(members) == "mean" else distances.amax(0)

    @staticmethod
    def object_spread(x: torch.Tensor) -> torch.Tensor:
        """``[B]``: how far the members disagree on the object: the largest distance of a member's object position
        from the members' mean (in the state's units; Meta-World: metres)."""
        objects = x[..., -3:]
        return (objects - objects.mean(0)).norm(dim=-1).amax(0)

    @torch.no_grad()
    def closest_approach(self, states: torch.Tensor, actions: torch.Tensor, members: str = "mean") -> torch.Tensor:
        """``[B]``: the smallest predicted object-to-goal distance over actions ``[B, T, A]`` from ``states``
        (``members``: as :meth:`object_distance`)."""
        x, goal = self.start(states)
        best = torch.full((len(states),), float("inf"))
        for t in range(actions.shape[1]):
            x = self.step(x, goal, actions[:, t].float())
            best = torch.minimum(best, self.object_distance(x, goal, members))
        return best

    def reset_state(self, reset_ids: np.ndarray) -> torch.Tensor:
        """``[B, S]``: the recorded real initial states of these reset ids; errors on ids never recorded."""
        ids = np.asarray(reset_ids, np.int64)
        known = (ids >= 0) & (ids < len(self.reset_known))
        known[known] = self.reset_known[ids[known]].numpy()
        if not known.all():
            missing = sorted(set(ids[~known].tolist()))
            raise ValueError(f"the state model has no recorded initial state for reset ids {missing} "
                             f"(it knows {int(self.reset_known.sum())} of 0..{len(self.reset_known) - 1})")
        return self.reset_states[ids]


class StateSuccessTracker:
    """Per env, the state model run beside the world model from the env's reset: has the object reached the goal?
    ``members``: by the members' mean distance, or only when ``all`` of them put it there (pessimistic: a policy
    must then fool every member, as MOReL's halt on disagreement asks of a DiT ensemble)."""

    @classmethod
    def for_initial_states(cls, path: str, initial_states, num_envs: int, action_dim: int,
                           members: str = "mean") -> "StateSuccessTracker":
        """The state model at ``path`` (a ``save_pretrained`` directory), checked to take the env's actions and to
        know the real state of every initial state's reset id (a world-model env's ``state_model_path``)."""
        from rlinf_wm.utils.checkpoint import load_model

        try:
            model = load_model(StateDynamics, path)
            if model.action_dim != action_dim:
                raise ValueError(f"it takes {model.action_dim}-dim actions, the env's are {action_dim}-dim")
            if (initial_states.start_steps > 0).any():
                raise ValueError("it starts from reset states, but some initial states start inside an episode "
                                 "(start_steps > 0): set state_model_path=null")
            model.reset_state(initial_states.reset_ids)
        except (ValueError, RuntimeError, FileNotFoundError) as error:
            raise ValueError(f"state_model_path {path}: {error}") from error
        return cls(model, num_envs, members)

    def __init__(self, model: StateDynamics, num_envs: int, members: str = "mean") -> None:
        self.model, self.members = model.eval(), check_member_rule(members)
        self._x = torch.zeros(len(model.nets), num_envs, len(model.tracked_dims))
        self._goal = torch.zeros(num_envs, 3)
        self.reached = np.zeros(num_envs, bool)
        self.distance = np.full(num_envs, np.inf, np.float32)  # the smallest so far
        self.chunk_spread = np.full(num_envs, np.nan, np.float32)  # the largest object spread of the last chunk run

    def reset(self, rows: np.ndarray, reset_ids: np.ndarray) -> None:
        x, goal = self.model.start(self.model.reset_state(reset_ids))
        self._x[:, rows], self._goal[rows] = x, goal
        self.reached[rows], self.distance[rows] = False, np.inf

    def start_chunk(self) -> None:
        """Forget the last chunk's spreads: envs not advanced in this one report NaN."""
        self.chunk_spread[:] = np.nan

    @torch.no_grad()
    def advance(self, rows: np.ndarray, actions: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Run ``steps[i]`` of ``actions[i]`` (``[n, K, A]``) for env ``rows[i]``; returns bool ``[n, K]``: has
        the object reached the goal by each step (a step not run repeats the last one run). Sets ``chunk_spread``
        of the rows: the members' largest object spread (:meth:`StateDynamics.object_spread`) over the steps run."""
        x, goal = self._x[:, rows], self._goal[rows]
        acts = torch.as_tensor(actions, dtype=torch.float32)
        best = torch.as_tensor(self.distance[rows])
        spread = torch.zeros(len(rows))
        by_step = np.zeros(actions.shape[:2], bool)
        for t in range(actions.shape[1]):
            if t < int(steps.max(initial=0)):
                moving = torch.as_tensor(t < steps)
                x = torch.where(moving[None, :, None], self.model.step(x, goal, acts[:, t]), x)
                best = torch.where(moving, torch.minimum(best, self.model.object_distance(x, goal, self.members)), best)
                spread = torch.where(moving, torch.maximum(spread, self.model.object_spread(x)), spread)
            by_step[:, t] = best.numpy() <= self.model.success_distance
        self._x[:, rows] = x
        self.distance[rows] = best.numpy()
        self.chunk_spread[rows] = spread.numpy()
        self.reached[rows] = by_step[:, -1]
        return by_step


def own_state_model(world_model_dir: str | Path, initial_states) -> str | None:
    """``state_model_path: auto``: the state model a world model's ``world_model.json`` names (its pipeline trained
    one, stage ``state``), unless the initial states start inside episodes, where it has no state to start from."""
    settings = Path(world_model_dir) / WORLD_MODEL_FILE
    relative = read_json(settings).get("paths", {}).get("state_model") if settings.is_file() else None
    if relative is None:
        return None
    if (initial_states.start_steps > 0).any():
        logger.warning("state_model_path auto: initial states inside episodes (start_steps > 0) "
                                            "have no recorded state; running without the state model")
        return None
    return str(Path(world_model_dir) / relative)
