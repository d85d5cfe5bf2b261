"""Atomic, versioned, hash-verified snapshots of the pool on local disk.

Layout under ``root``::

    snapshots/v0001/data.parquet   snapshots/v0001/manifest.json   quarantine/v0001.jsonl   .lock

A write goes: data.parquet into ``snapshots/.tmp-*`` -> fsync file and dir -> rename the dir to
``vNNNN`` -> fsync ``snapshots/`` -> manifest.json via temp file + fsync + ``os.replace``. The manifest is
the commit record: a version directory without one is incomplete, readers ignore it, and the next
writer deletes it. A process killed at any point therefore leaves the previous version intact.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.atomic_files import file_sha256, fsync_dir, fsync_file, write_text_atomic

log = logging.getLogger(__name__)

_VDIR = re.compile(r"^v(\d{4,})$")
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
DATA = "data.parquet"


class SnapshotCorruptError(ValueError):
    """A snapshot file's bytes do not match the hash its manifest recorded."""


class PoolLockedError(RuntimeError):
    """Another process is writing to the same pool root."""


def snapshots_dir(root: str | Path) -> Path:
    return Path(root) / "snapshots"


def version_dir(root: str | Path, version: int) -> Path:
    return snapshots_dir(root) / f"v{version:04d}"


def list_versions(root: str | Path) -> list[int]:
    """Complete versions (directory ``vNNNN`` holding a manifest.json), ascending."""
    d = snapshots_dir(root)
    if not d.is_dir():
        return []
    out = [int(m.group(1)) for p in d.iterdir() if (m := _VDIR.match(p.name)) and (p / MANIFEST).is_file()]
    return sorted(out)


def latest_version(root: str | Path) -> int:
    """Newest complete version, 0 when the pool is empty."""
    v = list_versions(root)
    return v[-1] if v else 0


@contextmanager
def writer_lock(root: str | Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<root>/.lock`` for one writer at a time.

    The kernel drops the lock when the holder dies (even by SIGKILL), so a crashed writer never
    blocks the next one, and the cleanup below never deletes a live writer's temp files.

    Raises:
        PoolLockedError: another process holds the lock.
    """
    Path(root).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(root) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            msg = f"pool root {root} is being written by another process (pid {holder})"
            raise PoolLockedError(msg) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def cleanup_incomplete(root: str | Path) -> list[str]:
    """Delete leftovers of killed writers: temp dirs/files, version dirs without a manifest, and
    quarantine files of versions newer than the latest complete one. Call only under ``writer_lock``.

    Returns:
        Paths removed, relative to ``root``.
    """
    root = Path(root)
    latest = latest_version(root)
    gone: list[Path] = []
    sd = snapshots_dir(root)
    if sd.is_dir():
        for p in sd.iterdir():
            m = _VDIR.match(p.name)
            if p.name.startswith(TMP_PREFIX) or (m and not (p / MANIFEST).is_file()):
                gone.append(p)
    qd = root / "quarantine"
    if qd.is_dir():
        for p in qd.iterdir():
            m = re.match(r"^v(\d+)\.jsonl$", p.name)
            if p.name.startswith(TMP_PREFIX) or (m and int(m.group(1)) > latest):
                gone.append(p)
    for p in gone:
        log.warning("removing leftover of an interrupted write: %s", p)
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return [str(p.relative_to(root)) for p in gone]


def _counts(table: pa.Table) -> dict[str, Any]:
    split = Counter(table.column("split").to_pylist())
    return {
        "total": table.num_rows,
        "by_split": {s: split.get(s, 0) for s in ("train", "val", "test")},
        "by_source": dict(sorted(Counter(table.column("source").to_pylist()).items())),
        "labelled": table.num_rows - table.column("label").null_count,
    }


def write_snapshot(root: str | Path, version: int, table: pa.Table, **fields: Any) -> dict[str, Any]:
    """Write ``table`` as version ``version`` atomically; return the manifest written.

    Args:
        root: pool root.
        version: the new version number; must not exist yet.
        table: (rows, columns) snapshot with at least ``split``, ``source``, ``label`` columns.
        **fields: manifest entries (parent, task, filters, split_ratios, lineage, quarantine, ...);
            ``version``, ``created_at``, ``counts`` and ``content_hash`` are filled in here.
    """
    import pyarrow.parquet as pq

    final = version_dir(root, version)
    if final.exists():
        raise FileExistsError(f"snapshot {final} already exists; versions are never overwritten")
    sd = snapshots_dir(root)
    sd.mkdir(parents=True, exist_ok=True)
    tmp = sd / f"{TMP_PREFIX}v{version:04d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    pq.write_table(table, tmp / DATA, compression="zstd")
    fsync_file(tmp / DATA)
    fsync_dir(tmp)
    digest = file_sha256(tmp / DATA)
    os.rename(tmp, final)
    fsync_dir(sd)
    manifest = {
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
        "counts": _counts(table),
        "content_hash": digest,
    }
    write_text_atomic(final / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n", TMP_PREFIX)
    log.info("wrote snapshot v%04d: %d rows", version, table.num_rows)
    return manifest


def read_manifest(root: str | Path, version: int) -> dict[str, Any]:
    """The manifest of a complete version.

    Raises:
        ValueError: the version is not a complete snapshot (message lists those that are).
    """
    path = version_dir(root, version) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"version {version} is not a complete snapshot under {root}; complete: {list_versions(root)}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def read_snapshot(root: str | Path, version: int, verify: bool = True) -> pa.Table:
    """Load one version's rows.

    Args:
        root: pool root.
        version: a complete version number.
        verify: recompute sha256 of data.parquet and compare with the manifest's ``content_hash``.

    Raises:
        SnapshotCorruptError: the hash does not match (message names the file).
    """
    import pyarrow.parquet as pq

    manifest = read_manifest(root, version)
    path = version_dir(root, version) / DATA
    if verify:
        actual = file_sha256(path)
        if actual != manifest["content_hash"]:
            raise SnapshotCorruptError(
                f"{path} is corrupt: its sha256 is {actual} but {MANIFEST} records {manifest['content_hash']}"
            )
    from app.pool.columns import conform

    return conform(pq.read_table(path), manifest["task"])  # older snapshots lack the optional serving columns
