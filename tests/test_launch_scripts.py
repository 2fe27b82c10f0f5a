import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_embodiment_rejects_unknown_config_and_lists_available(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "examples/embodiment/run_embodiment.sh"), "no_such_experiment"],
        capture_output=True,
        text=True,
        env={**os.environ, "LOG_DIR": str(tmp_path / "log")},
    )
    assert result.returncode == 2
    assert "unknown config 'no_such_experiment'" in result.stderr
    assert "available configs:" in result.stderr
    assert not (tmp_path / "log").exists()


@pytest.mark.ray
def test_start_ray_head_runs_a_job_then_stops(tmp_path):
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    started = subprocess.run(
        ["bash", str(ROOT / "ray_utils/start_ray.sh"), "head", "--port", str(port), "--num-cpus", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    try:
        assert started.returncode == 0, started.stderr
        address_line = [line for line in started.stdout.splitlines() if line.startswith("RAY_ADDRESS=")][-1]
        address = address_line.split("=", 1)[1]
        assert address.endswith(f":{port}")
        job = (
            "import ray; ray.init(address='%s'); "
            "f = ray.remote(lambda x: x * 2); "
            "print('result', ray.get(f.remote(21)), int(ray.cluster_resources()['CPU']))" % address
        )
        result = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, env=env, timeout=180)
        assert "result 42 1" in result.stdout, result.stderr[-2000:]
    finally:
        subprocess.run(["bash", str(ROOT / "ray_utils/stop_ray.sh")], capture_output=True, env=env, timeout=120)
