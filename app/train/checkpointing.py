"""Crash-safe checkpoint bookkeeping on a plain filesystem: manifest, verify, atomic commit, retention.

Layout: ``<ckpt_root>/<name ending in the step number>/`` (e.g. ``step_00001200``) holding the
checkpoint files, ``manifest.json`` (sha256 and size of every file, plus the files the loader
requires) and optionally ``metrics.json`` (e.g. ``{"eval_loss": 1.23}``). Write into a temporary
sibling whose name starts with "." (ignored here), call :func:`write_manifest`, then :func:`commit`.
A crash then leaves either no checkpoint or a complete one; a later disk fault shows up in
:func:`verify`, and :func:`newest_valid` falls back to the previous good checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Literal

from app.atomic_files import file_sha256, fsync_dir, fsync_file, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.json"
_STEP = re.compile(r"(\d+)$")


def write_manifest(ckpt_dir: str | os.PathLike, required: list[str]) -> dict:
    """Record sha256 and size of every file under ``ckpt_dir`` (recursively) in ``manifest.json``.

    Args:
        ckpt_dir: the (temporary) checkpoint directory, fully written.
        required: relative paths the loader needs, e.g. ["model.safetensors", "optimizer.pt"].

    Returns:
        The manifest ``{"files": {relpath: {"sha256", "size"}}, "required": [...]}``.
    """
    root = Path(ckpt_dir)
    missing = [r for r in required if not (root / r).is_file()]
    if missing:
        raise FileNotFoundError(f"write_manifest: required files {missing} are not in {root}")
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != MANIFEST and not p.name.startswith(f".{MANIFEST}"):
            files[rel] = {"sha256": file_sha256(p), "size": p.stat().st_size}
    manifest = {"files": files, "required": sorted(required)}
    write_json_atomic(root / MANIFEST, manifest, sort_keys=True)
    return manifest


def verify(ckpt_dir: str | os.PathLike) -> tuple[bool, str]:
    """Check a checkpoint against its manifest.

    Returns:
        (True, "") when every listed file exists with its recorded size and sha256; otherwise
        (False, problem) where problem names the file: missing manifest, missing required or listed
        file, truncated/grown file (size differs), or content changed (hash differs). Files not in
        the manifest are ignored.
    """
    root = Path(ckpt_dir)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files, required = manifest["files"], manifest["required"]
    except FileNotFoundError:
        return False, f"{root / MANIFEST}: missing manifest (checkpoint never committed?)"
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return False, f"{root / MANIFEST}: unreadable manifest ({type(e).__name__}: {e})"
    for rel in required:
        if rel not in files:
            return False, f"{root / rel}: required file not listed in the manifest"
    for rel, meta in files.items():
        p = root / rel
        if not p.is_file():
            return False, f"{p}: missing"
        size = p.stat().st_size
        if size != meta["size"]:
            kind = "truncated" if size < meta["size"] else "size changed"
            return False, f"{p}: {kind} ({size} bytes, manifest says {meta['size']})"
        if file_sha256(p) != meta["sha256"]:
            return False, f"{p}: sha256 mismatch (content changed since the manifest was written)"
    return True, ""


def commit(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Atomically publish a written checkpoint: fsync its files, rename, fsync the parent directory.

    ``os.rename`` of a directory is atomic on POSIX within one filesystem, so readers see either no
    ``final_dir`` or the complete one; the fsyncs make the data and the rename survive a power loss.

    Returns:
        ``Path(final_dir)``.
    """
    tmp, final = Path(tmp_dir), Path(final_dir)
    if not (tmp / MANIFEST).is_file():
        raise FileNotFoundError(f"commit: {tmp} has no {MANIFEST}; call write_manifest first")
    if final.exists():
        raise FileExistsError(f"commit: {final} already exists; refusing to overwrite a checkpoint")
    for p in tmp.rglob("*"):
        if p.is_file():
            fsync_file(p)
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    return final


def write_metrics(ckpt_dir: str | os.PathLike, metrics: dict[str, float]) -> None:
    """Store the checkpoint's metrics (read by :func:`retain`) in ``metrics.json``, atomically."""
    write_json_atomic(Path(ckpt_dir) / METRICS, dict(metrics), sort_keys=True)


def list_checkpoints(ckpt_root: str | os.PathLike) -> list[Path]:
    """Committed checkpoint directories, oldest first by the step number ending their name."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name, p) for p in root.iterdir()
             if p.is_dir() and not p.name.startswith(".") and (m := _STEP.search(p.name))]
    return [p for _, _, p in sorted(found)]


def _metric(ckpt: Path, metric: str) -> float | None:
    try:
        value = json.loads((ckpt / METRICS).read_text())[metric]
        return float(value)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def retain(ckpt_root: str | os.PathLike, keep_last: int, metric: str,
           mode: Literal["min", "max"] = "min") -> list[Path]:
    """Delete old checkpoints, keeping the newest ``keep_last`` and the best by ``metric``.

    Args:
        ckpt_root: directory holding the checkpoints.
        keep_last: how many of the newest to keep, >= 1.
        metric: key in each checkpoint's metrics.json; checkpoints without it never count as best.
        mode: "min" (losses) or "max" (accuracies); ties go to the newer checkpoint.

    Returns:
        The deleted directories, oldest first.
    """
    if not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"retain: keep_last={keep_last!r} must be an int >= 1")
    if mode not in ("min", "max"):
        raise ValueError(f"retain: mode={mode!r} must be 'min' or 'max'")
    ckpts = list_checkpoints(ckpt_root)
    keep = set(ckpts[-keep_last:])
    scored = [(v if mode == "max" else -v, i, c) for i, c in enumerate(ckpts)
              if (v := _metric(c, metric)) is not None]
    if scored:
        keep.add(max(scored)[2])
    deleted = [c for c in ckpts if c not in keep]
    for c in deleted:
        shutil.rmtree(c)
    return deleted


def newest_valid(ckpt_root: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that passes :func:`verify`, skipping (and warning about) corrupted ones.

    Returns:
        (path or None when no checkpoint verifies, [(skipped path, problem naming the file), ...]).
    """
    skipped = []
    for ckpt in reversed(list_checkpoints(ckpt_root)):
        ok, problem = verify(ckpt)
        if ok:
            return ckpt, skipped
        log.warning("skipping corrupted checkpoint %s: %s", ckpt, problem)
        skipped.append((ckpt, problem))
    return None, skipped
