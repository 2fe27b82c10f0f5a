"""rlinf_wm.utils.io.atomic_path: nothing half-written under the final name, on an error or a power loss."""

import os
from pathlib import Path

import pytest

from rlinf_wm.utils import io
from rlinf_wm.utils.io import atomic_path, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary_behind(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert (tmp_path / "a.json").read_text() == '{\n  "v": 1\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_directory_replaces_the_old_one_whole(tmp_path):
    for version in ("old", "new"):
        with atomic_path(tmp_path / "model") as tmp:
            tmp.mkdir()
            (tmp / version).write_text(version)
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_data_reaches_the_disk_before_the_name_does(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    with atomic_path(tmp_path / "model") as tmp:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "weights").write_bytes(b"w")
    flushed = [name for kind, name in events[: events.index(("replace", "model"))] if kind == "fsync"]
    assert "weights" in flushed and "sub" in flushed  # every file and directory below the temporary one
    # and the rename itself, in the parent directory (its other entries are not flushed again)
    assert events[events.index(("replace", "model")) + 1:] == [("fsync", tmp_path.name)]
