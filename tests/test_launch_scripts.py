import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def test_run_embodiment_passes_a_relative_log_dir_as_one_absolute_quoted_override(tmp_path):
    # a stand-in interpreter that prints its arguments: what the run would be started with
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake_python.chmod(0o755)
    caller = tmp_path / "caller"
    caller.mkdir()
    result = subprocess.run(
        ["bash", str(ROOT / "examples/embodiment/run_embodiment.sh"), "metaworld_drawer_open_grpo_tinyvla", "a=1"],
        capture_output=True, text=True, cwd=caller,
        env={**os.environ, "LOG_DIR": "logs/run,1", "PYTHON": str(fake_python)},
    )
    assert result.returncode == 0, result.stderr
    log_dir = caller / "logs" / "run,1"
    args = result.stdout.splitlines()
    # quoted, so Hydra reads the comma as part of the path, not as a sweep
    assert f"runner.log_dir='{log_dir}'" in args and f"hydra.run.dir='{log_dir}/hydra'" in args
    assert args[-1] == "a=1"
    # run.log is in the same directory the run writes to, with the run's output appended
    assert "a=1" in (log_dir / "run.log").read_text().splitlines()


@pytest.mark.ray
def test_start_ray_head_runs_a_job_then_stops_only_itself(tmp_path):
    """The head runs a job; stop_ray.sh --temp-dir stops it and leaves another Ray instance on the machine alone
    (plain `ray stop` would kill every Ray process here, a user's running experiment included)."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    # Ray's socket paths must stay short: not under pytest's long tmp_path
    temp_dir = tempfile.mkdtemp(prefix="ray_t", dir="/tmp")
    # another Ray instance on the machine, up until its stdin closes
    bystander = subprocess.Popen([sys.executable, "-c", "import ray, sys; ray.init(include_dashboard=False, "
                                  "num_cpus=1); print('up', flush=True); sys.stdin.read()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert bystander.stdout.readline().strip() == "up"
    started = subprocess.run(
        ["bash", str(ROOT / "ray_utils/start_ray.sh"), "head", "--port", str(port), "--num-cpus", "1",
         "--temp-dir", temp_dir],
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
        stopped = subprocess.run(["bash", str(ROOT / "ray_utils/stop_ray.sh"), "--temp-dir", temp_dir],
                                 capture_output=True, text=True, env=env, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert subprocess.run(["pgrep", "-f", f"{temp_dir}/session_"]).returncode == 1  # none of its processes left
        # the other instance's raylet still runs
        assert any("session_" in line for line in _raylet_command_lines() if temp_dir not in line)
        assert bystander.poll() is None
    finally:
        subprocess.run(["bash", str(ROOT / "ray_utils/stop_ray.sh"), "--temp-dir", temp_dir], capture_output=True,
                       env=env, timeout=120)
        bystander.stdin.close()
        bystander.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _raylet_command_lines() -> list[str]:
    listing = subprocess.run(["pgrep", "-a", "raylet"], capture_output=True, text=True).stdout
    return listing.splitlines()
