"""``DataPool``: the versioned store of every example the flywheel has seen.

Every change (ingest, labels) writes a new immutable snapshot whose manifest names its parent, so any
version can be re-read and verified later. One writer at a time (``snapshot.writer_lock``); the Ray
actor that wraps this class is that writer, and a restarted actor reloads state from disk via ``open``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from app.atomic_files import file_sha256, write_text_atomic
from app.pool import snapshot as snap
from app.pool.columns import snapshot_schema
from app.pool.config import PoolConfig, SourceSpec
from app.pool.ingest import EmbedFn, build_new_rows
from app.pool.labels import apply_labels, validate_labels
from app.pool.readers import Record, check_sources, iter_records
from app.pool.report import IngestReport, build_report
from app.pool.split import SPLITS

log = logging.getLogger(__name__)


class DataPool:
    """Versioned pool of examples for one task; build with ``DataPool.open(cfg)``."""

    def __init__(self, cfg: PoolConfig, embed_fn: EmbedFn | None = None):
        if cfg.near_dup == "embedding" and embed_fn is None:
            raise ValueError("near_dup='embedding' needs embed_fn (texts -> (n, d) array) in DataPool.open")
        self.cfg, self.root, self.embed_fn = cfg, Path(cfg.root), embed_fn
        self._cached: tuple[int, pa.Table] = (0, snapshot_schema(cfg.task).empty_table())
        self._sig: np.ndarray | None = None  # MinHash signatures aligned with the cached table's rows

    @classmethod
    def open(cls, cfg: PoolConfig, embed_fn: EmbedFn | None = None) -> DataPool:
        """Open the pool at ``cfg.root``, loading (and hash-verifying) the latest complete snapshot.

        Args:
            cfg: pool config.
            embed_fn: texts -> (n, d) float32 embeddings; needed only for ``near_dup: embedding``.

        Raises:
            ValueError: the stored snapshots were made for a different task.
            SnapshotCorruptError: the latest data.parquet does not match its manifest hash.
        """
        pool = cls(cfg, embed_fn)
        pool._latest()
        return pool

    # ---- reading -------------------------------------------------------------------------------
    def _latest(self) -> tuple[int, pa.Table]:
        v = snap.latest_version(self.root)
        if v != self._cached[0]:
            task = snap.read_manifest(self.root, v)["task"]
            if task != self.cfg.task:
                raise ValueError(
                    f"pool at {self.root} holds task {task!r} but the config says task {self.cfg.task!r}"
                )
            self._cached, self._sig = (v, snap.read_snapshot(self.root, v, verify=True)), None
        return self._cached

    @property
    def version(self) -> int:
        """Latest complete version, 0 for an empty pool."""
        return snap.latest_version(self.root)

    def versions(self) -> list[int]:
        """All complete versions, ascending."""
        return snap.list_versions(self.root)

    def manifest(self, version: int | None = None) -> dict[str, Any]:
        """Manifest of ``version`` (default: latest)."""
        return snap.read_manifest(self.root, self.version if version is None else version)

    def read(
        self, version: int | None = None, split: str | None = None, labelled: bool | None = None
    ) -> pa.Table:
        """Rows of a version, optionally only one split and only (un)labelled rows.

        Args:
            version: snapshot version (default latest; 0 or an empty pool gives an empty table).
            split: "train", "val" or "test"; None for all.
            labelled: True = rows with a ``label``, False = rows without, None = both.

        Returns:
            pyarrow Table with the snapshot columns (see ``app.pool.columns``).
        """
        import pyarrow.compute as pc

        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)} or None, got {split!r}")
        if version is None:
            table = self._latest()[1]
        elif version == 0:
            table = snapshot_schema(self.cfg.task).empty_table()
        elif version == self._cached[0]:
            table = self._cached[1]
        else:
            table = snap.read_snapshot(self.root, version, verify=True)
        if split is not None:
            table = table.filter(pc.equal(table["split"], split))
        if labelled is not None:
            table = table.filter(pc.is_valid(table["label"]) if labelled else pc.is_null(table["label"]))
        return table

    def label_names(self) -> list[str]:
        """Allowed labels: ``cfg.labels``, else (classify) the sorted label and gold values seen so far."""
        return self._names_for(self._latest()[1])

    def _names_for(self, table: pa.Table) -> list[str]:
        if self.cfg.labels or self.cfg.task != "classify":
            return list(self.cfg.labels)
        seen = set(table["gold"].drop_null().to_pylist()) | set(table["label"].drop_null().to_pylist())
        return sorted(seen)

    # ---- ingest --------------------------------------------------------------------------------
    def ingest(self, sources: list[SourceSpec] | None = None) -> IngestReport:
        """Read source files into a new snapshot = parent rows + new rows (see ``app.pool.ingest``).

        Args:
            sources: files to read; None = ``cfg.sources``.

        Raises:
            FileNotFoundError: an input file is missing (checked before anything is written).
            ValueError: a source does not fit the task or lacks a mapped column in its header.
        """
        specs = list(self.cfg.sources if sources is None else sources)
        if not specs:
            raise ValueError("ingest: no sources given")
        check_sources(self.cfg.task, specs, self.cfg.labels)
        lineage = {
            "op": "ingest",
            "sources": [
                {"name": s.name, "path": s.path, "format": s.resolved_format(), "sha256": file_sha256(s.path)}
                for s in specs
            ],
        }
        return self._ingest([(s, iter_records(s)) for s in specs], lineage)

    def ingest_rows(self, rows: list[dict], source: str, label_role: str = "gold") -> IngestReport:
        """Same pipeline for in-memory rows that already use canonical field names (live traffic).

        Args:
            rows: dicts such as {"text": ...} (classify) or {"prompt": ...} (sft).
            source: source name stored with each row.
            label_role: what a ``label``/``response`` in the rows is: "gold", "label" or "none".
        """
        spec = SourceSpec(path=f"<memory:{source}>", name=source, format="jsonl", label_role=label_role)
        records = [
            Record(i, r, None, r) if isinstance(r, dict)
            else Record(i, None, f"not an object: got {type(r).__name__}", repr(r))
            for i, r in enumerate(rows, start=1)
        ]
        lineage = {"op": "ingest_rows", "sources": [{"name": source, "rows": len(rows)}]}
        return self._ingest([(spec, records)], lineage)

    def _ingest(self, inputs: list[tuple[SourceSpec, Any]], lineage: dict) -> IngestReport:
        cfg = self.cfg
        with snap.writer_lock(self.root):
            snap.cleanup_incomplete(self.root)
            parent_v, parent = self._latest()
            version = parent_v + 1
            res = build_new_rows(cfg, inputs, parent, version, self.embed_fn, self._sig)
            for src in lineage["sources"]:
                src["rows_read"] = res.read_by_source.get(src["name"], 0)
            qpath = None
            if res.quarantine:
                qpath = f"quarantine/v{version:04d}.jsonl"
                lines = (json.dumps(q, ensure_ascii=False, default=str) for q in res.quarantine)
                write_text_atomic(self.root / qpath, "\n".join(lines) + "\n", snap.TMP_PREFIX)
            full = pa.concat_tables([parent, res.new])
            filters = [{"name": "quarantine", "rows_removed": len(res.quarantine)}]
            filters += [{"name": k, "rows_removed": v} for k, v in res.removed.items()]
            lineage.update(near_dup=cfg.near_dup, near_dup_threshold=cfg.near_dup_threshold)
            snap.write_snapshot(
                self.root, version, full, parent=parent_v or None, task=cfg.task, filters=filters,
                split_ratios=cfg.split, label_names=self._names_for(full), lineage=lineage, quarantine=qpath,
            )
            self._cached, self._sig = (version, full), res.signatures
        report = build_report(cfg.task, version, parent_v, res.new, full, res, qpath)
        log.info("ingest v%04d: %s", version, report.model_dump(exclude={"duplicate_examples"}))
        return report

    # ---- labels --------------------------------------------------------------------------------
    def add_labels(self, labels: list[dict], lineage: dict) -> int:
        """Write a new version with labels set on train items (a later label replaces an earlier one).

        Args:
            labels: dicts with item_id, label, label_source, label_confidence (0..1), annotator,
                guideline_version (int), labelled_at (ISO 8601).
            lineage: JSON-serialisable provenance (labeler model, prompt, run id ...) for the manifest.

        Returns:
            The new version (the current one, unchanged, when ``labels`` is empty).

        Raises:
            ValueError: listing every bad item: unknown item_id, val/test item, label outside
                ``label_names()`` (classify), missing/ill-typed key, an item labelled twice in one call.
        """
        if not isinstance(lineage, dict):
            raise ValueError(f"lineage must be a dict, got {type(lineage).__name__}")
        try:
            json.dumps(lineage)
        except TypeError as e:
            raise ValueError(f"lineage must be JSON-serialisable: {e}") from None
        if not labels:
            log.warning("add_labels called with no labels; version stays %d", self.version)
            return self.version
        with snap.writer_lock(self.root):
            snap.cleanup_incomplete(self.root)
            parent_v, table = self._latest()
            if parent_v == 0:
                raise ValueError("add_labels: the pool is empty; ingest data first")
            validate_labels(table, labels, self._names_for(table))
            full, relabelled = apply_labels(self.cfg.task, table, labels)
            version = parent_v + 1
            snap.write_snapshot(
                self.root, version, full, parent=parent_v, task=self.cfg.task, filters=[],
                split_ratios=snap.read_manifest(self.root, parent_v)["split_ratios"],
                label_names=self._names_for(full),
                lineage={"op": "add_labels", "n_labels": len(labels), "relabelled": relabelled, **lineage},
                quarantine=None,
            )
            self._cached = (version, full)  # content unchanged: the MinHash cache stays valid
        log.info("add_labels v%04d: %d labels (%d replaced)", version, len(labels), relabelled)
        return version
