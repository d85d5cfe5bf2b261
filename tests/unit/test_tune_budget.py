"""Hyperband brackets (Li et al., JMLR 2018, Table / Algorithm 1) and ASHA milestones."""

import json
import subprocess
import sys

import pytest

from app.tune.budget import PlanError, asha_plan, asha_rungs, hyperband_plan, s_max, sha_plan


def _table(plan):
    return {b["s"]: [(r["n"], r["r"]) for r in b["rungs"]] for b in plan["brackets"]}


def test_hyperband_r81_eta3_matches_the_paper():
    plan = hyperband_plan(81, 3)
    assert [b["s"] for b in plan["brackets"]] == [4, 3, 2, 1, 0]  # largest s first
    assert _table(plan) == {
        4: [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
        3: [(34, 3), (11, 9), (3, 27), (1, 81)],  # n = ceil(5 * 27 / 4) = ceil(33.75) = 34
        2: [(15, 9), (5, 27), (1, 81)],  # n = ceil(5 * 9 / 3) = 15
        1: [(8, 27), (2, 81)],  # n = ceil(5 * 3 / 2) = 8, floor(8 / 3) = 2
        0: [(5, 81)],
    }
    assert all(type(r["r"]) is int for b in plan["brackets"] for r in b["rungs"])  # R is a power of eta
    # full: s4 5*81 = 405; s3 102+99+81+81 = 363; s2 135+135+81 = 351; s1 216+162 = 378; s0 405 -> 1902
    assert plan["iterations_counting"] == "full" and plan["total_trial_iterations"] == 1902
    # incremental n_i (r_i - r_(i-1)): s4 81+54+54+54+54 = 297; s3 102+66+54+54 = 276; s2 135+90+54 = 279;
    # s1 216+108 = 324; s0 405 -> 1581
    assert hyperband_plan(81, 3, counting="incremental")["total_trial_iterations"] == 1581


def test_hyperband_non_power_r10_eta3():
    # s_max = 2 (9 <= 10 < 27), B / R = 3; s=2: n = ceil(3*9/3) = 9, r = 10/9; s=1: n = ceil(3*3/2) = 5,
    # r = 10/3, floor(5/3) = 1; s=0: n = 3, r = 10
    table = _table(hyperband_plan(10, 3))
    assert [n for n, _ in table[2]] == [9, 3, 1] and [n for n, _ in table[1]] == [5, 1]
    assert table[0] == [(3, 10)]
    assert table[2][0][1] == pytest.approx(10 / 9) and table[2][1][1] == pytest.approx(10 / 3)
    assert table[2][2][1] == 10 and type(table[2][2][1]) is int
    # full total: 9*10/9 + 3*10/3 + 1*10 + 5*10/3 + 1*10 + 3*10 = 10+10+10+50/3+10+30 = 260/3
    assert hyperband_plan(10, 3)["total_trial_iterations"] == pytest.approx(260 / 3)


def test_s_max_is_exact_where_floating_log_is_not():
    import math

    assert math.floor(math.log(243) / math.log(3)) == 4  # the floating-point trap
    assert s_max(243, 3) == 5 and s_max(242, 3) == 4 and s_max(1000, 10) == 3 and s_max(1, 3) == 0
    assert hyperband_plan(243, 3)["brackets"][0]["rungs"][0] == {"n": 243, "r": 1}  # n = ceil(6*243/6)


def test_asha_plan_counts_trials_and_iterations_per_rung():
    # R = 243 is a power of eta but Ray leaves its rung out (see asha_rungs): the trial kept at 81 runs on to 243
    plan = asha_plan(243, 1, 3, num_samples=243)
    assert [(g["n"], g["r"]) for g in plan["rungs"]] == [(243, 1), (81, 3), (27, 9), (9, 27), (3, 81)]
    assert plan["total_trial_iterations"] == 243 * 1 + 81 * 2 + 27 * 6 + 9 * 18 + 3 * 54 + 1 * 162
    assert asha_plan(9, 1, 3)["num_samples"] == 9 and asha_plan(9, 1, 3)["total_trial_iterations"] == 9 + 3 * 2 + 6
    half = asha_plan(10, 1, 2.5, num_samples=7)  # non-integral eta: floors of exact fractions, r as numbers
    assert [(g["n"], g["r"]) for g in half["rungs"]] == [(7, 1), (2, 2.5), (1, 6.25)]
    assert half["total_trial_iterations"] == 7 + 2 * 1.5 + 1 * 3.75
    with pytest.raises(PlanError, match="num_samples"):
        asha_plan(9, 1, 3, num_samples=0)


def test_asha_milestones():
    assert asha_rungs(81, 1, 3) == [1, 3, 9, 27, 81]
    assert asha_rungs(100, 1, 4) == [1, 4, 16, 64]  # 256 > 100
    # int(ln(100/10) / ln 3 + 1) = int(2.096 + 1) = 3 -> 10, 30, 90
    assert asha_rungs(100, 10, 3) == [10, 30, 90]
    assert asha_rungs(5, 5, 2) == [5]
    # Ray's floating point drops the rung at R here (ln 243 / ln 3 = 4.9999...): copied on purpose
    assert asha_rungs(243, 1, 3) == [1, 3, 9, 27, 81]


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: hyperband_plan(0, 3), "max_t"),
        (lambda: hyperband_plan(81, 1), "eta"),
        (lambda: hyperband_plan(81.5, 3), "max_t"),
        (lambda: hyperband_plan(81, 3, counting="partial"), "counting"),
        (lambda: asha_rungs(10, 20, 3), "grace_period"),
        (lambda: asha_rungs(10, 1, 1), "eta"),
        (lambda: asha_rungs(-1, 1, 3), "max_t"),
        (lambda: sha_plan(0, 3), "max_t"),
        (lambda: sha_plan(9, 1), "eta"),
    ],
)
def test_bad_plan_parameters(call, word):
    with pytest.raises(PlanError, match=f"^{word}:"):
        call()


def test_sha_plan_is_hyperbands_most_aggressive_bracket_with_rays_rounding():
    # R = 81, eta = 3: the paper's s = 4 bracket (81, 27, 9, 3, 1 at 1, 3, 9, 27, 81)
    assert sha_plan(81, 3)["rungs"] == hyperband_plan(81, 3)["brackets"][0]["rungs"]
    nine = sha_plan(9, 3)
    assert nine["rungs"] == [{"n": 9, "r": 1}, {"n": 3, "r": 3}, {"n": 1, "r": 9}]
    assert nine["trial_iterations_per_bracket"] == 9 * 1 + 3 * 2 + 1 * 6
    # eta = 2, R = 6: log2 6 = 2.58 rounds to 3 in Ray (the paper floors to 2): 8 trials at int(6/8) = 0 would
    # be an empty rung, so Ray's r0 formula gives 0 and the plan refuses it
    with pytest.raises(PlanError, match="^max_t: 6 is too small"):
        sha_plan(6, 2)
    assert [g["n"] for g in sha_plan(16, 2)["rungs"]] == [16, 8, 4, 2, 1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.tune", "plan", *args], capture_output=True, text=True)


def test_cli_plan_json():
    out = run("--scheduler", "hyperband", "--max-t", "81", "--eta", "3")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["brackets"][1] == {"s": 3, "rungs": [{"n": 34, "r": 3}, {"n": 11, "r": 9}, {"n": 3, "r": 27},
                                                    {"n": 1, "r": 81}]}
    out = run("--scheduler", "asha", "--max-t", "81", "--grace-period", "1", "--eta", "3")
    assert json.loads(out.stdout) == {"scheduler": "asha", "max_t": 81, "grace_period": 1, "eta": 3, "num_samples": 81,
                                      "rungs": [{"n": 81, "r": 1}, {"n": 27, "r": 3}, {"n": 9, "r": 9},
                                                {"n": 3, "r": 27}, {"n": 1, "r": 81}],
                                      "total_trial_iterations": 297}  # 81*1 + 27*2 + 9*6 + 3*18 + 1*54
    out = run("--scheduler", "asha", "--max-t", "9", "--eta", "3", "--num-samples", "72")
    assert json.loads(out.stdout)["total_trial_iterations"] == 72 + 24 * 2 + 8 * 6
    out = run("--scheduler", "sha", "--max-t", "9", "--num-samples", "3")
    assert out.returncode == 2 and "--num-samples" in out.stderr
    out = run("--scheduler", "sha", "--max-t", "9")
    assert json.loads(out.stdout)["rungs"] == [{"n": 9, "r": 1}, {"n": 3, "r": 3}, {"n": 1, "r": 9}]
    out = run("--scheduler", "asha", "--max-t", "10", "--grace-period", "20")
    assert out.returncode == 2 and out.stderr.startswith("tune plan: error: grace_period:")
