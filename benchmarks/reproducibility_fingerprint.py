"""SHA-256 fingerprints that tell where two machines' builds of the same commit part ways.

The same commit and defaults built a different SFT base on an AMD EPYC than on an Intel Xeon (docs/results.md,
2026-12-06 sixth entry). This prints, for one Meta-World task:

- ``render``: the frames rendered for a fixed sequence of actions from three initial states (the renderer,
  MuJoCo's physics and the env wrapper, without any learned model);
- ``matmul``: a fixed float32 matrix product chain (the CPU's GEMM kernels);
- ``dataset`` / ``sft_policy``: the first collected shard and the SFT policy's weights, when they exist.

Run it on both machines and compare the JSON: equal ``render`` and ``dataset`` but different ``sft_policy`` puts the
difference in the training numerics.

    MUJOCO_GL=egl .venv/bin/python benchmarks/reproducibility_fingerprint.py [--artifacts outputs/drawer-open-v3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlinf_wm.utils.machine import describe_machine  # noqa: E402


def render_fingerprint(task: str) -> tuple[str, str]:
    """The rendered frames of 5 random chunks from initial states 0-2, and the OpenGL renderer's name."""
    from rlinf_wm.envs.metaworld_env import MetaWorldEnv

    digest = hashlib.sha256()
    with MetaWorldEnv(task, num_envs=1, render_every_step=True) as env:
        for initial_state in range(3):
            env.reset(ids=[initial_state])
            rng = np.random.default_rng(initial_state)
            for _ in range(5):
                step = env.chunk_step(rng.uniform(-1, 1, (1, 4, env.action_dim)).astype(np.float32))
                digest.update(step.info["frames"].tobytes())
        from OpenGL import GL

        renderer = GL.glGetString(GL.GL_RENDERER)
    return digest.hexdigest(), renderer.decode() if renderer else "unknown"


def matmul_fingerprint() -> str:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=generator)
    for _ in range(8):
        x = torch.tanh(x @ torch.randn(256, 256, generator=generator) / 16)
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


def dataset_fingerprint(shard: Path) -> str:
    """Every array of the shard with its name, in name order: the content, not the file's HDF5 layout."""
    digest = hashlib.sha256()
    with h5py.File(shard, "r") as f:
        arrays: dict[str, h5py.Dataset] = {}
        f.visititems(lambda name, item: arrays.update({name: item}) if isinstance(item, h5py.Dataset) else None)
        for name in sorted(arrays):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(arrays[name][()]).tobytes())
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="drawer-open-v3")
    parser.add_argument("--artifacts", type=Path, default=None, help="default: outputs/<task>")
    args = parser.parse_args()
    artifacts = args.artifacts or ROOT / "outputs" / args.task

    render, renderer = render_fingerprint(args.task)
    result = {"task": args.task, "machine": describe_machine(), "renderer": renderer, "render": render,
              "matmul": matmul_fingerprint()}
    shards = sorted((artifacts / "data").glob("shard_*.hdf5"))
    result["dataset"] = dataset_fingerprint(shards[0]) if shards else None
    policy = artifacts / "sft" / "model" / "model.safetensors"
    result["sft_policy"] = file_fingerprint(policy) if policy.is_file() else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
