"""combined (weights, cold start, batch-aware diversity), loss and disagreement strategies."""

import numpy as np
import pytest

from app.selection import SelectionInput, SelectionInputError, schedule, select


def test_schedule_moves_from_diversity_to_difficulty():
    # t = round / (total - 1): alpha 0.3; beta 0.6 - 0.5 t; gamma 0.1 + 0.5 t
    assert schedule(0, 5) == pytest.approx((0.3, 0.6, 0.1))
    assert schedule(2, 5) == pytest.approx((0.3, 0.35, 0.35))  # t = 0.5
    assert schedule(4, 5) == pytest.approx((0.3, 0.1, 0.6))
    assert schedule(0, 1) == pytest.approx((0.3, 0.6, 0.1))
    with pytest.raises(SelectionInputError, match="0 <= round_idx < total_rounds"):
        schedule(5, 5)


def test_cold_start_is_random():
    x = np.random.default_rng(0).normal(size=(20, 3))
    res = select("combined", SelectionInput(n=20, embeddings=x), budget=4, seed=7)
    assert res.selected == select("random", SelectionInput(n=20, embeddings=x), budget=4, seed=7).selected
    assert res.reasons[0] == "cold start (no uncertainty or loss signal): random"
    p = np.full((20, 2), 0.5)
    few = select("combined", SelectionInput(n=20, probs=p, exclude=np.arange(3)), 4, min_labelled=5)
    assert few.reasons[0] == "cold start (3 < 5 labelled): random"


def test_weights_renormalise_over_present_components():
    # probs + losses, no embeddings: beta is dropped, alpha = gamma = 0.5 after renormalising 1/1/1.
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.99, 0.01], [0.6, 0.4]])
    loss = np.array([0.0, 4.0, 1.0, 2.0])
    res = select("combined", SelectionInput(n=4, probs=p, losses=loss), budget=4, alpha=1, beta=1, gamma=1)
    # entropies: row0 ln 2 = 0.69315, row1 0.32508, row2 0.05600, row3 0.67301
    # U min-max: row0 1, row1 (0.32508-0.05600)/(0.69315-0.05600) = 0.42232, row2 0, row3 0.61701/0.63715 = 0.96840
    # H (loss) min-max: [0, 1, 0.25, 0.5]
    # combined = 0.5 U + 0.5 H = [0.5, 0.71116, 0.125, 0.73420]
    np.testing.assert_allclose(res.scores["combined"], [0.5, 0.71116, 0.125, 0.73420], atol=1e-4)
    assert res.selected == [3, 1, 0, 2]
    assert "diversity" not in res.scores


def test_diversity_is_recomputed_after_each_pick():
    # Two tight pairs far apart; uncertainty favours the left pair a little, diversity should split the batch.
    x = np.array([[0.0], [0.1], [10.0], [10.1], [5.0]])
    p = np.array([[0.5, 0.5], [0.52, 0.48], [0.6, 0.4], [0.62, 0.38], [0.9, 0.1]])
    inp = SelectionInput(n=5, probs=p, embeddings=x, exclude=np.array([4]))
    greedy = select("combined", inp, budget=2, alpha=0.5, beta=0.5, gamma=0.0).selected
    # pick 1: D to row 4 (x=5) = [5, 4.9, 5, 5.1] -> min-max [0.5, 0, 0.5, 1]; U = [1, 0.95, 0.14, 0]
    #         totals [0.75, 0.475, 0.32, 0.5] -> row 0
    # pick 2: D = [-, 0.1, 5, 4.9] -> [0, 1, 0.98]; totals [0.475, 0.57, 0.49] -> row 2, not row 1
    assert greedy == [0, 2]
    plain_uncertainty = select("entropy", inp, budget=2).selected
    assert plain_uncertainty == [0, 1]


def test_combined_uses_precomputed_uncertainty_without_probs():
    inp = SelectionInput(n=4, losses=np.zeros(4), scores={"mean_logprob": np.array([-0.1, -3.0, -1.0, -0.2])})
    # U = -mean_logprob; losses are constant so H min-max is all 0 -> order by U
    assert select("combined", inp, budget=2, alpha=1, beta=0, gamma=1).selected == [1, 2]


def test_combined_rejects_partial_weights():
    with pytest.raises(SelectionInputError, match="all of alpha, beta, gamma or none"):
        select("combined", SelectionInput(n=2, losses=np.ones(2)), 1, alpha=1.0)


def test_loss_percentile_cap():
    loss = np.arange(10, dtype=float)  # row i has loss i; percentile rank = 10 (i + 1)
    inp = SelectionInput(n=10, losses=loss)
    assert select("loss", inp, 3).selected == [9, 8, 7]
    # percentile=80 skips rows 8 and 9 (ranks 90, 100) as likely noise; they come last, lowest first
    capped = select("loss", inp, 10, percentile=80)
    assert capped.selected == [7, 6, 5, 4, 3, 2, 1, 0, 8, 9]
    assert capped.reasons[0] == "loss=7 (percentile 80)"
    assert capped.reasons[-1] == "loss=9 (percentile 100, above cap)"
    np.testing.assert_allclose(capped.scores["loss_percentile"], 10 * (loss + 1))


def test_disagreement_first_then_entropy():
    champ = np.array([0, 1, 1, 0, 2])
    chall_probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]])
    inp = SelectionInput(n=5, probs=probs, scores={"champion_pred": champ.astype(float),
                                                   "challenger_probs": chall_probs})
    # challenger argmax = [0, 1, 0, 1, 2] -> disagree on rows 2, 3; row 2 has higher entropy (0.6/0.4)
    # agreeing rows by entropy: row 1 (0.5/0.5), row 4 (0.7/0.3), row 0 (0.9/0.1)
    res = select("disagreement", inp, 5)
    assert res.selected == [2, 3, 1, 4, 0]
    np.testing.assert_allclose(res.scores["disagree"], [0, 0, 1, 1, 0])
    assert res.reasons[0].startswith("champion=1 vs challenger=0")


def test_prefilter_keeps_the_batch_inside_the_uncertain_region():
    # rows 1 and 2 sit on top of each other next to row 0; row 3 is far away and fairly confident.
    x = np.array([[0.0], [0.1], [0.1], [10.0]])
    p = np.array([[0.5, 0.5], [0.51, 0.49], [0.52, 0.48], [0.7, 0.3]])
    inp = SelectionInput(n=4, probs=p, embeddings=x)
    # entropies 0.69315, 0.69295, 0.69235, 0.61086 -> U min-max [1, 0.99757, 0.99027, 0]
    # pick 1 (nothing covered, D = 0 for all): row 0. pick 2: D = dist to row 0 = [0.1, 0.1, 10] -> [0, 0, 1]
    #   totals 0.5 U + 0.5 D: row1 0.49878, row2 0.49514, row3 0.5 -> the far, easy row 3 wins
    assert select("combined", inp, 2, alpha=0.5, beta=0.5, gamma=0.0, prefilter=None).selected == [0, 3]
    # the default pre-filter (5 x budget = 10 >= 4 rows) changes nothing on a pool this small
    assert select("combined", inp, 2, alpha=0.5, beta=0.5, gamma=0.0).selected == [0, 3]
    # prefilter=1: only the top 1 x 2 rows by alpha U (rows 0, 1) are candidates
    res = select("combined", inp, 2, alpha=0.5, beta=0.5, gamma=0.0, prefilter=1)
    assert res.selected == [0, 1]
    with pytest.raises(SelectionInputError, match="prefilter"):
        select("combined", inp, 2, prefilter=0.5)


def test_diverse_batch_clusters_the_uncertain_rows():
    # cluster A near 0 (rows 0-2), cluster B near 10 (rows 3-4), a confident row 5 in between
    x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [5.0]])
    p = np.array([[0.5, 0.5], [0.52, 0.48], [0.55, 0.45], [0.53, 0.47], [0.56, 0.44], [0.99, 0.01]])
    res = select("diverse_batch", SelectionInput(n=6, probs=p, embeddings=x), 2, prefilter=2)
    # keep the top 2 x 2 = 4 by entropy: rows 0, 1, 3, 2 (0.5 > 0.52 > 0.53 > 0.55 away from 0.5)
    # k-means k=2 on x = {0, 0.1, 0.2 | 10}: clusters {0, 1, 2} (weighted centroid ~0.1) and {3}
    # cluster A holds the most uncertain row (0), so it goes first; its row nearest the centroid is row 1
    assert res.selected == [1, 3]
    assert res.scores["cluster"][4] == res.scores["cluster"][5] == -1  # outside the pre-filter
    assert "entropy=" in res.reasons[0]
    # entropy alone would spend the whole batch on cluster A
    assert select("entropy", SelectionInput(n=6, probs=p), 2).selected == [0, 1]
