"""Make-like stages for the world-model pipeline: a stage runs unless its output is newer than its inputs and was
made with the same settings; an interrupted run resumes, a finished or stale one starts afresh."""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlinf_wm.utils.io import read_json, write_json_atomic

logger = logging.getLogger(__name__)


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else float("inf")


# config keys that change how a run is logged, checkpointed, measured or scheduled, not what it makes
BOOKKEEPING_KEYS = frozenset({"log_every", "eval_every", "sample_every", "sample_steps", "checkpoint_every",
                              "keep_checkpoints", "num_threads", "compile", "max_minutes", "eval_max_frames"})


def output_settings(**sections) -> dict:
    """A stage's settings to record: its config sections (dataclasses or plain values) as they read back from JSON,
    without :data:`BOOKKEEPING_KEYS`."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k not in BOOKKEEPING_KEYS}
        return value

    return json.loads(json.dumps({name: plain(value) for name, value in sections.items()}))


def start_fresh(run_dir: Path) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir) if run_dir.is_dir() else run_dir.unlink()


class StageCache:
    """Runs stages, recording per stage its wall / CPU time (``timings_path``) and the settings that chose its
    inputs (``settings_path``); ``report`` holds each stage's status."""

    def __init__(self, timings_path: Path, settings_path: Path, force: bool) -> None:
        self.timings_path, self.settings_path, self.force = timings_path, settings_path, force
        self.timings = read_json(timings_path) if timings_path.is_file() else {}
        self.settings = read_json(settings_path) if settings_path.is_file() else {}
        self.report: dict[str, dict] = {}

    def _made_with(self, name: str, settings: dict) -> bool:
        """Was the stage's output made with ``settings``? Outputs of a stage that recorded no settings, or fewer
        (older code recorded only some of them), count as made with these when the recorded ones agree."""
        recorded = self.settings.get(name, settings)
        return recorded == settings or (len(recorded) < len(settings)
                                        and all(key in settings and settings[key] == value
                                                for key, value in recorded.items()))

    def _fresh(self, name: str, done_marker: Path, inputs: Sequence[Path], settings: dict) -> bool:
        return (done_marker.is_file() and all(_mtime(done_marker) >= _mtime(p) for p in inputs if p.exists())
                and self._made_with(name, settings))

    def _record(self, name: str, settings: dict) -> None:
        self.settings[name] = settings
        write_json_atomic(self.settings_path, self.settings)

    def run(self, name: str, done_marker: Path, inputs: Sequence[Path], fresh_dir: Path | None,
            work: Callable[[], dict | None], settings: dict | None = None) -> None:
        """Run stage ``name`` unless its ``done_marker`` is newer than every input and it was made with these
        ``settings`` (those config values that decide its inputs, beside the input files)."""
        settings = settings or {}
        if not self.force and self._fresh(name, done_marker, inputs, settings):
            logger.info("stage %s: cached (%s)", name, done_marker)
            self.report[name] = {"status": "cached", "output": str(done_marker)}
            if self.settings.get(name) != settings:  # outputs of older code: from now on their settings are known
                self._record(name, settings)
            return
        # A finished (or stale) run is redone from scratch; an interrupted run (no marker yet) resumes.
        stale_checkpoints = fresh_dir is not None and (fresh_dir / "train_config.json").is_file() and any(
            _mtime(fresh_dir / "train_config.json") < _mtime(p) for p in inputs if p.exists()
        )
        stale_settings = not self._made_with(name, settings)
        if fresh_dir is not None and (self.force or done_marker.is_file() or stale_checkpoints or stale_settings):
            start_fresh(fresh_dir)
        elif fresh_dir is None and done_marker.exists():  # an interrupted rerun must not look finished
            done_marker.unlink()
        # its checkpoints and partial outputs are of these settings: an interrupted run resumes on them
        self._record(name, settings)
        started, cpu_started = time.time(), _cpu_seconds()
        details = work() or {}
        seconds, cpu_seconds = time.time() - started, _cpu_seconds() - cpu_started
        self.report[name] = {"status": "ran", "seconds": seconds, "cpu_seconds": cpu_seconds, **details}
        # CPU time next to wall time: on a shared machine the wall time depends on the neighbours
        self.timings[name] = {"seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.timings_path, self.timings)
        self._record(name, settings)
        logger.info("stage %s: done in %.1f s", name, seconds)
