"""Multi-rank training checkpoints on top of app.train.checkpointing (manifest, verify, commit, retain).

One checkpoint directory, named ``g<gen>_step_<step:08d>`` (the name ends in the step, which
``checkpointing.list_checkpoints`` sorts by; ``gen`` grows on every resume so a re-run step never
reuses the name of a checkpoint it may have fallen back from):

    manifest.json        rank 0: sha256 of everything rank 0 wrote (meta, metrics, history, rank_0/, model/)
    meta.json            step, world size, engine, ZeRO stage, gen
    metrics.json         the checkpoint's metrics (decides the kept best)
    history.json         per-step records so far; events.json: resumes, fallbacks, resizes
    rank_0/weights.pt    full module state dict (gathered under ZeRO-3): weights-only resume, best copy
    rank_<r>/            the engine state of rank r (DeepSpeed partition files) + its own manifest.json
    model/               the exported model (last checkpoint only)
    best/<name>/         the kept best: weights.pt, meta, metrics, history and events (resume when no full one verifies)

Each rank writes and hashes its own files, so the manifests stay right when Ray Train merges the
ranks' uploads into one directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from app.train import checkpointing as ck

log = logging.getLogger(__name__)
META, HISTORY, EVENTS, WEIGHTS, BEST = "meta.json", "history.json", "events.json", "weights.pt", "best"
_GEN = re.compile(r"^g(\d+)_step_\d+$")


def ckpt_name(gen: int, step: int) -> str:
    """Directory name of the checkpoint after optimiser step ``step`` written by generation ``gen``."""
    return f"g{gen}_step_{step:08d}"


def next_gen(root: Path | None, resumed_meta: dict | None) -> int:
    """0 for a fresh run; else one more than any generation present (so names never collide)."""
    if resumed_meta is None:
        return 0
    gens = [int(m.group(1)) for p in (root.iterdir() if root and root.is_dir() else [])
            if (m := _GEN.match(p.name))]
    return max(gens + [int(resumed_meta.get("gen", 0))]) + 1


def _files(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())


def seal_rank(tmp: Path, rank: int) -> None:
    """Write the manifest of what this rank put into ``tmp`` (call after every file of the rank is written).

    Rank 0 hashes the whole ``tmp`` (root files, rank_0/, model/); rank r > 0 hashes ``tmp/rank_<r>``.
    """
    d = tmp if rank == 0 else tmp / f"rank_{rank}"
    d.mkdir(parents=True, exist_ok=True)
    files = [f for f in _files(d) if f != ck.MANIFEST]
    ck.write_manifest(d, required=([META] + [f for f in files if f != META]) if rank == 0 else files)


def read_meta(ckpt: Path) -> dict:
    """The checkpoint's meta.json."""
    return json.loads((ckpt / META).read_text())


def read_records(ckpt: Path | None, name: str) -> list:
    """A checkpoint's history.json or events.json; [] when there is none (no checkpoint, a best kept before
    bests carried them)."""
    p = None if ckpt is None else ckpt / name
    return json.loads(p.read_text()) if p is not None and p.is_file() else []


def verify_checkpoint(ckpt: Path) -> tuple[bool, str]:
    """(True, "") when rank 0's manifest and every other rank's manifest verify; else the problem, naming the file."""
    ok, problem = ck.verify(ckpt)
    if not ok:
        return ok, problem
    try:
        world = int(read_meta(ckpt)["world_size"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"{ckpt / META}: unreadable ({type(e).__name__}: {e})"
    for r in range(1, world):
        ok, problem = ck.verify(ckpt / f"rank_{r}")
        if not ok:
            return ok, problem
    return True, ""


def _order(ckpt: Path, latest: Path | None) -> tuple[int, bool, int]:
    """Sort key: step, then the framework's latest, then the newer generation."""
    step = re.search(r"(\d+)$", ckpt.name)
    gen = _GEN.match(ckpt.name)
    return (int(step.group(1)) if step else -1, latest is not None and ckpt.resolve() == latest.resolve(),
            int(gen.group(1)) if gen else -1)


def find_resume(latest: Path | None, root: Path | None) -> tuple[Path | None, str, list[tuple[str, str]]]:
    """The checkpoint to resume from: the newest verified one by step, else the kept best (weights only).

    Args:
        latest: what the framework calls the latest checkpoint (Ray Train's ``get_checkpoint()``), or None.
        root: the run's checkpoint directory, searched for older ones when ``latest`` fails verification.

    Returns:
        (checkpoint or None, "full" | "weights" | "none", [(skipped checkpoint, problem naming the file)]).
    """
    found = ck.list_checkpoints(root) if root is not None else []
    if latest is not None and latest.resolve() not in {c.resolve() for c in found}:
        found.append(latest)
    # newest step first; ``latest`` wins a tie. A complete checkpoint newer than the framework's latest
    # (uploaded, then the process died before it was registered) verifies and is the better start.
    candidates = sorted(found, key=lambda c: _order(c, latest), reverse=True)
    skipped: list[tuple[str, str]] = []
    for c in candidates:
        ok, problem = verify_checkpoint(c)
        if ok:
            return c, "full", skipped
        log.warning("checkpoint %s is unusable, trying the previous one: %s", c, problem)
        skipped.append((str(c), problem))
    best = newest_best(root) if root is not None else None
    if best is not None:
        return best, "weights", skipped
    return None, "none", skipped


def load_weights(ckpt: Path) -> dict:
    """The full module state dict of a checkpoint or of a kept best."""
    import torch

    p = ckpt / "rank_0" / WEIGHTS
    return torch.load(p if p.exists() else ckpt / WEIGHTS, map_location="cpu", weights_only=True)


def better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` improves on ``best`` ("min": lower, "max": higher; anything beats None)."""
    return best is None or (value < best if mode == "min" else value > best)


def newest_best(root: Path) -> Path | None:
    """The verified kept-best checkpoint under ``root/best``, or None."""
    path, _ = ck.newest_valid(root / BEST)
    return path


def best_value(root: Path | None, metric: str) -> float | None:
    """Metric value of the kept best (None when there is none)."""
    b = newest_best(root) if root is not None else None
    if b is None:
        return None
    try:
        return float(json.loads((b / ck.METRICS).read_text())[metric])
    except (OSError, ValueError, KeyError):
        return None


def keep_best(root: Path, tmp: Path, name: str, metric: str, mode: str, value: float, current: float | None) -> bool:
    """Copy rank 0's weights, meta and metrics of ``tmp`` into ``root/best/<name>`` when ``value`` beats ``current``.

    The copy is committed atomically and older bests are removed only afterwards, so a crash
    leaves at least one verified best. Returns whether a new best was kept.
    """
    if not better(value, current, mode):
        return False
    best_root = root / BEST
    best_root.mkdir(parents=True, exist_ok=True)
    stage = best_root / f".tmp-{name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        os.link(tmp / "rank_0" / WEIGHTS, stage / WEIGHTS)  # hard link: no copy of the weights
    except OSError:  # another filesystem
        shutil.copy2(tmp / "rank_0" / WEIGHTS, stage / WEIGHTS)
    # history and events too: when every full checkpoint is torn (a node lost mid-upload), a resume from the
    # best still knows the steps before it
    for f in (META, ck.METRICS, HISTORY, EVENTS):
        if (tmp / f).is_file():
            shutil.copy2(tmp / f, stage / f)
    ck.write_manifest(stage, required=[WEIGHTS, META])
    final = best_root / name
    if final.exists():
        shutil.rmtree(final)
    ck.commit(stage, final)
    ck.retain(best_root, keep_last=1, metric=metric, mode=mode)  # the newest is the best: drops the rest
    return True
