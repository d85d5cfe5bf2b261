"""Streaming readers for source files: JSONL, JSON array, TSV, CSV, parquet (text formats may be .gz).

Readers yield one ``Record`` per source row. A row that cannot be parsed comes back with ``error`` set
instead of raising, so the caller can quarantine it and go on. ``row`` is 1-based: the line number for
JSONL, the data row (header excluded) for TSV/CSV, the element for a JSON array, the row for parquet.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.pool.config import SourceSpec


@dataclass(frozen=True)
class Record:
    """One source row: parsed ``data``, or ``error`` ("<kind>: <detail>") with the ``raw`` text."""

    row: int
    data: dict | None
    error: str | None
    raw: Any


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _open_text(path: str):
    # TSV/CSV rows may span lines (quoted newlines), so bad bytes are replaced rather than quarantined
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8", errors="replace", newline="")


def _jsonl(path: str) -> Iterator[Record]:
    with _open_binary(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:  # decode per line, so one bad byte quarantines one row, not the file
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Record(lineno, None, f"bad encoding: {e}", line.decode("utf-8", "replace"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield Record(lineno, None, f"invalid JSON: {e}", text.rstrip("\n"))
                continue
            if isinstance(obj, dict):
                yield Record(lineno, obj, None, obj)
            else:
                yield Record(lineno, None, f"not an object: got JSON {type(obj).__name__}", obj)


def _json_array(path: str, name: str) -> Iterator[Record]:
    with _open_binary(path) as f:
        try:
            data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"source {name!r}: {path} is not a valid JSON file: {e}") from None
    if not isinstance(data, list):
        kind = type(data).__name__
        raise ValueError(f"source {name!r}: {path} must hold a JSON array of objects, got {kind}")
    for i, obj in enumerate(data, start=1):
        if isinstance(obj, dict):
            yield Record(i, obj, None, obj)
        else:
            yield Record(i, None, f"not an object: got JSON {type(obj).__name__}", obj)


def _delimited(path: str, fmt: str) -> Iterator[Record]:
    csv.field_size_limit(2**31 - 1)
    # TSV exports (SST-2, GLUE) leave quotes unescaped, so quotes are literal text in TSV
    kw = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
    with _open_text(path) as f:
        reader = csv.reader(f, **kw)
        header = next(reader, None)
        if header is None:
            return
        for i, values in enumerate(reader, start=1):
            if not values:
                continue
            if len(values) != len(header):
                raw = "\t".join(values) if fmt == "tsv" else ",".join(values)
                yield Record(i, None, f"bad row: expected {len(header)} columns, got {len(values)}", raw)
                continue
            d = dict(zip(header, values))
            yield Record(i, d, None, d)


def _parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
        for d in batch.to_pylist():
            i += 1
            yield Record(i, d, None, d)


def header(spec: SourceSpec) -> list[str] | None:
    """Column names of a TSV/CSV/parquet source (None for JSON formats, whose rows may differ)."""
    fmt = spec.resolved_format()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(spec.path).names)
    if fmt in ("tsv", "csv"):
        kw = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
        with _open_text(spec.path) as f:
            return next(csv.reader(f, **kw), [])
    return None


def iter_records(spec: SourceSpec) -> Iterator[Record]:
    """Records of a source file in file order, the first ``spec.limit`` of them when set.

    Raises:
        FileNotFoundError: the file does not exist (message names the source and the path).
        ValueError: a JSON-array file that does not parse (there is no row to quarantine).
    """
    path = spec.path
    if not Path(path).is_file():
        raise FileNotFoundError(f"source {spec.name!r}: input file not found: {path}")
    fmt = spec.resolved_format()
    if fmt == "jsonl":
        it = _jsonl(path)
    elif fmt == "json":
        it = _json_array(path, spec.name)
    elif fmt in ("tsv", "csv"):
        it = _delimited(path, fmt)
    else:
        it = _parquet(path)
    for n, rec in enumerate(it, start=1):
        if spec.limit is not None and n > spec.limit:
            return
        yield rec


def check_sources(task: str, specs: list[SourceSpec], labels: list[str]) -> None:
    """Fail before anything is read or written: missing files, fields unknown to the task, and
    TSV/CSV/parquet headers that lack a mapped required column or a ``where`` column.

    Raises:
        FileNotFoundError: naming the source and the path.
        ValueError: listing every problem found.
    """
    from app.pool.config import check_source
    from app.pool.schemas import required_fields

    for s in specs:
        if not Path(s.path).is_file():
            raise FileNotFoundError(f"source {s.name!r}: input file not found: {s.path}")
    errors = []
    for i, s in enumerate(specs):
        errors += check_source(task, s, labels, where=f"sources[{i}]")
        cols = header(s)
        if cols is not None:
            missing = sorted(({s.fields.get(f, f) for f in required_fields(task)} | set(s.where)) - set(cols))
            if missing:
                errors.append(f"source {s.name!r}: column(s) {missing} not in the header of {s.path}: {cols}")
    if errors:
        raise ValueError("; ".join(errors))
