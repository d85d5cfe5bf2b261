"""NanGuard, check_pair and TruncationCounter."""

import logging

import pytest
import torch

from app.train.bad_input import BadRowError, NanGuard, NonFiniteLossError, TruncationCounter, check_pair, \
    finite_on_all_ranks


def test_nanguard_skips_then_raises_after_n_in_a_row():
    g = NanGuard(max_consecutive=2)
    nan = float("nan")
    # losses: 1, nan, nan, 0.5 (resets), inf, nan, nan -> the third non-finite in a row raises
    assert [g.check(x) for x in (1.0, nan, nan, 0.5, float("inf"), torch.tensor(nan))] == \
        [True, False, False, True, False, False]
    assert (g.skipped, g.consecutive) == (4, 2)
    with pytest.raises(NonFiniteLossError, match=r"nan for 3 consecutive steps \(up to step 41; limit "
                                                 r"max_consecutive=2\)"):
        g.check(nan, step=41)
    with pytest.raises(ValueError, match="max_consecutive=0"):
        NanGuard(0)


def test_finite_on_all_ranks_one_rank():
    assert finite_on_all_ranks(torch.tensor(0.5), 1)
    assert not finite_on_all_ranks(torch.tensor(float("inf")), 1)
    assert not finite_on_all_ranks(torch.tensor([1.0, float("nan")]), 1)  # any element
    assert finite_on_all_ranks(None, 1)  # a rank without the loss (early pipeline stage) votes finite


def test_check_pair():
    check_pair("yes", "no", row=0)
    check_pair([1, 2], [1, 3], row=1)
    with pytest.raises(BadRowError, match="row 7: field 'rejected' is empty"):
        check_pair("a", "  ", row=7)
    with pytest.raises(BadRowError, match="row 3: field 'chosen' is empty"):
        check_pair([], [1], row=3)
    with pytest.raises(BadRowError, match="row abc: 'chosen' and 'rejected' are identical"):
        check_pair("same ", "same", row="abc")
    with pytest.raises(BadRowError, match="identical"):
        check_pair((4, 5), [4, 5], row=2)


def test_truncation_counter(caplog):
    t = TruncationCounter(max_len=4, warn_fraction=0.1)
    with caplog.at_level(logging.WARNING):
        for n in [3] * 17 + [6, 5, 4]:  # 2 of 20 longer than 4, dropping 2 + 1 = 3 tokens
            out = t.truncate(list(range(n)))
            assert len(out) == min(n, 4)
    assert t.summary() == {"seen": 20, "truncated": 2, "tokens_dropped": 3, "fraction": 0.1}
    assert "exceed max_len" not in caplog.text  # 10% is not above 10%
    t.truncate(list(range(9)))  # 3 of 21 = 14.3% > 10% -> one warning
    t.truncate(list(range(9)))
    assert caplog.text.count("exceed max_len=4") == 1
