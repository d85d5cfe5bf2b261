import hashlib
import json
import os

import numpy as np
import pytest

from app.atomic_files import atomic_open, file_sha256, fsync_file, write_json_atomic, write_text_atomic


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "state.json"  # the directory is created
    write_json_atomic(p, {"a": 1})
    write_json_atomic(p, {"a": 2, "path": tmp_path})  # default=str: a Path is written as its string
    assert json.loads(p.read_text()) == {"a": 2, "path": str(tmp_path)}
    assert os.listdir(p.parent) == ["state.json"]


def test_error_mid_write_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "x.txt"
    write_text_atomic(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write("half of the new")
            raise RuntimeError("crash")
    with pytest.raises(TypeError):
        write_json_atomic(p, {"a": object()}, default=None)  # json.dump fails after writing "{"
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]


def test_prefix_binary_and_sha(tmp_path):
    p = tmp_path / "a.npy"
    seen = []
    with atomic_open(p, "wb", prefix=".tmp-", durable=False) as f:
        seen = os.listdir(tmp_path)
        np.save(f, np.arange(3), allow_pickle=False)
    assert len(seen) == 1 and seen[0].startswith(".tmp-a.npy.") and seen[0].endswith(".tmp")
    assert np.load(p).tolist() == [0, 1, 2]
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    fsync_file(p)  # a file closed elsewhere; leaves it as it is
    assert np.load(p).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(p, "a"):
            pass


def test_new_file_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644  # mkstemp would have made it 0600
