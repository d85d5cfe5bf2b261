"""LabelStore: the labeling queue, label history and guidelines in one SQLite file.

Item life cycle::

    enqueue -> pending --lease_next--> in_review --submit--> labelled
                  ^                        |  skip / lease expiry
                  +------------------------+
    auto_accept ------------------------------------------> labelled (source "model")
    flag_stale: labelled (label under an older guideline) -> pending, route_reason "guideline_changed"

Every label ever written stays in ``labels`` (append-only history); ``final_labels`` derives the
current answer per item. Items may require ``overlap`` > 1 distinct annotators; they stay
pending until that many have labelled them in the current round and are then decided by
majority vote (``consensus.majority_vote``, ties broken by the order of ``allowed_labels``).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from app.labeling import records, schema, views
from app.labeling.errors import BatchError, LabelingError, UnknownItemError

_STALE_RULES = ("all", "model_only", "none")


class LabelStore:
    """Thread- and process-safe label store over one SQLite file (see module docstring).

    Each thread gets its own connection; every write is one ``BEGIN IMMEDIATE`` transaction.

    Args:
        path: SQLite file (created if missing). ``":memory:"`` is refused: each thread would see
            its own empty database.
        allowed_labels: the label set. Persisted on first use; later opens may pass None (use
            the stored set) or the same set; a different set raises.
        clock: returns unix seconds; injectable so tests can expire leases without sleeping.
    """

    def __init__(self, path: str, allowed_labels: list[str] | None = None, *, clock: Callable[[], float] = time.time):
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise LabelingError("LabelStore path ':memory:' is not supported (one database per thread); pass a file path")
        allowed = records.check_allowed(allowed_labels)
        self._clock = clock
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        schema.create(self._conn())
        self.allowed_labels = self._init_allowed(allowed)

    # ------------------------------------------------------------------ plumbing
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise LabelingError(f"LabelStore({self.path!r}) is closed")
            conn = schema.connect(self.path)
            with self._conns_lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self, mode: str) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute(f"BEGIN {mode}")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _write(self):
        return self._tx("IMMEDIATE")  # take the write lock up front: no lock-upgrade deadlock between writers

    def _read(self):
        return self._tx("DEFERRED")  # one consistent snapshot across several SELECTs

    def close(self) -> None:
        """Close every connection this object opened (from any thread)."""
        with self._conns_lock:
            self._closed = True
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_allowed(self, allowed: list[str] | None) -> list[str] | None:
        with self._write() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'allowed_labels'").fetchone()
            stored = json.loads(row["value"]) if row else None
            if allowed is None:
                return stored
            if stored is None:
                c.execute("INSERT INTO meta (key, value) VALUES ('allowed_labels', ?)", (json.dumps(allowed),))
            elif set(stored) != set(allowed):
                raise LabelingError(
                    f"allowed_labels {sorted(allowed)} differ from the set stored in {self.path!r}: {sorted(stored)};"
                    " open with allowed_labels=None or use a new store"
                )
        return allowed

    @staticmethod
    def _version(c: sqlite3.Connection) -> int:
        return c.execute("SELECT COALESCE(MAX(version), 0) FROM guidelines").fetchone()[0]

    # ------------------------------------------------------------------ queue
    def enqueue(self, items: list[dict]) -> int:
        """Add items to the review queue (status pending); all-or-nothing.

        Args:
            items: dicts with ``item_id`` (str), ``route_reason`` (str), and optionally
                ``payload`` (JSON-able dict), ``suggestion`` (str, an allowed label),
                ``confidence`` (float in [0, 1]), ``overlap`` (int >= 1 distinct annotators).

        Returns:
            Number of new items. Existing item ids (any status) are left untouched.

        Raises:
            BatchError: listing every bad row; nothing is written.
        """
        rows = records.parse_enqueue(items, self.allowed_labels)
        added = 0
        with self._write() as c:
            now = self._clock()
            for row in rows:
                added += c.execute(
                    "INSERT INTO items (item_id, payload, suggestion, confidence, route_reason, overlap, status,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (item_id) DO NOTHING",
                    (*row, now, now),
                ).rowcount
        return added

    def auto_accept(
        self,
        item_id: str,
        value: str,
        confidence: float | None,
        annotator: str,
        guideline_version: int | None = None,
        *,
        payload: dict | None = None,
    ) -> None:
        """Record a model label (source "model") and mark the item labelled.

        Creates the item (route_reason "auto") if absent. An item that is already labelled is
        left alone: a model never overwrites a label; use ``flag_stale`` or ``submit`` for that.

        Args:
            guideline_version: version the model worked under; default the current one.
        """
        records.check_name(item_id, "item_id")
        records.check_label(value, item_id, self.allowed_labels)
        conf = records.check_confidence(confidence, f"auto_accept item {item_id!r}")
        records.check_name(annotator, "annotator")
        body = records.payload_json(payload)
        if guideline_version is not None and (
            isinstance(guideline_version, bool) or not isinstance(guideline_version, int) or guideline_version < 0
        ):
            raise LabelingError(f"guideline_version must be an int >= 0 or None, got {guideline_version!r}")
        with self._write() as c:
            now = self._clock()
            row = c.execute("SELECT status FROM items WHERE item_id = ?", (item_id,)).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO items (item_id, payload, suggestion, confidence, status, route_reason, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, 'labelled', 'auto', ?, ?)",
                    (item_id, body, value, conf, now, now),
                )
            elif row["status"] == "labelled":
                return
            else:
                c.execute(
                    "UPDATE items SET status = 'labelled', suggestion = ?, confidence = ?, lease_id = NULL,"
                    " lease_owner = NULL, lease_expires = NULL, updated_at = ? WHERE item_id = ?",
                    (value, conf, now, item_id),
                )
            version = self._version(c) if guideline_version is None else guideline_version
            c.execute(
                "INSERT INTO labels (item_id, value, source, confidence, annotator, guideline_version, created_at)"
                " VALUES (?, ?, 'model', ?, ?, ?, ?)",
                (item_id, value, conf, annotator, version, now),
            )

    def lease_next(self, annotator: str, lease_seconds: float = 300) -> dict | None:
        """Atomically hand the oldest available item to ``annotator``.

        Available: pending, or in_review with an expired lease, and (for overlap items) not yet
        labelled by this annotator in the current round. Two callers never get the same item
        while its lease is live.

        Returns:
            ``{item_id, payload, suggestion, confidence, route_reason, lease_id, lease_owner,
            lease_expires, guideline_version}`` or None when nothing is available.
        """
        records.check_name(annotator, "annotator")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float) or not (
            math.isfinite(lease_seconds) and lease_seconds > 0
        ):
            raise LabelingError(f"lease_seconds must be a finite number > 0, got {lease_seconds!r}")
        with self._write() as c:
            now = self._clock()
            # One indexed query per status, then the older of the two: an OR across statuses made SQLite
            # scan and sort the whole queue on every call (2-3x slower at 3000 items, see BENCHMARKS.md).
            found = [c.execute(
                "SELECT i.rowid AS rid, i.* FROM items i WHERE status = ?" + extra
                + " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.item_id = i.item_id AND l.id > i.round_start"
                " AND l.annotator = ?) ORDER BY created_at, rowid LIMIT 1", args).fetchone()
                for extra, args in (("", ("pending", annotator)),
                                    (" AND lease_expires <= ?", ("in_review", now, annotator)))]
            found = [r for r in found if r is not None]
            if not found:
                return None
            row = min(found, key=lambda r: (r["created_at"], r["rid"]))
            lease_id, expires = uuid.uuid4().hex, now + float(lease_seconds)
            c.execute(
                "UPDATE items SET status = 'in_review', lease_id = ?, lease_owner = ?, lease_expires = ?, updated_at = ?"
                " WHERE item_id = ?",
                (lease_id, annotator, expires, now, row["item_id"]),
            )
            version = self._version(c)
        return {
            "item_id": row["item_id"],
            "payload": json.loads(row["payload"]),
            "suggestion": row["suggestion"],
            "confidence": row["confidence"],
            "route_reason": row["route_reason"],
            "lease_id": lease_id,
            "lease_owner": annotator,
            "lease_expires": expires,
            "guideline_version": version,
        }

    def _submit_txn(self, c: sqlite3.Connection, rec: dict, now: float) -> dict:
        sid = rec["submission_id"]
        if sid is not None:
            prev = c.execute("SELECT * FROM labels WHERE submission_id = ?", (sid,)).fetchone()
            if prev is not None:
                if prev["item_id"] != rec["item_id"]:
                    raise LabelingError(
                        f"submission_id {sid!r} was already used for item {prev['item_id']!r}, not {rec['item_id']!r}"
                    )
                return records.label_dict(prev)  # a retried request: answer as the first time, write nothing
        item = c.execute("SELECT * FROM items WHERE item_id = ?", (rec["item_id"],)).fetchone()
        if item is None:
            raise UnknownItemError(f"unknown item_id {rec['item_id']!r}; enqueue it first")
        records.check_lease(item, rec["lease_id"], now)
        cur = c.execute(
            "INSERT INTO labels (item_id, value, source, confidence, annotator, guideline_version, created_at,"
            " submission_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (rec["item_id"], rec["value"], rec["source"], rec["confidence"], rec["annotator"], self._version(c), now, sid),
        )
        voters = c.execute(
            "SELECT COUNT(DISTINCT annotator) FROM labels WHERE item_id = ? AND id > ? AND source != 'model'",
            (rec["item_id"], item["round_start"]),
        ).fetchone()[0]
        c.execute(
            "UPDATE items SET status = ?, lease_id = NULL, lease_owner = NULL, lease_expires = NULL, updated_at = ?"
            " WHERE item_id = ?",
            ("labelled" if voters >= item["overlap"] else "pending", now, rec["item_id"]),
        )
        return records.label_dict(c.execute("SELECT * FROM labels WHERE id = ?", (cur.lastrowid,)).fetchone())

    def submit(self, item_id, value, annotator, source="human", lease_id=None, submission_id=None, confidence=None) -> dict:
        """Record a label for one item under the current guideline version.

        The item becomes labelled once ``overlap`` distinct annotators have labelled it in this
        round (1 by default), else it goes back to pending for the next annotator.

        Args:
            source: "human", "oracle", "dataset" or "model".
            lease_id: the lease from ``lease_next``; None is allowed only while nobody holds a
                live lease on the item (imports, dataset labels).
            submission_id: client-chosen idempotency key; resubmitting it returns the first
                result and writes nothing.

        Returns:
            The stored label: ``{id, item_id, value, source, confidence, annotator,
            guideline_version, created_at, submission_id}``.

        Raises:
            InvalidLabelError: value not in the allowed labels (the message lists them).
            LeaseError: expired or foreign lease; nothing is written.
            UnknownItemError: item never enqueued.
        """
        rec = records.parse_submission(
            item_id, value, annotator, source, lease_id, submission_id, confidence, allowed=self.allowed_labels
        )
        with self._write() as c:
            return self._submit_txn(c, rec, self._clock())

    def submit_many(self, submissions: list[dict], row_names: list[str] | None = None) -> list[dict]:
        """Submit several labels in one transaction: all are written or none.

        Args:
            submissions: dicts with the keyword arguments of :meth:`submit`.
            row_names: how to name each row in error messages (default ``submissions[i]``).

        Raises:
            BatchError: every failing row (name, item id, reason); nothing is written.
        """
        names = row_names or [f"submissions[{i}]" for i in range(len(submissions))]
        if len(names) != len(submissions):
            raise LabelingError(f"row_names has {len(names)} entries for {len(submissions)} submissions")
        errors, recs = [], []
        for name, s in zip(names, submissions):
            try:
                recs.append(records.parse_submission(**s, allowed=self.allowed_labels))
            except (LabelingError, TypeError) as e:  # TypeError: missing/unknown keyword
                errors.append(f"{name}: {e}")
        if errors:
            raise BatchError("submit_many", errors)
        out: list[dict] = []
        with self._write() as c:
            now = self._clock()
            for name, rec in zip(names, recs):
                try:
                    out.append(self._submit_txn(c, rec, now))
                except LabelingError as e:  # keep going so the caller sees every bad row at once
                    errors.append(f"{name}: {e}")
            if errors:
                raise BatchError("submit_many", errors)  # raised inside the transaction: rolled back
        return out

    def skip(self, item_id: str, lease_id: str) -> None:
        """Give a leased item back: it returns to pending (and, being old, to the queue head)."""
        records.check_name(lease_id, "lease_id")
        with self._write() as c:
            now = self._clock()
            item = c.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
            if item is None:
                raise UnknownItemError(f"unknown item_id {item_id!r}")
            records.check_lease(item, lease_id, now)
            c.execute(
                "UPDATE items SET status = 'pending', lease_id = NULL, lease_owner = NULL, lease_expires = NULL,"
                " updated_at = ? WHERE item_id = ?",
                (now, item_id),
            )

    # ------------------------------------------------------------------ reads
    def labels(self, since_id: int = 0) -> list[dict]:
        """Label history with ``id > since_id``, oldest first (ids only grow: poll with the last id seen)."""
        with self._read() as c:
            rows = c.execute("SELECT * FROM labels WHERE id > ? ORDER BY id", (since_id,)).fetchall()
        return [records.label_dict(r) for r in rows]

    def final_labels(self) -> dict[str, dict]:
        """Current label of every labelled item (pending / in_review items are left out).

        The latest label of the item's current round wins, except when two or more annotators
        labelled it in this round (overlap): then their latest votes are decided by majority
        vote, ties broken by the order of ``allowed_labels``. Each value is the winning label
        dict plus ``votes`` ({label: count}) and ``tie`` (bool).
        """
        with self._read() as c:
            return views.final_labels(c, self.allowed_labels)

    def ratings(self) -> dict[str, dict[str, str]]:
        """Current-round non-model labels as ``{item_id: {annotator: value}}`` (for agreement and consensus)."""
        with self._read() as c:
            return views.ratings(c)

    def qc_pairs(self) -> tuple[dict[str, str], dict[str, str]]:
        """(model suggestion, final label) of labelled QC items, for ``consensus.qc_disagreement``."""
        with self._read() as c:
            sugg = views.qc_suggestions(c)
            final = views.final_labels(c, self.allowed_labels)
        return sugg, {i: final[i]["value"] for i in sugg if i in final}

    def counts(self) -> dict:
        """``{"status": {status: items}, "source": {source: label rows}, "final_source": {source: items}}``."""
        with self._read() as c:
            return views.counts(c, self.allowed_labels)

    def queue_depth(self) -> int:
        """Items still waiting for a human: pending + in_review."""
        with self._read() as c:
            return c.execute("SELECT COUNT(*) FROM items WHERE status != 'labelled'").fetchone()[0]

    def labels_per_hour(self, window_s: float = 3600.0) -> float:
        """Label rows written in the last ``window_s`` seconds of the store's clock, scaled to one hour."""
        if window_s <= 0:
            raise LabelingError(f"window_s must be > 0, got {window_s}")
        with self._read() as c:
            n = c.execute("SELECT COUNT(*) FROM labels WHERE created_at >= ?", (self._clock() - window_s,)).fetchone()[0]
        return n * 3600.0 / window_s

    def items(self, statuses: Sequence[str] = ("pending",)) -> list[dict]:
        """Items with the given statuses, oldest first (all item columns, payload decoded)."""
        if bad := [s for s in statuses if s not in schema.STATUSES]:
            raise LabelingError(f"unknown statuses {bad}; allowed: {list(schema.STATUSES)}")
        with self._read() as c:
            return views.items(c, statuses)

    # ------------------------------------------------------------------ guidelines
    def set_guideline(self, text: str) -> int:
        """Store the labeling guideline; returns its version (bumped only when the text changes)."""
        records.check_name(text, "guideline text")
        with self._write() as c:
            row = c.execute("SELECT version, text FROM guidelines ORDER BY version DESC LIMIT 1").fetchone()
            if row is not None and row["text"] == text:
                return row["version"]
            version = (row["version"] if row else 0) + 1
            c.execute("INSERT INTO guidelines (version, text, created_at) VALUES (?, ?, ?)", (version, text, self._clock()))
            return version

    def current_guideline(self) -> tuple[int, str]:
        """(version, text); (0, "") before any guideline was set."""
        with self._read() as c:
            row = c.execute("SELECT version, text FROM guidelines ORDER BY version DESC LIMIT 1").fetchone()
        return (row["version"], row["text"]) if row else (0, "")

    def flag_stale(self, rule: Literal["all", "model_only", "none"]) -> int:
        """Send labels made under an older guideline back for review (label drift).

        An item is stale when any label of its current round has a ``guideline_version`` below
        the current one. ``"all"`` re-queues every stale item, ``"model_only"`` only those whose
        latest label came from the model, ``"none"`` nothing. Re-queued items become pending
        with route_reason "guideline_changed" and start a new round (old labels stay in history
        and no longer vote).

        Returns:
            Number of items re-queued.
        """
        if rule not in _STALE_RULES:
            raise LabelingError(f"flag_stale rule {rule!r} is not one of {list(_STALE_RULES)}")
        if rule == "none":
            return 0
        model_only = (
            " AND (SELECT source FROM labels l WHERE l.item_id = items.item_id ORDER BY l.id DESC LIMIT 1) = 'model'"
            if rule == "model_only"
            else ""
        )
        with self._write() as c:
            return c.execute(
                "UPDATE items SET status = 'pending', route_reason = 'guideline_changed', updated_at = ?,"
                " round_start = (SELECT MAX(id) FROM labels l WHERE l.item_id = items.item_id)"
                " WHERE status = 'labelled' AND (SELECT MIN(guideline_version) FROM labels l"
                " WHERE l.item_id = items.item_id AND l.id > items.round_start) < ?" + model_only,
                (self._clock(), self._version(c)),
            ).rowcount
