"""Labeling command line: agreement on a CSV, Label Studio export/import of a label store.

    python -m jobs.label agreement --input ratings.csv --metric krippendorff_alpha --level ordinal
    python -m jobs.label export-ls --db .flywheel/labels.db --out tasks.json [--config-out config.xml]
    python -m jobs.label import-ls --db .flywheel/labels.db --input export.json
    python -m jobs.label review --db .flywheel/labels.db --labels neg,pos --port 8020 --block

``review`` (see jobs/label_review.py) serves the human review page and prints one JSON line once it is up.

The agreement CSV has a header row of annotator names (an optional first column ``item_id`` is
ignored), one row per item, and an empty cell where an annotator gave no label. Each command
prints one JSON line; bad input prints one ``error: ...`` line on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sqlite3
import sys
from pathlib import Path

from app.atomic_files import write_json_atomic

METRICS = ("cohen_kappa", "fleiss_kappa", "krippendorff_alpha")
LEVELS = ("nominal", "ordinal", "interval", "ratio")  # == app.labeling.agreement.LEVELS (a test checks)


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage on two lines; the contract is one
        sys.stderr.write(f"error: {message} (see --help)\n")
        sys.exit(2)


def read_ratings(path: str) -> tuple[list[str], list[list[str | None]], list[int]]:
    """Read an agreement CSV.

    Returns:
        annotators: header names (without a leading ``item_id`` column).
        rows: shape (n_items, n_annotators), stripped cells, None where empty.
        lines: the CSV line number of each row (for error messages).
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"input file {path!r} not found")
    text = p.read_text(encoding="utf-8-sig")  # utf-8-sig: spreadsheets often prepend a BOM
    if not text.strip():
        raise UsageError(f"input file {path!r} is empty")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    skip_id = header[0] == "item_id"
    annotators = header[1:] if skip_id else header
    if any(not a for a in annotators) or len(set(annotators)) != len(annotators):
        raise UsageError(f"{path}: header must name each annotator once, got {annotators}")
    if len(annotators) < 2:
        raise UsageError(f"{path}: agreement needs at least 2 annotator columns, found {len(annotators)} ({annotators})")
    rows, lines = [], []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise UsageError(f"{path}: line {reader.line_num} has {len(cells)} cells but the header has {len(header)}")
        cells = cells[1:] if skip_id else cells
        rows.append([c.strip() or None for c in cells])
        lines.append(reader.line_num)
    if not rows:
        raise UsageError(f"{path}: no data rows after the header")
    return annotators, rows, lines


def _check_numeric(path: str, annotators: list[str], rows: list[list[str | None]], lines: list[int], level: str) -> None:
    for row, line in zip(rows, lines):
        for name, cell in zip(annotators, row):
            if cell is None:
                continue
            try:
                ok = math.isfinite(float(cell))
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(
                    f"{path}: line {line}, annotator {name!r}: {cell!r} is not a number (level {level!r} needs numbers)"
                )


def cmd_agreement(args: argparse.Namespace) -> dict:
    level = args.level or "nominal"
    if args.metric != "krippendorff_alpha" and level != "nominal":
        raise UsageError(f"--level {level} applies only to krippendorff_alpha; {args.metric} treats labels as nominal")
    annotators, rows, lines = read_ratings(args.input)
    if args.metric == "cohen_kappa" and len(annotators) != 2:
        raise UsageError(
            f"cohen_kappa needs exactly 2 annotator columns, found {len(annotators)} ({annotators});"
            " use fleiss_kappa or krippendorff_alpha"
        )
    if level != "nominal":
        _check_numeric(args.input, annotators, rows, lines, level)
    # imported only now: input errors are reported without paying for numpy / scikit-learn
    from app.labeling import agreement

    if args.metric == "cohen_kappa":
        value = agreement.cohen_kappa([r[0] for r in rows], [r[1] for r in rows])
        items = sum(1 for r in rows if r[0] is not None and r[1] is not None)
    elif args.metric == "fleiss_kappa":
        counts, _ = agreement.ratings_to_counts(rows)
        value, items = agreement.fleiss_kappa(counts), agreement.pairable_items(rows)
    else:
        value, items = agreement.krippendorff_alpha(rows, level), agreement.pairable_items(rows)
    return {
        "metric": args.metric,
        "level": level,
        "value": None if math.isnan(value) else round(value, 6),
        "items": items,
        "annotators": len(annotators),
    }


def _open_store(db: str):
    from app.labeling.store import LabelStore

    if not Path(db).is_file():
        raise UsageError(f"label store {db!r} not found")
    return LabelStore(db)


def cmd_export_ls(args: argparse.Namespace) -> dict:
    from app.labeling.labelstudio import export_tasks, labeling_config

    with _open_store(args.db) as store:
        tasks = export_tasks(store, args.status or ["pending"], args.from_name, args.to_name, args.model_version)
        allowed = store.allowed_labels
    write_json_atomic(args.out, tasks, indent=2, ensure_ascii=False)  # readers never see half a file
    out = {"exported": len(tasks), "out": args.out}
    if args.config_out:
        if allowed is None:
            raise UsageError(f"--config-out: store {args.db!r} has no allowed labels to put in a labeling config")
        Path(args.config_out).write_text(labeling_config(allowed, args.from_name, args.to_name) + "\n", encoding="utf-8")
        out["config"] = args.config_out
    return out


def cmd_import_ls(args: argparse.Namespace) -> dict:
    from app.labeling.labelstudio import import_annotations

    p = Path(args.input)
    if not p.is_file():
        raise UsageError(f"input file {args.input!r} not found")
    try:
        tasks = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{args.input}: not valid JSON ({e})") from None
    with _open_store(args.db) as store:
        report = import_annotations(store, tasks, args.from_name)
    return {"submitted": report.submitted, "cancelled": report.cancelled, "unannotated": report.unannotated}


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m jobs.label", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("agreement", help="inter-annotator agreement of a ratings CSV")
    a.add_argument("--input", required=True, help="CSV: header of annotator names, one row per item")
    a.add_argument("--metric", required=True, choices=METRICS)
    a.add_argument(
        "--level", choices=LEVELS, help="krippendorff_alpha level (default nominal); non-nominal levels need numeric cells"
    )
    a.set_defaults(run=cmd_agreement)
    e = sub.add_parser("export-ls", help="write queued items as Label Studio tasks with pre-labels")
    e.add_argument("--db", required=True, help="label store SQLite file")
    e.add_argument("--out", required=True, help="tasks JSON to write")
    e.add_argument("--status", action="append", choices=("pending", "in_review", "labelled"), help="repeatable; default pending")
    e.add_argument("--config-out", help="also write the Label Studio labeling config XML here")
    e.add_argument("--model-version", default="flywheel")
    e.add_argument("--from-name", default="label", help="Choices control name in the labeling config")
    e.add_argument("--to-name", default="text", help="object tag the Choices control labels")
    e.set_defaults(run=cmd_export_ls)
    i = sub.add_parser("import-ls", help="import Label Studio annotations (all or nothing)")
    i.add_argument("--db", required=True, help="label store SQLite file")
    i.add_argument("--input", required=True, help="Label Studio JSON export")
    i.add_argument("--from-name", default="label", help="Choices control name in the labeling config")
    i.set_defaults(run=cmd_import_ls)
    from jobs.label_review import add_parser as add_review

    add_review(sub, UsageError)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ValueError, OSError, sqlite3.Error) as e:  # LabelingError/BatchError are ValueErrors
        msg = " ".join(str(e).split())  # one line, whatever the exception text holds
        sys.stderr.write(f"error: {msg}\n")
        return 2
    if result is not None:  # `review` prints its own line before it blocks
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
