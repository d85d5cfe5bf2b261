"""Evaluation failures steer the next selection (bounded bonus near failures) and the guideline review."""

import numpy as np
import pytest

from app.controller.failures import failure_bonus, find_failures, guideline_review_items, reserve_for_failures
from app.controller.feedback import failure_clusters

POOL = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)  # unit rows
FAILS = np.array([[2, 0], [0, 3]], dtype=np.float32)  # normalised inside: (1, 0) and (0, 1)


def test_find_failures_wrong_or_low_true_probability_worst_first():
    probs = [[0.9, 0.1], [0.3, 0.7], [0.55, 0.45], [0.2, 0.8]]
    y = np.array([0, 0, 0, 1])
    # p_true = [0.9, 0.3, 0.55, 0.8]; argmax = [0, 1, 0, 1] → row 1 wrong; row 2 right but 0.55 < 0.6
    assert find_failures(probs, y, 0.6, 10).tolist() == [1, 2]  # ascending p_true: 0.3, 0.55
    assert find_failures(probs, y, 0.6, 1).tolist() == [1]
    assert find_failures(probs, y, 0.5, 10).tolist() == [1]  # 0.55 >= 0.5: row 2 no longer counts
    with pytest.raises(ValueError, match="target_idx"):
        find_failures(probs, np.array([0, 0, 0, 2]), 0.6, 10)


def test_failure_bonus_hand_computed():
    bonus, nearest = failure_bonus(POOL, FAILS, k=2, max_bonus=0.5)
    # f0=(1,0): cos with pool = [1, 0.6, 0, -1] → top-2 rows 0, 1 → b0 = 0.5·1 = 0.5, b1 = 0.5·0.6 = 0.3
    # f1=(0,1): cos = [0, 0.8, 1, 0] → top-2 rows 2, 1 → b2 = 0.5, b1 = max(0.3, 0.5·0.8 = 0.4) = 0.4
    # row 3 is no failure's neighbour → 0
    np.testing.assert_allclose(bonus, [0.5, 0.4, 0.5, 0.0], atol=1e-6)
    assert nearest.tolist() == [0, 1, 1, -1]
    assert (bonus >= 0).all() and (bonus <= 0.5).all()  # bounded by max_bonus
    b0, n0 = failure_bonus(POOL, np.zeros((0, 2)), k=2, max_bonus=0.5)  # no failures: no bonus
    assert b0.tolist() == [0, 0, 0, 0] and n0.tolist() == [-1] * 4
    with pytest.raises(ValueError, match="dim"):
        failure_bonus(POOL, np.ones((1, 3)), k=1, max_bonus=1.0)


def test_reserve_bounded_share_top_bonus_and_exclude():
    b = [0.5, 0.4, 0.5, 0.0]
    # q = min(floor(0.25·10) = 2, 3 rows with b > 0) = 2; by bonus desc, ties by index: rows 0, 2
    assert reserve_for_failures(b, 10, 0.25).tolist() == [0, 2]
    assert reserve_for_failures(b, 10, 0.25, exclude=[0]).tolist() == [2, 1]  # row 0 already labelled
    assert reserve_for_failures(b, 100, 1.0).tolist() == [0, 2, 1]  # only 3 rows have a bonus
    assert reserve_for_failures(b, 3, 0.25).size == 0  # floor(0.75) = 0: the strategy keeps the whole budget


def test_failure_clusters_become_guideline_review_items():
    emb = np.array([[0, 0], [0, 1], [10, 10], [10, 11], [11, 10]], dtype=np.float32)
    fails = [{"text": f"t{i}", "target": "positive" if i < 2 else "negative",
              "pred": "negative" if i < 2 else "positive", "p_true": 0.1 * i} for i in range(5)]
    clusters = failure_clusters(emb, [f["text"] for f in fails], n_clusters=2)
    items = guideline_review_items(clusters, fails, iteration=3, guideline_version=2)
    # two groups: {2, 3, 4} (size 3, first) and {0, 1}
    assert [it["size"] for it in items] == [3, 2] and [it["id"] for it in items] == ["iter3-cluster0", "iter3-cluster1"]
    assert items[0]["confusions"] == {"negative -> positive": 3} and items[1]["confusions"] == {"positive -> negative": 2}
    assert {e["text"] for e in items[1]["examples"]} == {"t0", "t1"}
    assert items[0]["kind"] == "guideline_review" and items[0]["guideline_version"] == 2
    assert "3 similar test items failed (mostly negative -> positive)" in items[0]["question"]


def test_reserved_rows_come_first_and_strategy_fills_the_rest():
    from dataclasses import replace

    from app.selection import SelectionInput
    from app.selection import select as run_strategy
    from jobs.stages.select import _with_reserved

    probs = np.array([[0.99, 0.01], [0.5, 0.5], [0.98, 0.02], [0.9, 0.1]])
    inp = SelectionInput(n=4, probs=probs, embeddings=POOL)
    bonus, nearest = failure_bonus(POOL, FAILS, k=2, max_bonus=0.5)  # [0.5, 0.4, 0.5, 0] as above
    reserved = reserve_for_failures(bonus, budget=3, share=0.67)  # floor(0.67·3) = 2 → rows 0, 2
    fails = [{"text": "bad a", "target": "positive", "pred": "negative"},
             {"text": "bad b", "target": "negative", "pred": "positive"}]
    pre = (reserved, bonus, nearest, replace(inp, exclude=reserved), fails)
    res = _with_reserved("entropy", pre, 3, 0, run_strategy)
    # 3 − 2 = 1 pick left for entropy among rows 1 ([0.5, 0.5], entropy ln 2) and 3 ([0.9, 0.1]) → row 1
    assert res.selected == [0, 2, 1]
    assert res.reasons[0] == "feedback: bonus 0.500 near failed test item 'bad a' (gold positive, predicted negative)"
    assert res.reasons[1].startswith("feedback: bonus 0.500 near failed test item 'bad b'")
    np.testing.assert_allclose(res.scores["feedback_bonus"], [0.5, 0.4, 0.5, 0.0], atol=1e-6)
    assert len(set(res.selected)) == 3 and len(res.reasons) == 3
