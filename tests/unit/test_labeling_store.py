"""LabelStore: queue, leases, idempotency, validation, overlap consensus, guidelines."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.labeling.errors import BatchError, InvalidLabelError, LabelingError, LeaseError, UnknownItemError
from app.labeling.store import LabelStore

LABELS = ["neg", "pos"]
REPO = Path(__file__).resolve().parents[2]


class Clock:
    """Manual clock: leases expire when the test says so, not when the machine is slow."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _items(n, **extra):
    return [{"item_id": f"i{k:02d}", "payload": {"text": f"t{k}"}, "suggestion": "pos", "confidence": 0.4,
             "route_reason": "low_confidence", **extra} for k in range(n)]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = LabelStore(str(tmp_path / "labels.db"), LABELS, clock=clock)
    yield s
    s.close()


def test_wal_mode_and_pragmas(store):
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_enqueue_idempotent_and_labelled_items_untouched(store):
    assert store.enqueue(_items(3)) == 3
    assert store.enqueue(_items(3)) == 0
    store.auto_accept("m1", "pos", 0.99, annotator="model-v1")
    assert store.enqueue([{"item_id": "m1", "route_reason": "low_confidence"}]) == 0
    assert store.counts()["status"] == {"pending": 3, "in_review": 0, "labelled": 1}
    assert store.queue_depth() == 3


def test_enqueue_reports_every_bad_row_and_writes_nothing(store):
    bad = [
        *_items(1),
        {"item_id": "x1", "route_reason": "r", "suggestion": "maybe"},
        {"item_id": "x2", "route_reason": "r", "confidence": 1.5},
        {"item_id": "", "route_reason": "r"},
        {"item_id": "x4", "route_reason": "r", "colour": "red"},
    ]
    with pytest.raises(BatchError) as e:
        store.enqueue(bad)
    assert len(e.value.errors) == 4
    assert "items[1]" in e.value.errors[0] and "['neg', 'pos']" in e.value.errors[0]
    assert "items[4]" in e.value.errors[3] and "colour" in e.value.errors[3]
    assert store.queue_depth() == 0


def test_lease_order_submit_and_labels(store, clock):
    store.enqueue(_items(2))
    task = store.lease_next("alice")
    assert task["item_id"] == "i00" and task["payload"] == {"text": "t0"} and task["suggestion"] == "pos"
    assert task["lease_expires"] == clock.t + 300
    res = store.submit("i00", "neg", "alice", lease_id=task["lease_id"])
    assert res["value"] == "neg" and res["source"] == "human" and res["guideline_version"] == 0
    assert store.counts()["status"] == {"pending": 1, "in_review": 0, "labelled": 1}
    assert [lab["item_id"] for lab in store.labels()] == ["i00"]
    assert store.labels(since_id=res["id"]) == []
    assert store.final_labels()["i00"]["value"] == "neg"


def test_lease_exclusive_across_8_threads(store):
    store.enqueue(_items(40))
    got: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def worker(k):
        start.wait()  # all threads hit lease_next at once
        while (task := store.lease_next(f"annotator{k}")) is not None:
            got[k].append(task["item_id"])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [i for g in got for i in g]
    assert len(handed) == 40 and len(set(handed)) == 40  # nothing handed out twice, nothing lost
    assert store.counts()["status"]["in_review"] == 40


def test_lease_exclusive_across_processes(tmp_path):
    db = str(tmp_path / "labels.db")
    with LabelStore(db, LABELS) as s:
        s.enqueue(_items(30))
    code = (
        "import json, sys\nfrom app.labeling.store import LabelStore\n"
        "s = LabelStore(sys.argv[1])\nout = []\n"
        "while (t := s.lease_next(sys.argv[2])) is not None:\n"
        "    out.append(t['item_id'])\n"
        "    s.submit(t['item_id'], 'pos', sys.argv[2], lease_id=t['lease_id'])\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, db, f"p{k}"], stdout=subprocess.PIPE, env=env, cwd=REPO)
             for k in range(3)]
    handed = [i for p in procs for i in json.loads(p.communicate(timeout=60)[0])]
    assert sorted(handed) == sorted(set(handed)) and len(handed) == 30
    with LabelStore(db) as s:
        assert s.counts()["status"]["labelled"] == 30 and len(s.labels()) == 30


def test_expired_and_foreign_leases_are_rejected(store, clock):
    store.enqueue(_items(1))
    old = store.lease_next("alice", lease_seconds=10)
    clock.t += 11
    with pytest.raises(LeaseError, match="expired"):
        store.submit("i00", "neg", "alice", lease_id=old["lease_id"])
    assert store.labels() == []
    new = store.lease_next("bob", lease_seconds=10)  # an expired lease makes the item available again
    assert new["item_id"] == "i00" and new["lease_id"] != old["lease_id"]
    with pytest.raises(LeaseError, match="now leased to 'bob'"):
        store.submit("i00", "neg", "alice", lease_id=old["lease_id"])
    with pytest.raises(LeaseError, match="leased to 'bob'"):
        store.submit("i00", "neg", "carol")  # no lease while someone holds a live one
    assert store.labels() == []
    store.submit("i00", "pos", "bob", lease_id=new["lease_id"])
    assert store.final_labels()["i00"]["annotator"] == "bob"


def test_idempotent_submission(store):
    store.enqueue(_items(2))
    task = store.lease_next("alice")
    first = store.submit("i00", "neg", "alice", lease_id=task["lease_id"], submission_id="req-1")
    again = store.submit("i00", "neg", "alice", lease_id=task["lease_id"], submission_id="req-1")
    assert again == first and len(store.labels()) == 1
    with pytest.raises(LabelingError, match="already used for item 'i00'"):
        store.submit("i01", "neg", "alice", submission_id="req-1")


def test_unknown_label_rejected_with_allowed_set(store):
    store.enqueue(_items(1))
    task = store.lease_next("alice")
    with pytest.raises(InvalidLabelError, match=r"'maybe'.*allowed labels: \['neg', 'pos'\]"):
        store.submit("i00", "maybe", "alice", lease_id=task["lease_id"])
    assert store.labels() == [] and store.counts()["status"]["in_review"] == 1
    with pytest.raises(UnknownItemError, match="unknown item_id 'nope'"):
        store.submit("nope", "pos", "alice")
    with pytest.raises(InvalidLabelError, match="allowed labels"):
        store.auto_accept("m", "maybe", 0.9, "model")


def test_skip_returns_item_to_pending(store):
    store.enqueue(_items(1))
    task = store.lease_next("alice")
    assert store.lease_next("bob") is None
    store.skip("i00", task["lease_id"])
    assert store.counts()["status"]["pending"] == 1
    with pytest.raises(LeaseError):
        store.skip("i00", task["lease_id"])


def test_allowed_labels_persist(tmp_path):
    db = str(tmp_path / "l.db")
    LabelStore(db, ["a", "b"]).close()
    with LabelStore(db) as s:
        assert s.allowed_labels == ["a", "b"]
    with pytest.raises(LabelingError, match=r"differ from the set stored"):
        LabelStore(db, ["a", "c"])
    with pytest.raises(LabelingError, match="not supported"):
        LabelStore(":memory:")


def test_overlap_needs_k_annotators_then_majority(store):
    store.enqueue([{"item_id": "o1", "route_reason": "overlap", "overlap": 3},
                   {"item_id": "o2", "route_reason": "overlap", "overlap": 2}])
    for who, value in (("a", "pos"), ("b", "neg"), ("c", "pos")):
        task = store.lease_next(who)
        assert task["item_id"] == "o1"
        store.submit("o1", value, who, lease_id=task["lease_id"])
        if who != "c":
            assert store.counts()["status"]["labelled"] == 0
    # a labelled o1 already this round, so a is handed o2 next, never o1 again
    assert store.lease_next("a")["item_id"] == "o2"
    final = store.final_labels()["o1"]
    assert (final["value"], final["votes"], final["tie"], final["annotator"]) == ("pos", {"pos": 2, "neg": 1}, False, "c")
    assert store.ratings()["o1"] == {"a": "pos", "b": "neg", "c": "pos"}


def test_overlap_tie_broken_by_allowed_label_order(store):
    store.enqueue([{"item_id": "o", "route_reason": "overlap", "overlap": 2}])
    for who, value in (("a", "pos"), ("b", "neg")):
        store.submit("o", value, who, lease_id=store.lease_next(who)["lease_id"])
    final = store.final_labels()["o"]
    assert final["tie"] and final["value"] == "neg"  # "neg" precedes "pos" in allowed_labels


def test_guideline_bump_and_flag_stale(store):
    assert store.current_guideline() == (0, "")
    assert store.set_guideline("positive = praise") == 1
    assert store.set_guideline("positive = praise") == 1  # unchanged text: same version
    store.auto_accept("m1", "pos", 0.97, "model-v1")
    store.enqueue(_items(1))
    store.submit("i00", "neg", "alice", lease_id=store.lease_next("alice")["lease_id"])
    assert {i: lab["guideline_version"] for i, lab in store.final_labels().items()} == {"m1": 1, "i00": 1}
    assert store.flag_stale("all") == 0  # nothing older than v1 yet

    assert store.set_guideline("positive = praise; sarcasm is negative") == 2
    assert store.current_guideline() == (2, "positive = praise; sarcasm is negative")
    assert store.flag_stale("none") == 0
    assert store.flag_stale("model_only") == 1  # only the model label is re-queued
    assert set(store.final_labels()) == {"i00"}
    task = store.lease_next("bob")
    assert task["item_id"] == "m1" and task["route_reason"] == "guideline_changed"
    assert task["suggestion"] == "pos" and task["guideline_version"] == 2
    store.submit("m1", "neg", "bob", lease_id=task["lease_id"])
    assert store.flag_stale("all") == 1  # i00's human label is still under v1
    m1 = store.final_labels()["m1"]
    assert (m1["value"], m1["source"], m1["guideline_version"]) == ("neg", "human", 2)
    assert store.flag_stale("all") == 0
    assert len(store.labels()) == 3  # history is kept


def test_counts_and_qc_pairs(store):
    store.enqueue([{"item_id": "q1", "route_reason": "qc", "suggestion": "pos", "confidence": 0.95},
                   {"item_id": "q2", "route_reason": "qc", "suggestion": "pos", "confidence": 0.93}])
    store.auto_accept("m1", "pos", 0.99, "model")
    store.submit("q1", "pos", "oracle", source="oracle", lease_id=store.lease_next("oracle")["lease_id"])
    store.submit("q2", "neg", "oracle", source="oracle", lease_id=store.lease_next("oracle")["lease_id"])
    assert store.qc_pairs() == ({"q1": "pos", "q2": "pos"}, {"q1": "pos", "q2": "neg"})
    assert store.counts() == {
        "status": {"pending": 0, "in_review": 0, "labelled": 3},
        "source": {"model": 1, "human": 0, "oracle": 2, "dataset": 0},
        "final_source": {"model": 1, "human": 0, "oracle": 2, "dataset": 0},
    }
    store.auto_accept("q2", "pos", 0.99, "model")  # never overwrites an existing label
    assert store.final_labels()["q2"]["value"] == "neg"


def test_submit_many_is_all_or_nothing(store):
    store.enqueue(_items(2))
    subs = [{"item_id": "i00", "value": "pos", "annotator": "a"},
            {"item_id": "ghost", "value": "pos", "annotator": "a"},
            {"item_id": "i01", "value": "pos", "annotator": "a"}]
    with pytest.raises(BatchError, match="submissions\\[1\\].*unknown item_id 'ghost'"):
        store.submit_many(subs)
    assert store.labels() == []
    assert len(store.submit_many([subs[0], subs[2]])) == 2


def test_labels_per_hour_counts_the_last_window(store, clock):
    store.enqueue(_items(4))
    store.auto_accept("m1", "pos", 0.99, annotator="model-v1")  # t = 1000
    clock.t = 2800.0
    store.auto_accept("m2", "neg", 0.99, annotator="model-v1")
    store.auto_accept("m3", "neg", 0.99, annotator="model-v1")
    assert store.labels_per_hour() == 3.0  # all three within the last hour
    clock.t = 4700.0  # m1 (t=1000) left the window; m2 and m3 (t=2800) are still in it
    assert store.labels_per_hour() == 2.0
    assert store.labels_per_hour(window_s=1800.0) == 0.0
    clock.t = 2900.0
    assert store.labels_per_hour(window_s=600.0) == 12.0  # 2 labels in 10 min = 12 an hour
    with pytest.raises(LabelingError, match="window_s"):
        store.labels_per_hour(window_s=0)
