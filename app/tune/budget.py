"""Budget plans for Hyperband, ASHA and successive halving: how many trials run for how long at each rung.

`hyperband_plan` follows Li et al., "Hyperband: A Novel Bandit-Based Approach to Hyperparameter
Optimization", JMLR 18 (2018), Algorithm 1, in exact integer / Fraction arithmetic: `floor(log(R) / log(eta))`
in floating point gives 4 instead of 5 for R = 243, eta = 3, so s_max is found by an integer loop.
`asha_rungs` reproduces the milestones of Ray 2.60's `AsyncHyperBandScheduler` (first bracket) exactly,
float quirk included, so the printed plan is what the scheduler built from the same numbers will do.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np


class PlanError(ValueError):
    """Bad budget parameters (the message names the parameter and the allowed range)."""


def _number(x: Fraction | float) -> int | float:
    """JSON form: an int when the value is integral, a float otherwise."""
    return int(x) if x == int(x) else float(x)


def _ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


def s_max(max_t: int, eta: int) -> int:
    """floor(log_eta(max_t)) by integer arithmetic: the largest s with eta**s <= max_t."""
    s = 0
    while eta ** (s + 1) <= max_t:
        s += 1
    return s


def hyperband_plan(max_t: int, eta: int = 3, counting: str = "full") -> dict[str, Any]:
    """Brackets of Hyperband (Li et al., JMLR 2018, Algorithm 1), largest s first.

    s_max = floor(log_eta R), B = (s_max + 1) R. Bracket s: n = ceil((B / R) eta^s / (s + 1)) trials at
    r = R eta^-s iterations; rung i = 0..s keeps n_i = floor(n eta^-i) trials and trains them to
    r_i = r eta^i. For R = 81, eta = 3 the s = 4 bracket is n = 81, 27, 9, 3, 1 at r = 1, 3, 9, 27, 81.

    Note: Ray's HyperBandScheduler differs from the paper: it rounds log_eta R to the nearest integer
    instead of flooring it and keeps ceil(n_i / eta) trials per halving instead of floor(n eta^-i)
    (R = 81, eta = 3, s = 3 gives 34, 12, 4, 2 there against the paper's 34, 11, 3, 1).

    Args:
        max_t: R, the most iterations one trial may receive (integer >= 1).
        eta: the reduction factor (integer >= 2).
        counting: "full" counts n_i * r_i per rung (each rung trains its survivors to r_i from scratch, as
            the paper's Algorithm 1 does); "incremental" counts n_i * (r_i - r_(i-1)) (survivors resume from a
            checkpoint, as Ray's schedulers do).

    Returns:
        {"scheduler": "hyperband", "max_t", "eta", "brackets": [{"s", "rungs": [{"n", "r"}, ...]}, ...],
         "iterations_counting", "total_trial_iterations"}.
    """
    _check_int("max_t", max_t, 1)
    _check_int("eta", eta, 2)
    if counting not in ("full", "incremental"):
        raise PlanError(f"counting: got {counting!r}; allowed: 'full', 'incremental'")
    smax = s_max(max_t, eta)
    budget_per_r = smax + 1  # B / R
    brackets, total = [], Fraction(0)
    for s in range(smax, -1, -1):
        n = _ceil(Fraction(budget_per_r * eta**s, s + 1))
        r = Fraction(max_t, eta**s)
        rungs, prev_r = [], Fraction(0)
        for i in range(s + 1):
            n_i, r_i = n // eta**i, r * eta**i
            total += n_i * (r_i if counting == "full" else r_i - prev_r)
            prev_r = r_i
            rungs.append({"n": n_i, "r": _number(r_i)})
        brackets.append({"s": s, "rungs": rungs})
    return {
        "scheduler": "hyperband",
        "max_t": max_t,
        "eta": eta,
        "brackets": brackets,
        "iterations_counting": counting,
        "total_trial_iterations": _number(total),
    }


def asha_rungs(max_t: float, grace_period: float = 1, eta: float = 4) -> list[int | float]:
    """Milestones (iterations) at which ASHA compares a trial with its rung, ascending.

    Ray 2.60 `ray.tune.schedulers.async_hyperband._Bracket` with s = 0:
    `MAX_RUNGS = int(np.log(max_t / min_t) / np.log(rf) - s + 1)`, milestones `min_t * rf ** k` for
    k < MAX_RUNGS, i.e. G, G eta, G eta^2, ... <= R. Copied with its floating point on purpose: when R / G is
    an exact power of eta the quotient can land just below an integer and Ray leaves out the rung at R
    (R = 243, G = 1, eta = 3 -> 1, 3, 9, 27, 81). That rung would change nothing: Ray stops every trial
    that reaches max_t anyway.

    Args:
        max_t: R, the iteration at which every trial stops (> 0).
        grace_period: G, the first milestone (0 < G <= R).
        eta: reduction factor (> 1); at each rung a trial continues only if it is in the top 1 / eta.

    Returns:
        Milestones, e.g. asha_rungs(81, 1, 3) == [1, 3, 9, 27, 81].
    """
    for name, v in (("max_t", max_t), ("grace_period", grace_period)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise PlanError(f"{name}: must be a number > 0, got {v!r}")
    if grace_period > max_t:
        raise PlanError(f"grace_period: must be <= max_t ({max_t}), got {grace_period!r}")
    _check_eta(eta)
    max_rungs = int(np.log(max_t / grace_period) / np.log(eta) - 0 + 1)
    return [_number(grace_period * eta**k) for k in range(max_rungs)]


def asha_plan(max_t: float, grace_period: float = 1, eta: float = 4, num_samples: int | None = None) -> dict[str, Any]:
    """The JSON plan printed by `jobs.tune plan --scheduler asha` (milestones: `asha_rungs`).

    ASHA (Li et al., MLSys 2020) keeps the top 1 / eta at each milestone, so of N trials about n_k = floor(N eta^-k)
    reach milestone r_k (Hyperband's rung count, exact rational arithmetic), and floor(N eta^-K) pass the last of
    the K milestones and run on to R when that milestone is below R. Total trial-iterations: sum n_k (r_k - r_(k-1)).
    A lower bound on a real study: ASHA promotes a trial whenever its rung is too sparse to compare, so early
    trials can run further than the count says.

    Args:
        num_samples: N, the trials started; default eta^(K-1) rounded up (one trial reaches the last milestone).
    """
    rungs = asha_rungs(max_t, grace_period, eta)
    e = Fraction(eta)
    if num_samples is None:
        num_samples = _ceil(e ** (len(rungs) - 1))
    _check_int("num_samples", num_samples, 1)
    levels = [Fraction(r) for r in rungs] + ([Fraction(max_t)] if rungs[-1] < max_t else [])
    counts = [int(num_samples / e**k) for k in range(len(levels))]  # int() floors a positive Fraction
    total = sum(n * (r - (levels[k - 1] if k else 0)) for k, (n, r) in enumerate(zip(counts, levels)))
    return {
        "scheduler": "asha",
        "max_t": max_t,
        "grace_period": grace_period,
        "eta": eta,
        "num_samples": num_samples,
        "rungs": [{"n": n, "r": r} for n, r in zip(counts, rungs)],
        "total_trial_iterations": _number(total),
    }


def sha_plan(max_t: int, eta: float = 3) -> dict[str, Any]:
    """One bracket of synchronous successive halving (Jamieson & Talwalkar, AISTATS 2016), the bracket that
    `jobs.tune_ray.SuccessiveHalving` repeats: Ray 2.60 HyperBandScheduler's most aggressive bracket.

    Ray's arithmetic, float rounding included (so the plan is what the scheduler does): s = round(log_eta R),
    n_0 = ceil(eta^s) trials at r_0 = int(R eta^-s); each halving keeps ceil(n / eta) trials and trains them to
    min(r eta, R), the last rung at R. For R = 9, eta = 3: 9 trials at 1, 3 at 3, 1 at 9.

    Returns:
        {"scheduler": "sha", "max_t", "eta", "rungs": [{"n", "r"}, ...],
         "trial_iterations_per_bracket": sum n_i (r_i - r_(i-1)) (survivors resume from their checkpoints)}.
    """
    _check_int("max_t", max_t, 1)
    _check_eta(eta)
    s = int(np.round(np.log(max_t) / np.log(eta)))
    n, r = int(np.ceil(eta**s)), int(max_t * eta ** (-s))
    if r < 1:
        raise PlanError(f"max_t: {max_t} is too small for eta {eta} (first rung would be 0 iterations)")
    rungs = [{"n": n, "r": r}]
    for _ in range(s):
        n, r = int(np.ceil(n / eta)), int(min(r * eta, max_t))
        rungs.append({"n": n, "r": r})
    total = sum(g["n"] * (g["r"] - (rungs[i - 1]["r"] if i else 0)) for i, g in enumerate(rungs))
    return {"scheduler": "sha", "max_t": max_t, "eta": eta, "rungs": rungs, "trial_iterations_per_bracket": total}


def _check_eta(eta: Any) -> None:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 1:
        raise PlanError(f"eta: must be a number > 1, got {eta!r}")


def _check_int(name: str, value: Any, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise PlanError(f"{name}: must be an integer >= {lowest}, got {value!r}")
