"""An ensemble of DiTs beside a :class:`~rlinf_wm.envs.world_model_env.WorldModelEnv`'s own: loading the members
(``ensemble_world_model_dirs``, checked against the env's world model) and their disagreement on each chunk.

``mean`` compares the trained DiTs' conditional means (:meth:`FlowSampler.predicted_mean`, one pass each, the env's
own trained DiT among them); ``sample`` compares the chunks each member's sampler generates from the env's noise
with the env's own chunk. The disagreement of a row is the largest RMS difference between two predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlinf_wm.data.statistics import ActionStatistics
from rlinf_wm.data.world_model_layout import WINDOW_KEYS, WORLD_MODEL_FILE
from rlinf_wm.envs.world_model_parts import DEFAULT_PATHS, WorldModelParts
from rlinf_wm.envs.world_model_timing import CountingModel, StepTimings
from rlinf_wm.models.dit import ActionDiT
from rlinf_wm.models.samplers import FlowSampler
from rlinf_wm.utils.checkpoint import load_model
from rlinf_wm.utils.io import read_json

DISAGREEMENTS = ("mean", "sample")
# world_model.json settings every ensemble member must share with the env's world model: what its inputs and
# outputs mean (the DiT-side WINDOW_KEYS, the chunk, the latent space) and the action normalisation
ENSEMBLE_KEYS = (*WINDOW_KEYS, "chunk_size", "latent_shape", "temporal_compression", "action_dim")


def load_dit_ensemble(member_dirs: list[str], parts: WorldModelParts, trained_dits: bool = False) -> list[ActionDiT]:
    """The DiTs of world models trained on the same windows (e.g. another ``train.dit.seed``): from each
    ``world_model_dir`` the same variant the env runs (the student when it runs the student), or with
    ``trained_dits`` the trained DiT (never the student). One error per directory naming every setting that
    differs from the env's world model."""
    reference = parts.world_model_dir / WORLD_MODEL_FILE
    trained = read_json(reference) if reference.is_file() else {}
    variant = "distilled_dit" if parts.distilled and not trained_dits else "dit"
    members = []
    for member_dir in map(Path, member_dirs):
        settings_file = member_dir / WORLD_MODEL_FILE
        if not settings_file.is_file():
            raise FileNotFoundError(f"ensemble_world_model_dirs: {settings_file} does not exist (a world_model_dir "
                                    "that world_model_pipeline trained)")
        settings = read_json(settings_file)
        problems = [f"{key}={settings.get(key)} but {reference} has {trained.get(key)}"
                    for key in ENSEMBLE_KEYS if settings.get(key) != trained.get(key)]
        paths = {**DEFAULT_PATHS, **settings.get("paths", {})}
        if variant not in paths:
            problems.append("no distilled DiT (the env runs the student): run stage=distill there")
        elif ActionStatistics.load(member_dir / paths["dataset_statistics"]).to_dict() != parts.stats.to_dict():
            problems.append(f"its {paths['dataset_statistics']} differs from the env's action statistics")
        if problems:
            raise ValueError(f"ensemble_world_model_dirs: {member_dir} does not fit the env's world model: "
                             + "; ".join(problems))
        members.append(load_model(ActionDiT, member_dir / paths[variant]).eval())
    return members


def ensemble_disagreement(predictions: torch.Tensor) -> torch.Tensor:
    """float ``[n]``: the largest RMS difference between two members' predictions ``[M, n, ...]`` of each row."""
    flat = predictions.flatten(2).float()
    largest = flat.new_zeros(flat.shape[1])
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            largest = torch.maximum(largest, (flat[i] - flat[j]).pow(2).mean(-1).sqrt())
    return largest


class DiTEnsemble:
    """The members' DiTs (empty without ``member_dirs``) and their disagreement on a chunk (module docstring)."""

    def __init__(self, member_dirs: list[str], parts: WorldModelParts, disagreement: str, timings: StepTimings) -> None:
        if disagreement not in DISAGREEMENTS:
            raise ValueError(f"disagreement must be one of {DISAGREEMENTS}, got {disagreement!r}")
        self.disagreement = disagreement
        members, own = list(member_dirs), []
        if disagreement == "mean" and members:  # the env's own trained DiT is a member too
            if parts.distilled:  # the env runs its student: load the trained DiT beside it
                members = [str(parts.world_model_dir), *members]
            else:  # the env runs the trained DiT: share it
                own = [parts.dit]
        # the DiTs loaded here, for the env to place and compile with its own
        self.dits = load_dit_ensemble(members, parts, trained_dits=disagreement == "mean")
        self._counting = [CountingModel(dit, timings) for dit in (*own, *self.dits)]

    def __len__(self) -> int:
        """How many DiTs take part in the disagreement (the env's own trained DiT included in ``mean``)."""
        return len(self._counting)

    def spread(self, sampler: FlowSampler, generated: torch.Tensor, x_cond: torch.Tensor, mask: torch.Tensor,
               actions: torch.Tensor, noise: torch.Tensor, num_cond: int) -> np.ndarray:
        """float32 ``[n]``: the disagreement on each row's chunk; ``generated`` is the env's own chunk ``[n, C, P, h, w]``."""
        if self.disagreement == "mean":
            predictions = [sampler.predicted_mean(dit, x_cond, mask, actions, noise)[:, :, num_cond:]
                           for dit in self._counting]
        else:
            predictions = [generated] + [sampler.sample(dit, x_cond, mask, actions, noise=noise)[:, :, num_cond:]
                                         for dit in self._counting]
        return ensemble_disagreement(torch.stack(predictions)).cpu().numpy()
