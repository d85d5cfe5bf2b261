"""Registry, input validation and invariants every strategy must keep."""

import logging

import numpy as np
import pytest

import app.selection.registry as registry
from app.selection import SelectionInput, SelectionInputError, available, get, register, select, validate_input

N = 60


@pytest.fixture(scope="module")
def full_input() -> SelectionInput:
    rng = np.random.default_rng(0)
    return SelectionInput(
        n=N, probs=rng.dirichlet(np.ones(3), N), embeddings=rng.normal(size=(N, 5)),
        losses=rng.exponential(size=N), exclude=np.array([0, 3, 17, 42]),
        labelled_embeddings=rng.normal(size=(2, 5)),
        scores={"token_entropy": rng.random(N), "mean_logprob": -rng.random(N), "data_value": rng.normal(size=N),
                "champion_pred": rng.integers(0, 3, N).astype(float),
                "challenger_probs": rng.dirichlet(np.ones(3), N)},
    )


def test_every_strategy_keeps_the_invariants(full_input):
    assert len(available(full_input)) == len(available()) == 15
    excluded = set(full_input.exclude.tolist())
    for name in available():
        res = select(name, full_input, budget=7, seed=3)
        assert len(res.selected) == 7 and len(set(res.selected)) == 7, name
        assert all(0 <= i < N and i not in excluded for i in res.selected), name
        assert len(res.reasons) == 7 and all(isinstance(r, str) and r for r in res.reasons), name
        assert all(v.shape == (N,) and np.isfinite(v).all() for v in res.scores.values()), name
        again = select(name, full_input, budget=7, seed=3)
        assert again.selected == res.selected, f"{name} is not deterministic for a fixed seed"


def test_budget_larger_than_pool_takes_all_and_warns(full_input, caplog):
    with caplog.at_level(logging.WARNING):
        res = select("kcenter", full_input, budget=10_000)
    assert sorted(res.selected) == sorted(set(range(N)) - {0, 3, 17, 42})
    assert "budget 10000 is larger than the 56 candidate rows" in caplog.text


def test_random_depends_on_seed(full_input):
    a, b = (select("random", full_input, 10, seed=s).selected for s in (1, 2))
    assert a != b


def test_register_rejects_duplicates_and_get_lists_names():
    with pytest.raises(ValueError, match="'entropy' registered twice"):
        register("entropy")(lambda inp, budget, rng: None)
    with pytest.raises(KeyError, match="available: .*'entropy'.*'kcenter'"):
        get("entopy")
    with pytest.raises(ValueError, match="unknown need 'prob'"):
        register("x", needs=("prob",))


def test_register_and_available_filter(monkeypatch):
    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))

    @register("first_rows", needs=("scores.foo|losses",), description="test only")
    def first_rows(inp, budget, rng):
        return registry.SelectionResult(list(range(budget)), {}, ["first"] * budget)

    assert "first_rows" not in available(SelectionInput(n=3))
    assert "first_rows" in available(SelectionInput(n=3, scores={"foo": np.zeros(3)}))
    assert "first_rows" in available(SelectionInput(n=3, losses=np.zeros(3)))
    assert select("first_rows", SelectionInput(n=3, losses=np.zeros(3)), 2).selected == [0, 1]


def test_missing_needs_and_unknown_params():
    inp = SelectionInput(n=4, probs=np.full((4, 2), 0.5))
    with pytest.raises(SelectionInputError, match="'kcenter' needs embeddings"):
        select("kcenter", inp, 2)
    with pytest.raises(SelectionInputError, match=r"unknown params \['lamda'\]; accepted: \[\]"):
        select("entropy", inp, 2, lamda=0.3)
    with pytest.raises(SelectionInputError, match="budget must be an integer >= 1, got 0"):
        select("entropy", inp, 0)
    with pytest.raises(SelectionInputError, match="no candidates: all 4 rows are in exclude"):
        select("entropy", SelectionInput(n=4, probs=np.full((4, 2), 0.5), exclude=np.arange(4)), 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "empty pool: n=0"),
        ({"probs": np.array([[0.5, 0.5], [np.nan, 1.0], [0.5, 0.5], [np.inf, 0.0]])}, r"NaN/inf in rows \[1, 3\]"),
        ({"probs": np.array([[0.5, 0.5], [1.2, -0.2], [0.5, 0.5], [0.5, 0.5]])}, r"negative values in rows \[1\]"),
        ({"probs": np.zeros((4, 2))}, r"rows sum to 0 in rows \[0, 1, 2, 3\]"),
        ({"probs": np.ones((4, 1))}, "need at least 2 classes"),
        ({"probs": np.full((3, 2), 0.5)}, r"probs has shape \(3, 2\) but the pool has n=4"),
        ({"embeddings": np.ones((5, 2))}, r"embeddings has shape \(5, 2\) but the pool has n=4"),
        ({"losses": np.ones((4, 1))}, r"losses must have 1 dims, got shape \(4, 1\)"),
        ({"exclude": np.array([1, 1, 2, 2])}, r"duplicate indices \[1, 2\]"),
        ({"exclude": np.array([0, 4, -1])}, r"out-of-range indices \[4, -1\]; allowed range is 0..3"),
        ({"exclude": np.array([0.0, 1.0])}, "integer row indices"),
        ({"embeddings": np.ones((4, 2)), "labelled_embeddings": np.ones((2, 3))}, r"d must match"),
    ],
)
def test_validation_errors(kwargs, message):
    kwargs = {"n": 4, **kwargs}
    with pytest.raises(SelectionInputError, match=message):
        validate_input(SelectionInput(**kwargs))


def test_nan_rows_message_lists_first_ten():
    p = np.full((30, 2), 0.5)
    p[5:25] = np.nan
    first_ten = r"rows \[5, 6, 7, 8, 9, 10, 11, 12, 13, 14\] \(first 10 of 20\)"
    with pytest.raises(SelectionInputError, match=first_ten):
        validate_input(SelectionInput(n=30, probs=p))


def test_renormalise_with_warning_or_strict_error(caplog):
    p = np.array([[0.5, 0.5], [2.0, 2.0], [0.2, 0.6]])
    with caplog.at_level(logging.WARNING):
        out = validate_input(SelectionInput(n=3, probs=p))
    np.testing.assert_allclose(out.probs, [[0.5, 0.5], [0.5, 0.5], [0.25, 0.75]])
    assert "probs rows [1, 2] do not sum to 1" in caplog.text
    with pytest.raises(SelectionInputError, match=r"rows \[1, 2\] do not sum to 1 \(e.g. row 1 sums to 4\)"):
        validate_input(SelectionInput(n=3, probs=p), strict=True)
