import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_smoke_runs_every_stage_then_caches(tmp_path):
    """The README's main command at smoke size: every stage runs, writes its output, and a rerun is all cached."""
    artifacts = ROOT / "outputs-smoke" / "drawer-open-v3"
    env = {**os.environ, "MUJOCO_GL": "egl", "RAY_AUTH_MODE": "disabled"}
    first = subprocess.run([sys.executable, "examples/quickstart.py", "--smoke"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    result = json.loads((artifacts / "quickstart.json").read_text())
    assert result["base"]["num_episodes"] == 4 and result["after_rl"]["num_episodes"] == 4
    assert 0.0 <= result["base"]["success_rate"] <= 1.0
    assert result["peak_memory_bytes"] > 0
    second = subprocess.run([sys.executable, "examples/quickstart.py", "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    stages = ["collect", "world_model", "sft", "eval_base", "grpo_world_model", "eval_rl"]
    assert all(f"[quickstart] {name}: cached" in second.stdout for name in stages), second.stdout
