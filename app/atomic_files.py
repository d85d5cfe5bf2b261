"""Crash-safe file writes: a reader sees the old file or the whole new one, never a part.

Write to a temp file in the same directory (``os.replace`` is atomic only within one filesystem), fsync it,
``os.replace`` it over the target, then fsync the directory so the rename itself survives a power loss. On any
error the temp file is removed and the old file is left as it was.

Written here because no maintained library does this (``atomicwrites`` is archived) and every store in
Flywheel (pool manifests, checkpoints, controller state, embedding shards, labeler marks) needs the same
guarantee; one copy keeps the fsync order the same everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so renames and new entries in it are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file written (and closed) elsewhere, e.g. by pyarrow or torch.save."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", prefix: str = ".", durable: bool = True) -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on a clean exit it replaces ``path`` (fsynced).

    Args:
        path: the file to (re)write; its directory is created if missing.
        mode: ``"w"`` (UTF-8 text) or ``"wb"``.
        prefix: start of the temp file's name, ``<prefix><name>.<random>.tmp``; a store whose cleanup looks
            for its own temp files (the pool's ``.tmp-``) passes its marker.
        durable: fsync the file and the directory. False keeps the write atomic but not power-loss safe,
            for caches that are recomputed when lost (embedding shards), where an fsync per file costs more.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "x") rather than tempfile.mkstemp: the file gets the umask's permissions like any other
    # (mkstemp's are 0600, which other users' Ray workers on a shared store could not read)
    tmp = path.parent / f"{prefix}{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str, prefix: str = ".") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``atomic_open``)."""
    with atomic_open(path, "w", prefix) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically; ``dump_kwargs`` go to ``json.dump``.

    Defaults: ``indent=1`` and ``default=str``, so a stray Path or numpy scalar in a record is written as its
    string instead of failing after the work that produced the record is done.
    """
    with atomic_open(path, "w") as f:
        json.dump(obj, f, **{"indent": 1, "default": str, **dump_kwargs})
