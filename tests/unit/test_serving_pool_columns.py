"""Live traffic in the DataPool: the optional serving columns (app.pool.columns) and app.serving.traffic rows.

Snapshots written before the serving columns existed must still open, read and take new rows.
"""

import pyarrow as pa
import pytest

from app.pool import DataPool, PoolConfig
from app.pool import snapshot as snap
from app.pool.columns import LABEL_COLUMNS, SERVE_KEYS, conform, snapshot_schema
from app.serving.traffic import to_pool_rows


def _cfg(root):
    return PoolConfig(task="classify", root=str(root), sources=[{"path": "data/sst2/alps_test.tsv"}],
                      labels=["negative", "positive"])


def _old_snapshot(root):
    """Version 1 written with the pre-serving schema: id + text + label columns only."""
    old = pa.schema([f for f in snapshot_schema("classify") if f.name not in SERVE_KEYS])
    assert len(old) == 5 + 1 + len(LABEL_COLUMNS)  # item_id, split, source, source_row, added_in; text; labels
    row = {"item_id": "0123456789abcdef", "split": "train", "source": "old", "source_row": 1, "added_in": 1,
           "text": "an old row", "gold": "positive"}
    table = pa.Table.from_pylist([row], schema=old)
    snap.write_snapshot(root, 1, table, parent=None, task="classify", filters=[], split_ratios={}, label_names=[],
                        lineage={"op": "ingest"}, quarantine=None)


def test_old_snapshot_reads_with_null_serving_columns_and_takes_traffic(tmp_path):
    root = tmp_path / "pool"
    _old_snapshot(root)
    pool = DataPool.open(_cfg(root))
    t = pool.read()
    assert t.schema == snapshot_schema("classify") and t.num_rows == 1
    assert t["serve_confidence"].null_count == 1 and t["hard_candidate"].to_pylist() == [None]
    samples = [{"text": "sure, fine", "confidence": 0.55, "stage": "ensemble", "model_version": "a:1+b:1"},
               {"text": "a masterpiece", "confidence": 0.98, "stage": "a", "model_version": "a:1+b:1"}]
    rows = to_pool_rows(samples, hard_below=0.7)
    for source, r in rows.items():
        pool.ingest_rows(r, source, label_role="none")
    t = DataPool.open(_cfg(root)).read()  # re-open: read back from disk
    by_text = {r["text"]: r for r in t.to_pylist()}
    assert by_text["an old row"]["serve_confidence"] is None and by_text["an old row"]["gold"] == "positive"
    hard = by_text["sure, fine"]
    # 0.55 < hard_below 0.7 -> hard candidate, in the "serve-hard" source
    assert (hard["serve_confidence"], hard["serve_stage"], hard["serve_model_version"], hard["hard_candidate"],
            hard["source"], hard["label"]) == (0.55, "ensemble", "a:1+b:1", True, "serve-hard", None)
    easy = by_text["a masterpiece"]
    assert (easy["hard_candidate"], easy["source"], easy["serve_stage"]) == (False, "serve", "a")


def test_bad_serving_fields_are_quarantined_with_the_reason(tmp_path):
    pool = DataPool.open(_cfg(tmp_path / "pool"))
    r = pool.ingest_rows([{"text": "ok", "serve_confidence": 0.9, "hard_candidate": False},
                          {"text": "too sure", "serve_confidence": 1.5},
                          {"text": "flag as text", "hard_candidate": "yes"},
                          {"text": "stage as int", "serve_stage": 3}], source="serve")
    assert (r.rows_added, r.quarantined) == (1, 3)
    lines = (tmp_path / "pool" / r.quarantine_path).read_text().splitlines()
    assert "serve_confidence = 1.5; need a number in [0, 1]" in lines[0]
    assert "hard_candidate = 'yes'; need true or false" in lines[1] and "serve_stage = 3" in lines[2]


def test_conform_names_a_bad_task():
    with pytest.raises(ValueError, match="unknown task 'chat'"):
        conform(pa.table({"x": [1]}), "chat")
