"""Ray-side pieces of a study that need no cluster: PBT's explore hook, the stopper adapter, seed points,
the study callback's records, and the figures."""

import json

import pytest

pytest.importorskip("ray.tune")

from app.tune.space import parse_space  # noqa: E402
from app.tune.stopper import AdaptiveStopper  # noqa: E402
from jobs.tune_ray import AdaptiveTuneStopper, StudyCallback, StudyStopper, _explore_fn, seeds_to_ray  # noqa: E402

SPACE = parse_space({
    "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
    "batch_size": {"type": "choice", "values": [8, 16, 32]},
    "use_lora": {"type": "choice", "values": [True, False]},
    "lora_rank": {"type": "int", "low": 4, "high": 8, "when": {"use_lora": True}},
    "lora_alpha": {"derive": "2 * lora_rank", "when": {"use_lora": True}},
})


def test_explore_changes_only_mutable_keys_and_keeps_inactive_raw_values():
    explore = _explore_fn(SPACE, mutable=["learning_rate"], resample=0.0, seed=0)
    raw = {"learning_rate": 1e-3, "batch_size": 16, "use_lora": False, "lora_rank": 5}
    new = explore(dict(raw))
    # resample 0: learning_rate is multiplied by 0.8 or 1.2; nothing else moves
    assert new["learning_rate"] in (pytest.approx(8e-4), pytest.approx(1.2e-3))
    assert {k: new[k] for k in ("batch_size", "use_lora", "lora_rank")} == {"batch_size": 16, "use_lora": False,
                                                                           "lora_rank": 5}
    assert "lora_alpha" not in new  # Ray's config holds sampled keys only; derived keys are recomputed in the trial


def test_explore_is_seeded():
    raw = {"learning_rate": 1e-3, "batch_size": 16, "use_lora": True, "lora_rank": 5}
    a, b = _explore_fn(SPACE, None, 0.25, seed=7), _explore_fn(SPACE, None, 0.25, seed=7)
    assert [a(dict(raw)) for _ in range(5)] == [b(dict(raw)) for _ in range(5)]


def test_stopper_adapter_never_stops_before_min_steps_and_keeps_reason():
    s = AdaptiveTuneStopper(AdaptiveStopper("acc", "max", patience=1, min_steps=3))
    # no improvement from iteration 2 on; patience 1, but the clock starts at min_steps = 3
    stops = [s("t", {"training_iteration": i, "acc": 0.5}) for i in (1, 2, 3)]
    assert stops == [False, False, True]
    assert "no improvement" in s.reasons["t"] and s("u", {"training_iteration": 1}) is False
    assert s.stop_all() is False


def test_target_stopper_ends_the_study_at_the_first_report_reaching_the_target():
    up = StudyStopper("val_accuracy", "max", 0.7)
    assert not up("a", {"training_iteration": 1, "val_accuracy": 0.69}) and not up.stop_all()
    assert not up("b", {"training_iteration": 1, "val_loss": 0.1}) and not up.stop_all()  # no metric: no effect
    assert not up("b", {"training_iteration": 2, "val_accuracy": 0.7}) and up.stop_all()  # >= for max
    up("a", {"training_iteration": 2, "val_accuracy": 0.9})
    assert up.reached_by == "b"  # the first trial to reach it
    down = StudyStopper("val_loss", "min", 0.5)
    assert not down("a", {"val_loss": float("nan")}) and not down.stop_all()
    down("a", {"val_loss": 0.5})
    assert down.stop_all()
    # the adaptive stopper inside keeps deciding per trial (as in the test above: stops at iteration 3)
    inner = AdaptiveTuneStopper(AdaptiveStopper("val_accuracy", "max", patience=1, min_steps=3))
    both = StudyStopper("val_accuracy", "max", 0.99, inner=inner)
    stops = [both("a", {"training_iteration": i, "val_accuracy": 0.5}) for i in (1, 2, 3)]
    assert stops == [False, False, True] and not both.stop_all() and "a" in inner.reasons


def test_budget_ends_the_study_after_that_many_reports_of_all_trials():
    s = StudyStopper("acc", "max", target=0.9, budget=3)
    s("a", {"training_iteration": 1, "acc": 0.5})
    s("b", {"training_iteration": 1, "acc": 0.6})
    assert not s.stop_all() and s.ended_by is None
    s("a", {"training_iteration": 2, "acc": 0.7})  # the third trial-iteration of the study
    assert s.stop_all() and s.ended_by == "study budget of 3 trial-iterations spent"
    first = StudyStopper("acc", "max", target=0.6, budget=2)
    first("a", {"acc": 0.6})
    first("b", {"acc": 0.1})
    assert first.ended_by == "study target acc 0.6 reached by trial a"  # the target wins when both hold


def test_seeds_to_ray_keeps_sampled_keys_and_validates():
    pts = seeds_to_ray([{"learning_rate": 1e-3, "batch_size": 8, "use_lora": True, "lora_rank": 6,
                         "lora_alpha": 12}], SPACE)
    assert pts == [{"learning_rate": 1e-3, "batch_size": 8, "use_lora": True, "lora_rank": 6}]
    with pytest.raises(ValueError, match="batch_size"):
        seeds_to_ray([{"learning_rate": 1e-3, "batch_size": 12, "use_lora": False}], SPACE)


class _Trial:
    def __init__(self, tid, config):
        self.trial_id, self.config = tid, config

    error_file = None

    def get_error(self):
        return RuntimeError("Traceback ...\nValueError: trial config gives invalid trainer options")


def test_callback_records_results_errors_and_survives_pickling(tmp_path):
    import pickle

    path = tmp_path / "history.json"
    cb = StudyCallback(SPACE, path, None)
    t = _Trial("a", {"learning_rate": 1e-3, "batch_size": 8, "use_lora": True, "lora_rank": 4})
    cb.on_trial_start(0, [], t)
    cb.on_trial_result(0, [], t, {"training_iteration": 1, "acc": 0.5, "time_this_iter_s": 1.0, "done": False})
    cb.on_exploit({"trial_id": "a", "iteration": 1, "donor": "b", "old_config": {}, "new_config": {}})
    cb.on_trial_complete(0, [], t)
    e = _Trial("c", {"learning_rate": 1e-3, "batch_size": 8, "use_lora": False, "lora_rank": 4})
    cb.on_trial_error(0, [], e)
    saved = {r["trial_id"]: r for r in json.loads(path.read_text())}
    assert saved["a"]["config"]["lora_alpha"] == 8 and saved["a"]["status"] == "finished"
    # timings and booleans left out; report_index = arrival order over the study
    assert saved["a"]["history"] == [{"training_iteration": 1, "acc": 0.5, "report_index": 1}]
    assert saved["a"]["exploits"][0]["donor"] == "b"
    assert saved["c"]["status"] == "errored" and saved["c"]["error"].startswith("ValueError: trial config")
    assert "lora_rank" not in saved["c"]["config"]  # inactive key dropped by resolve
    again = pickle.loads(pickle.dumps(cb))  # Ray pickles the run config; a restored callback reloads the file
    assert again.records == saved


def test_figures_are_written(tmp_path):
    from app.tune.plots import plot_curves, plot_parallel

    recs = [{"trial_id": "a", "status": "finished", "exploits": [{"iteration": 1, "donor": "b"}],
             "history": [{"training_iteration": i, "m": 0.1 * i} for i in (1, 2)]},
            {"trial_id": "b", "status": "errored", "history": [], "exploits": []}]
    trials = [{"config": {"lr": 1e-4, "opt": "adam"}, "score": 0.2}, {"config": {"lr": 1e-2}, "score": 0.4},
              {"config": {"lr": 1e-3}, "score": None}]
    for path in (plot_curves(recs, "m", tmp_path / "c.png"), plot_parallel(trials, tmp_path / "p.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sched, search", [
    ({"type": "random"}, {"type": "random"}), ({"type": "asha", "grace_period": 1}, {"type": "tpe"}),
    ({"type": "hyperband"}, {"type": "gp"}), ({"type": "median"}, {"type": "random"}),
    ({"type": "pbt", "mutable": ["learning_rate"]}, {"type": "random"}), ({"type": "pb2"}, {"type": "random"}),
    ({"type": "sha"}, {"type": "tpe"}),
])
def test_every_scheduler_and_search_builds(sched, search):
    from app.tune.study import parse_study
    from jobs.tune_ray import ExploitLog, build_scheduler, build_search

    cfg, space = parse_study({"name": "b", "space": SPACE.to_dict(),
                              "scheduler": sched, "search": search, "max_t": 9})
    s = build_scheduler(cfg, space, ExploitLog())
    assert type(s).__name__.lower().replace("recording", "").startswith(
        {"random": "fifo", "asha": "asynchyperband", "hyperband": "hyperband", "median": "medianstopping",
         "pbt": "populationbased", "pb2": "pb2", "sha": "successivehalving"}[sched["type"]])
    assert build_search(cfg, [{"learning_rate": 1e-3}]) is not None


class _SchedTrial:
    """What Ray's HyperBand brackets read of a trial: its id, status and whether it is saving."""

    def __init__(self, trial_id: str):
        self.trial_id, self.status, self.is_saving = trial_id, "PENDING", False

    def __repr__(self) -> str:
        return self.trial_id


class _SchedController:
    def __init__(self):
        self.stopped = []

    def stop_trial(self, trial) -> None:
        trial.status = "TERMINATED"
        self.stopped.append(trial.trial_id)


def test_successive_halving_fills_one_aggressive_bracket_at_a_time_and_ranks_on_the_scheduler_metric():
    from ray.tune.schedulers import TrialScheduler

    from app.tune.budget import sha_plan
    from app.tune.study import parse_study
    from jobs.tune_ray import ExploitLog, build_scheduler

    cfg, space = parse_study({"name": "b", "space": SPACE.to_dict(), "scheduler": {"type": "sha"}, "max_t": 9,
                              "scheduler_metric": "val_loss", "scheduler_mode": "min"})
    sched, ctl = build_scheduler(cfg, space, ExploitLog()), _SchedController()
    trials = [_SchedTrial(f"t{i}") for i in range(12)]
    for t in trials:
        sched.on_trial_add(ctl, t)
    brackets = [b for band in sched._hyperbands for b in band]
    # 12 trials: a full bracket of 9 (the plan's first rung) and the next one begun with 3, both s = s_max
    assert [len(b.current_trials()) for b in brackets] == [9, 3]
    assert (brackets[0]._n, brackets[0]._cumul_r) == tuple(sha_plan(9, 3)["rungs"][0].values())
    # val_loss falls with i while val_accuracy rises with it until t5, so the two metrics disagree on the best
    acc = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.55, 0.55, 0.55]
    actions = []
    for i, t in enumerate(trials[:9]):
        assert sched.choose_trial_to_run(ctl) is t  # the first bracket's pending trials before the second's
        t.status = "RUNNING"
        a = sched.on_trial_result(ctl, t, {"training_iteration": 1, "val_loss": 1.0 - 0.1 * i, "val_accuracy": acc[i]})
        t.status = "PAUSED" if a == TrialScheduler.PAUSE else t.status
        actions.append(a)
    # the ninth result completes rung 1: the 3 lowest losses (t6, t7, t8) go on to 3 iterations, not the most
    # accurate (t3, t4, t5); the rest stop
    assert actions[:8] == [TrialScheduler.PAUSE] * 8 and actions[8] == TrialScheduler.CONTINUE
    assert sorted(ctl.stopped) == [f"t{i}" for i in range(6)]
    assert (brackets[0]._n, brackets[0]._cumul_r) == tuple(sha_plan(9, 3)["rungs"][1].values())
    assert sched.choose_trial_to_run(ctl) in (trials[6], trials[7])  # survivors resume before t9 starts


def test_pb2_refuses_a_conditional_key():
    from app.tune.study import parse_study
    from jobs.tune_ray import ExploitLog, build_scheduler

    cfg, space = parse_study({"name": "b", "space": SPACE.to_dict(),
                              "scheduler": {"type": "pb2", "mutable": ["lora_rank"]}})
    with pytest.raises(ValueError, match="lora_rank"):
        build_scheduler(cfg, space, ExploitLog())


def test_callback_names_the_study_target_as_the_stop_reason(tmp_path):
    stop = StudyStopper("acc", "max", 0.7)
    cb = StudyCallback(SPACE, tmp_path / "history.json", stop)
    a, b = (_Trial(t, {"learning_rate": 1e-3, "batch_size": 8, "use_lora": False}) for t in ("a", "b"))
    cb.on_trial_complete(0, [], a)  # before the target: no reason of the stopper's
    stop("b", {"training_iteration": 2, "acc": 0.75})
    cb.on_trial_complete(0, [], b)
    assert cb.records["a"]["stopped_by"] is None
    assert cb.records["b"]["stopped_by"] == "study target acc 0.7 reached by trial b"
    # Ray ends the study without completing trial c; its last reports (inside the 1 s save throttle) are
    # written at the end, and the record is closed with the target as its reason
    c = _Trial("c", {"learning_rate": 1e-3, "batch_size": 8, "use_lora": False})
    cb.on_trial_start(0, [], c)
    for i in (1, 2):
        cb.on_trial_result(0, [], c, {"training_iteration": i, "acc": 0.5})
    cb.on_experiment_end([])
    saved = {r["trial_id"]: r for r in json.loads((tmp_path / "history.json").read_text())}
    assert [h["training_iteration"] for h in saved["c"]["history"]] == [1, 2]
    assert saved["c"]["status"] == "finished" and saved["c"]["stopped_by"].startswith("study target acc 0.7")
