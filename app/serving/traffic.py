"""Live traffic back into the data pool: sampled requests become unlabelled pool items.

Each sampled item becomes a pool row through `DataPool.ingest_rows` (dedup, split and lineage as for any
source) carrying the pool's optional serving columns (`app.pool.columns.SERVE_COLUMNS`): the endpoint's
confidence, the answering stage, the model version and `hard_candidate` (confidence under `hard_below`, so
the next round's selection can prefer it). Hard candidates go in under the source name "serve-hard", the rest
under "serve". Only when no pool is configured do rows go to `<store>/serving/<endpoint>/traffic.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.pool.normalize import clean_text

HARD_SOURCE, EASY_SOURCE = "serve-hard", "serve"


def to_pool_rows(samples: list[dict[str, Any]], hard_below: float) -> dict[str, list[dict]]:
    """Turn samples {"text", "confidence", "stage", "model_version"} into pool rows, per source name.

    Returns:
        {source: [{"text", "serve_confidence", "serve_stage", "serve_model_version", "hard_candidate"}]};
        texts empty after cleaning are dropped, sources without rows are left out.
    """
    if not 0 <= hard_below <= 1:
        raise ValueError(f"hard_below = {hard_below}; allowed 0..1")
    rows: dict[str, list[dict]] = {HARD_SOURCE: [], EASY_SOURCE: []}
    for s in samples:
        text = clean_text(str(s["text"]))
        if not text:
            continue
        hard = float(s["confidence"]) < hard_below
        rows[HARD_SOURCE if hard else EASY_SOURCE].append(
            {"text": text, "serve_confidence": float(s["confidence"]), "serve_stage": str(s["stage"]),
             "serve_model_version": str(s["model_version"]), "hard_candidate": hard})
    return {k: v for k, v in rows.items() if v}


def append_sidecar(path: str | Path, lines: list[dict]) -> None:
    """Append JSON lines (creating the file and its folder)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
