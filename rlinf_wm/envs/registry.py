"""Environment classes by name, so a YAML's ``env_type`` picks the class."""

from __future__ import annotations

import importlib
from typing import Callable

from rlinf_wm.envs.base import ChunkEnv

_REGISTRY: dict[str, type[ChunkEnv]] = {}
# Built-in envs are imported lazily: a simulator's heavy import happens only when it is used.
_BUILTIN: dict[str, str] = {
    "metaworld": "rlinf_wm.envs.metaworld_env:MetaWorldEnv",
    "world_model": "rlinf_wm.envs.world_model_env:WorldModelEnv",
    "libero": "rlinf_wm.envs.libero_env:LiberoEnv",
}
# Scripted-episode recorders for data collection, with the signature of
# rlinf_wm.envs.experts.record_episode(env, kind, seed, task_id, expert_noise_std) -> Episode.
_RECORDERS: dict[str, str] = {
    "metaworld": "rlinf_wm.envs.experts:record_episode",
    "libero": "rlinf_wm.envs.libero_expert:record_episode",
}


def register_env(name: str) -> Callable[[type[ChunkEnv]], type[ChunkEnv]]:
    """Class decorator: ``@register_env("my_sim")`` makes ``env_type: my_sim`` usable in configs."""

    def decorator(cls: type[ChunkEnv]) -> type[ChunkEnv]:
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_envs() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def get_env_class(name: str) -> type[ChunkEnv]:
    if name not in _REGISTRY and name in _BUILTIN:
        _REGISTRY[name] = _load(_BUILTIN[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown env_type {name!r}; available: {', '.join(available_envs())}")
    return _REGISTRY[name]


def make_env(env_type: str, **kwargs) -> ChunkEnv:
    return get_env_class(env_type)(**kwargs)


def _load(target: str):
    module_name, name = target.split(":")
    return getattr(importlib.import_module(module_name), name)


def get_episode_recorder(env_type: str) -> Callable:
    """The scripted-expert episode recorder of ``env_type`` (what data collection runs)."""
    if env_type not in _RECORDERS:
        raise KeyError(f"no scripted expert for env_type {env_type!r}; collection supports: {', '.join(sorted(_RECORDERS))}")
    return _load(_RECORDERS[env_type])
