"""Resuming a checkpoint on a different number of workers.

ZeRO-1/2/3 partition the optimiser state (and, at stage 3, the parameters) over the data-parallel
ranks, so a checkpoint written by W workers cannot be loaded as is by W' != W
(DeepSpeed raises "Automatic adjustment of ZeRO's optimizer state partitioning with a new world size
is not currently supported"). DeepSpeed's *universal checkpoint* (``deepspeed.checkpoint.ds_to_universal``)
rewrites the partitions as one file per parameter (fp32 weights, Adam ``exp_avg``, ``exp_avg_sq``, step)
that any world size re-partitions on load (engine config ``checkpoint.load_universal``).

Resume modes (:func:`resume_mode`):

* ``same``: same engine, ZeRO stage and world size: load the engine state as written.
* ``replicated``: plain torch (DDP) or DeepSpeed ZeRO-0 on another world size: nothing is partitioned,
  load as written.
* ``universal``: DeepSpeed ZeRO-1/2/3 on another world size: convert, then load re-partitioned.
* ``weights``: engine or ZeRO stage changed, or only the kept best is left: weights, fresh optimiser.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

MODES = ("same", "replicated", "universal", "weights")


def resume_mode(meta: dict | None, kind: str, world: int, engine: str, zero_stage: int, pp: int = 1,
                tp: int = 1) -> str | None:
    """How to resume from a checkpoint whose meta.json is ``meta`` (None: nothing to resume).

    Args:
        meta: the checkpoint's meta (world_size, engine, zero_stage) or None.
        kind: "full" for a verified checkpoint, "weights" for the kept best (weights only).
        world, engine, zero_stage, pp, tp: this run's layout (pipeline stages, tensor-parallel degree).

    Returns:
        One of :data:`MODES`, or None when there is nothing to resume.
    """
    if meta is None:
        return None
    if kind != "full" or meta["engine"] != engine or int(meta["zero_stage"]) != int(zero_stage):
        return "weights"
    layout_changed = (int(meta.get("pp", 1)), int(meta.get("tp", 1))) != (pp, tp)
    if layout_changed or (pp * tp > 1 and int(meta["world_size"]) != world):
        # stage files hold layers, AutoTP files hold weight shards: neither re-partitions (universal
        # checkpoints cover ZeRO's data-parallel partitions only), so start from the gathered weights
        return "weights"
    if int(meta["world_size"]) == world:
        return "same"
    # plain torch (DDP) and ZeRO-0 replicate the optimiser state on every rank: nothing to re-partition
    return "replicated" if engine != "deepspeed" or int(zero_stage) == 0 else "universal"


def link_rank_files(ckpt: Path, tag_dir: Path, tag: str) -> None:
    """Symlink every rank's DeepSpeed files of ``ckpt`` (``rank_<r>/ds/<tag>/*``) into ``tag_dir``.

    Each rank commits its own files under rank_<r>/; DeepSpeed wants them in one directory. File
    names carry the rank, so they never clash.
    """
    tag_dir.mkdir(parents=True, exist_ok=True)
    found = 0
    for rank_dir in sorted(ckpt.glob("rank_*")):
        for f in (rank_dir / "ds" / tag).glob("*"):
            os.symlink(f.resolve(), tag_dir / f.name)
            found += 1
    if not found:
        raise FileNotFoundError(f"{ckpt}: no DeepSpeed files under rank_*/ds/{tag}/")


def to_universal(src_tag_dir: Path, out_tag_dir: Path) -> Path:
    """Convert one DeepSpeed checkpoint tag directory into a universal checkpoint (in-process, serial).

    Wraps ``deepspeed.checkpoint.ds_to_universal.main`` with ``--inject_missing_state`` (a plain
    model carries no Megatron ``universal_checkpoint_info``) and one worker (no process pool inside a
    Ray worker). Its progress prints are swallowed.

    Returns:
        ``out_tag_dir``, holding ``zero/<param name>/{fp32,exp_avg,exp_avg_sq,step}.pt`` and the
        ``mp_rank_*`` model-state files.
    """
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(input_folder=str(src_tag_dir), output_folder=str(out_tag_dir), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ds_to_universal.main(args)
    if not (out_tag_dir / "zero").is_dir():
        raise RuntimeError(f"ds_to_universal wrote no zero/ directory under {out_tag_dir}")
    return out_tag_dir
