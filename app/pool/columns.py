"""Arrow schema of a pool snapshot, per task.

Columns: ``item_id, split, source, source_row, added_in``, the task's content fields, then ``gold`` (the
hidden evaluation / oracle answer), the label block written by ``DataPool.add_labels`` (or by a
source with ``label_role: label``), then the optional serving block: what the live endpoint answered for an
item that came from traffic (null for every other row, and for snapshots written before the block existed).
"""

from __future__ import annotations

import pyarrow as pa

from app.pool.normalize import CONTENT_FIELDS

ID_COLUMNS = [
    ("item_id", pa.string()),  # content hash, see normalize.content_key
    ("split", pa.string()),
    ("source", pa.string()),
    ("source_row", pa.int64()),  # 1-based row in the source file (list index for in-memory rows)
    ("added_in", pa.int64()),  # version that first added the row
]
LABEL_COLUMNS = [
    ("gold", pa.string()),
    ("label", pa.string()),
    ("label_source", pa.string()),
    ("label_confidence", pa.float64()),
    ("annotator", pa.string()),
    ("guideline_version", pa.int64()),
    ("labelled_at", pa.string()),  # ISO 8601
]
LABEL_KEYS = ("label", "label_source", "label_confidence", "annotator", "guideline_version", "labelled_at")
SERVE_COLUMNS = [
    ("serve_confidence", pa.float64()),  # the endpoint's confidence in its answer, 0..1
    ("serve_stage", pa.string()),  # which member answered, or "ensemble"
    ("serve_model_version", pa.string()),
    ("hard_candidate", pa.bool_()),  # confidence under the endpoint's hard_below: worth labelling next
]
SERVE_KEYS = tuple(name for name, _ in SERVE_COLUMNS)


def snapshot_schema(task: str) -> pa.Schema:
    """Schema of a snapshot table for ``task`` ("classify": text; "sft": prompt; "dpo": prompt,
    chosen, rejected)."""
    content = [(f, pa.string()) for f in CONTENT_FIELDS[task]]
    return pa.schema(ID_COLUMNS + content + LABEL_COLUMNS + SERVE_COLUMNS)


def conform(table: pa.Table, task: str) -> pa.Table:
    """``table`` with the optional serving columns appended as nulls when missing (older snapshots).

    They go last, as in ``snapshot_schema(task)``, so an old snapshot and new rows concatenate.
    """
    if task not in CONTENT_FIELDS:
        raise ValueError(f"unknown task {task!r}; allowed: {sorted(CONTENT_FIELDS)}")
    for name, typ in SERVE_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(pa.field(name, typ), pa.nulls(table.num_rows, typ))
    return table


def serve_fields(raw: dict) -> tuple[dict, str | None]:
    """The serving columns present in a row (live traffic), type-checked.

    Returns:
        ({column: value} for the keys present, None) or ({}, "bad serving field: <detail>").
    """
    out = {k: raw[k] for k in SERVE_KEYS if raw.get(k) is not None}
    conf = out.get("serve_confidence")
    if conf is not None and (isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1):
        return {}, f"bad serving field: serve_confidence = {conf!r}; need a number in [0, 1]"
    for k in ("serve_stage", "serve_model_version"):
        if k in out and not isinstance(out[k], str):
            return {}, f"bad serving field: {k} = {out[k]!r}; need a string"
    if "hard_candidate" in out and not isinstance(out["hard_candidate"], bool):
        return {}, f"bad serving field: hard_candidate = {out['hard_candidate']!r}; need true or false"
    return out, None


def table_from_columns(task: str, columns: dict[str, list]) -> pa.Table:
    """Build a snapshot table from equal-length Python lists keyed by column name (missing = null)."""
    schema = snapshot_schema(task)
    n = max((len(v) for v in columns.values()), default=0)
    arrays = [pa.array(columns.get(f.name, [None] * n), type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
