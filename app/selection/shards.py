"""Embedding shards on disk: one ``.npy`` triple per Ray Data block plus an ``index.json``.

Layout of a shard directory::

    index.json                       {"n", "dim", "dtype", "has_ids", "shards": [{"name", "rows"}]}
    <name>.emb.npy                   (b, d) float32 embeddings
    <name>.rows.npy                  (b,) int64 row numbers: position of each row in the original pool
    <name>.ids.npy                   (b,) item ids (ints or fixed-width unicode; never pickled), optional

Shards are written by many workers at once, so each file is written to a temp name and renamed, and only
shards listed in ``index.json`` count (a retried task's orphan never does). Readers memory-map the
``.emb.npy`` files, so a pool larger than RAM is paged in block by block instead of loaded.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from app.atomic_files import atomic_open, write_json_atomic

INDEX = "index.json"


class ShardError(ValueError):
    """A shard directory or shard batch is malformed; the message names the file or column."""


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    # a recomputable cache written once per Ray Data block: atomic, without an fsync per file
    with atomic_open(path, "wb", durable=False) as f:
        np.save(f, arr, allow_pickle=False)


def write_shard(out_dir: str | Path, rows: np.ndarray, emb: np.ndarray, ids: np.ndarray | None = None) -> dict:
    """Write one shard and return its index record ``{"name", "rows", "min_row"}``.

    Args:
        out_dir: shard directory (created if missing).
        rows: (b,) int row numbers of these embeddings in the pool.
        emb: (b, d) embeddings, stored as float32.
        ids: (b,) item ids; object/str arrays are stored as fixed-width unicode (no pickle).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = np.asarray(rows)
    emb = np.asarray(emb, dtype=np.float32)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise ShardError(f"shard rows must be a 1-D integer array, got shape {rows.shape} dtype {rows.dtype}")
    if emb.ndim != 2 or emb.shape[0] != rows.shape[0]:
        raise ShardError(f"shard embedding must be (b, d) with b = len(rows) = {rows.shape[0]}, got {emb.shape}")
    # a uuid in the name: two attempts of the same Ray task never overwrite each other's files
    name = f"shard-{int(rows.min()) if rows.size else 0:012d}-{uuid.uuid4().hex[:8]}"
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != rows.shape:
            raise ShardError(f"shard ids have shape {ids.shape}, rows {rows.shape}; one id per row expected")
        _save_atomic(out / f"{name}.ids.npy", ids.astype(str) if ids.dtype.kind == "O" else ids)
    _save_atomic(out / f"{name}.emb.npy", emb)
    _save_atomic(out / f"{name}.rows.npy", rows.astype(np.int64))  # written last: marks the shard complete
    return {"name": name, "rows": int(rows.shape[0]), "min_row": int(rows.min()) if rows.size else 0}


def write_shard_batch(batch: dict[str, np.ndarray], out_dir: str, row_column: str = "row",
                      id_column: str | None = "item_id", emb_column: str = "embedding") -> dict[str, np.ndarray]:
    """Ray Data UDF (``map_batches(write_shard_batch, fn_kwargs={"out_dir": ...}, batch_size=None)``).

    Writes the batch as one shard and returns its index record as a one-row batch.
    """
    for col in (row_column, emb_column):
        if col not in batch:
            raise ShardError(f"write_shard_batch: batch has no column {col!r}; columns: {sorted(batch)}")
    ids = batch[id_column] if id_column is not None and id_column in batch else None
    rec = write_shard(out_dir, batch[row_column], np.stack(batch[emb_column]) if batch[emb_column].dtype == object
                      else batch[emb_column], ids)
    return {k: np.asarray([v]) for k, v in rec.items()}


def write_index(out_dir: str | Path, records: list[dict]) -> Path:
    """Write ``index.json`` for the shards in ``records`` (as returned by ``write_shard``), sorted by min row."""
    out = Path(out_dir)
    records = sorted(records, key=lambda r: (int(r["min_row"]), str(r["name"])))
    records = [r for r in records if int(r["rows"]) > 0]
    if not records:
        raise ShardError(f"no non-empty shards to index in {out}")
    first = np.load(out / f"{records[0]['name']}.emb.npy", mmap_mode="r")
    has_ids = all((out / f"{r['name']}.ids.npy").exists() for r in records)
    index = {"n": sum(int(r["rows"]) for r in records), "dim": int(first.shape[1]), "dtype": "float32",
             "has_ids": has_ids, "shards": [{"name": str(r["name"]), "rows": int(r["rows"])} for r in records]}
    write_json_atomic(out / INDEX, index)
    return out / INDEX


class EmbeddingShards:
    """Read-only view of a shard directory in pool-row order (row r = the r-th row of the original pool).

    Only O(n) integers are held in memory (where each row lives); embeddings stay memory-mapped.

    Args:
        root: directory holding ``index.json`` and the shards it lists.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / INDEX).exists():
            raise ShardError(f"{self.root}: no {INDEX}; write shards with write_shard + write_index first")
        meta = json.loads((self.root / INDEX).read_text())
        self.n, self.dim, self.has_ids = int(meta["n"]), int(meta["dim"]), bool(meta["has_ids"])
        self.names = [s["name"] for s in meta["shards"]]
        self.counts = np.array([s["rows"] for s in meta["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # storage position of each shard's start
        self._emb = []
        for name, cnt in zip(self.names, self.counts):
            arr = np.load(self.root / f"{name}.emb.npy", mmap_mode="r")
            if arr.shape != (cnt, self.dim):
                raise ShardError(f"{name}.emb.npy has shape {arr.shape}; index says ({cnt}, {self.dim})")
            self._emb.append(arr)
        stored_rows = np.concatenate([np.load(self.root / f"{nm}.rows.npy") for nm in self.names])
        seen = np.bincount(stored_rows[(stored_rows >= 0) & (stored_rows < self.n)], minlength=self.n)
        if stored_rows.min() < 0 or stored_rows.max() >= self.n or (seen != 1).any():
            bad = np.flatnonzero(seen != 1)[:10].tolist()
            raise ShardError(f"{self.root}: row numbers must be a permutation of 0..{self.n - 1}; "
                             f"rows missing or repeated: {bad} (first 10), range [{stored_rows.min()}, "
                             f"{stored_rows.max()}]")
        self._pos = np.empty(self.n, dtype=np.int64)
        self._pos[stored_rows] = np.arange(self.n)  # row -> storage position
        self._rows = stored_rows

    def __len__(self) -> int:
        return self.n

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(rows (b,), embeddings (b, d) memmap)`` shard by shard."""
        for s, emb in enumerate(self._emb):
            yield self._rows[self.offsets[s]:self.offsets[s + 1]], emb

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(m, d) float32 embeddings of pool rows ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        pos = self._pos[rows]
        shard = np.searchsorted(self.offsets, pos, side="right") - 1
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        for s in np.unique(shard):
            hit = np.flatnonzero(shard == s)
            out[hit] = self._emb[s][pos[hit] - self.offsets[s]]
        return out

    def ids(self) -> np.ndarray:
        """(n,) item ids in row order (the row numbers themselves when the shards carry no ids)."""
        if not self.has_ids:
            return np.arange(self.n)
        stored = np.concatenate([np.load(self.root / f"{nm}.ids.npy") for nm in self.names])
        out = np.empty_like(stored)
        out[self._rows] = stored
        return out

    def to_array(self, path: str | Path | None = None) -> np.ndarray:
        """All embeddings (n, d) float32 in row order: in RAM, or a disk-backed memmap at ``path`` (.npy)."""
        if path is None:
            out = np.empty((self.n, self.dim), dtype=np.float32)
        else:
            out = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(self.n, self.dim))
        for rows, emb in self.blocks():
            out[rows] = emb
        return out
