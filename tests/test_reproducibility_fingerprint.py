"""benchmarks/reproducibility_fingerprint.py: fingerprints repeat on one machine and see the content, not the file."""

import importlib.util
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fingerprint", ROOT / "benchmarks" / "reproducibility_fingerprint.py")
fingerprint = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fingerprint)


def test_render_fingerprint_repeats_and_tells_tasks_apart():
    first, renderer = fingerprint.render_fingerprint("drawer-open-v3")
    again, _ = fingerprint.render_fingerprint("drawer-open-v3")
    other, _ = fingerprint.render_fingerprint("button-press-topdown-v3")
    assert first == again != other
    assert renderer


def test_dataset_fingerprint_follows_the_arrays_not_the_file(tmp_path):
    def write(path, value):
        with h5py.File(path, "w") as f:
            f["data/demo_0/actions"] = np.full((3, 4), value, np.float32)
            f["data/demo_0/obs/agentview_rgb"] = np.zeros((3, 8, 8, 3), np.uint8)

    write(tmp_path / "a.hdf5", 0.5)
    write(tmp_path / "b.hdf5", 0.5)
    write(tmp_path / "c.hdf5", 0.25)
    a, b, c = (fingerprint.dataset_fingerprint(tmp_path / n) for n in ("a.hdf5", "b.hdf5", "c.hdf5"))
    assert a == b != c


def test_matmul_fingerprint_repeats():
    assert fingerprint.matmul_fingerprint() == fingerprint.matmul_fingerprint()
