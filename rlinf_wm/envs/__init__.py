from rlinf_wm.envs.base import ChunkEnv, ChunkStep, Obs, validate_actions
from rlinf_wm.envs.registry import available_envs, get_env_class, make_env, register_env

__all__ = [
    "ChunkEnv",
    "ChunkStep",
    "Obs",
    "validate_actions",
    "available_envs",
    "get_env_class",
    "make_env",
    "register_env",
]


def __getattr__(name: str):
    # `from rlinf_wm.envs import WorldModelEnv` works without importing every simulator up front.
    lazy = {"MetaWorldEnv": "metaworld", "WorldModelEnv": "world_model", "LiberoEnv": "libero"}
    if name in lazy:
        return get_env_class(lazy[name])
    raise AttributeError(name)
