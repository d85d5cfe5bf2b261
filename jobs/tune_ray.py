"""Ray Tune objects of a study: scheduler, search algorithm, stopper, and the driver-side callback that keeps
each trial's own history (Result.metrics holds only the last report that came with a checkpoint).

Everything here is built from a validated StudyConfig + SearchSpace; the maths lives in app.tune.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
)

from app.tune.params import IntParam, LogUniformParam, UniformParam
from app.tune.pbt import perturb
from app.tune.sampling import resolve
from app.tune.space import SearchSpace
from app.tune.stopper import AdaptiveStopper
from app.tune.study import StudyConfig
from jobs.tune_space_ray import resolve_trial_config

ITER = "training_iteration"


class ExploitLog:
    """PBT exploit events, appended by the scheduler in the driver: (trial, donor, iteration, old -> new)."""

    def __init__(self):
        self.events: list[dict[str, Any]] = []
        self.listeners: list = []

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        for fn in self.listeners:
            fn(event)


def _recording(base: type, log: ExploitLog, space: SearchSpace) -> type:
    """A subclass of Ray's PBT / PB2 whose `_exploit` records the event before Ray performs it."""

    class Recording(base):
        def _exploit(self, tune_controller, trial, trial_to_clone):
            # PBT's own per-trial state is what Ray clones from (a paused trial's last_result may be empty)
            mine, donor = self._trial_state[trial], self._trial_state[trial_to_clone]
            before = dict(trial.config)
            at = int((mine.last_result or trial.last_result or {}).get(ITER, 0))
            donor_at = int((donor.last_result or trial_to_clone.last_result or {}).get(ITER, 0))
            donor_ckpt = donor.last_checkpoint
            super()._exploit(tune_controller, trial, trial_to_clone)
            log.add({"trial_id": trial.trial_id, "donor": trial_to_clone.trial_id, "iteration": at,
                     "donor_iteration": donor_at,
                     "donor_checkpoint": getattr(donor_ckpt, "path", None),
                     "old_config": resolve_trial_config(space, before),
                     "new_config": resolve_trial_config(space, trial.config)})

    Recording.__name__ = f"Recording{base.__name__}"
    return Recording


def _explore_fn(space: SearchSpace, mutable: list[str] | None, resample: float, seed: int):
    """PBT explore step = app.tune.pbt.perturb on the resolved config, written back into Ray's raw config
    (inactive keys keep their old raw value, so a later `when` flip has one to fall back on)."""
    rng = np.random.Generator(np.random.PCG64(seed))

    def explore(config: dict) -> dict:
        new = perturb(resolve_trial_config(space, config), space, rng, resample_probability=resample,
                      mutable=mutable)
        return {**config, **{k: v for k, v in new.items() if k in config and k in space.sampled_keys}}

    return explore


class SuccessiveHalving(HyperBandScheduler):
    """Synchronous successive halving (Jamieson & Talwalkar, AISTATS 2016): every bracket is Hyperband's most
    aggressive one (s = s_max: eta^s trials at max_t eta^-s iterations, the top 1/eta of each rung go on), filled
    in trial order, one bracket per band so `choose_trial_to_run` finishes earlier brackets first.

    Why not Ray's schedulers as they are: Ray 2.60's HyperBandScheduler fills its least aggressive bracket first
    (s = 0, plain random search: the first trials all run max_t), and ASHA promotes a trial whenever its rung
    holds too few results to compare with, so its first trials also run long. In small studies those early
    full-length trials are most of the cost of reaching a target (BENCHMARKS.md, Tuner, run r9). The halving,
    pausing and resuming are Ray's `_Bracket`; only the choice of bracket is ours.
    """

    def on_trial_add(self, tune_controller, trial) -> None:
        if not self._metric or not self._metric_op:
            raise ValueError("SuccessiveHalving needs a metric and mode (build_scheduler passes them)")
        bracket = self._state["bracket"]
        if bracket is None or bracket.filled():
            bracket = self._create_bracket(self._s_max_1 - 1)
            self._hyperbands.append([bracket])
            self._state["bracket"], self._state["band_idx"] = bracket, len(self._hyperbands) - 1
        bracket.add_trial(trial)
        self._trial_info[trial] = bracket, self._state["band_idx"]


def build_scheduler(cfg: StudyConfig, space: SearchSpace, log: ExploitLog):
    """The Ray scheduler of `cfg.scheduler`, ranking trials on `cfg.scheduler_metric` (default: the study's
    metric). Metric and mode go to the scheduler itself, not TuneConfig, so they may differ from the search's."""
    s = cfg.scheduler
    rank = {"metric": cfg.scheduler_metric or cfg.metric, "mode": cfg.scheduler_mode or cfg.mode}
    if s.type == "random":
        return FIFOScheduler()
    if s.type == "asha":
        return AsyncHyperBandScheduler(time_attr=ITER, max_t=cfg.max_t, grace_period=s.grace_period,
                                       reduction_factor=s.reduction_factor, **rank)
    if s.type == "hyperband":
        return HyperBandScheduler(time_attr=ITER, max_t=cfg.max_t, reduction_factor=s.reduction_factor, **rank)
    if s.type == "sha":
        return SuccessiveHalving(time_attr=ITER, max_t=cfg.max_t, reduction_factor=s.reduction_factor, **rank)
    if s.type == "median":
        return MedianStoppingRule(time_attr=ITER, grace_period=s.grace_period,
                                  min_samples_required=s.min_samples_required, **rank)
    if s.type == "pbt":
        return _recording(PopulationBasedTraining, log, space)(
            **rank, time_attr=ITER, perturbation_interval=s.perturbation_interval,
            quantile_fraction=s.quantile_fraction, hyperparam_mutations={}, resample_probability=s.resample_probability,
            custom_explore_fn=_explore_fn(space, s.mutable, s.resample_probability, cfg.seed), log_config=True,
            synch=s.synch)
    from ray.tune.schedulers.pb2 import PB2

    keys = s.mutable or [k for k, p in space.params.items() if isinstance(p, (UniformParam, LogUniformParam))]
    bounds = {}
    for k in keys:
        p = space.params[k]
        if not isinstance(p, (UniformParam, LogUniformParam, IntParam)) or p.when:
            raise ValueError(f"scheduler.mutable: PB2 tunes unconditional numeric keys only; {k!r} is {p.type}")
        bounds[k] = [p.low, p.high]
    return _recording(PB2, log, space)(**rank, time_attr=ITER, perturbation_interval=s.perturbation_interval,
                                       quantile_fraction=s.quantile_fraction, hyperparam_bounds=bounds)


def build_search(cfg: StudyConfig, points: list[dict[str, Any]]):
    """Search algorithm of `cfg.search`, seeded; `points` go to points_to_evaluate (warm starts)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    kind = cfg.search.type
    if kind in ("random", "grid"):
        # no cap here: CPUs per trial already bound what runs, and a cap counts paused trials, which
        # would starve Hyperband's brackets (it pauses trials until their rung fills)
        return BasicVariantGenerator(points_to_evaluate=points or None, random_state=cfg.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    n0 = cfg.search.n_startup_trials
    sampler = (optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=n0) if kind == "tpe"
               else optuna.samplers.GPSampler(seed=cfg.seed, n_startup_trials=n0))
    search = OptunaSearch(sampler=sampler, points_to_evaluate=points or None, metric=cfg.metric, mode=cfg.mode)
    return ConcurrencyLimiter(search, max_concurrent=cfg.search.max_concurrent)


class AdaptiveTuneStopper(tune.Stopper):
    """Ray `Stopper` over app.tune.stopper.AdaptiveStopper; remembers why it stopped each trial."""

    def __init__(self, stopper: AdaptiveStopper):
        self.stopper, self.reasons = stopper, {}

    def __call__(self, trial_id: str, result: dict) -> bool:
        value = result.get(self.stopper.metric)
        if value is None:
            return False
        stop, why = self.stopper.should_stop(trial_id, int(result[ITER]), float(value))
        if stop:
            self.reasons[trial_id] = why
        return stop

    def stop_all(self) -> bool:
        return False


class StudyStopper(tune.Stopper):
    """Ends the whole study once any trial reports `metric` at or beyond `target` (>= for max, <= for min), or
    once its trials have reported `budget` iterations in total. The target is what "compute to reach a target"
    needs and what a user who only wants a good-enough config wants; the budget caps compute, not trials, so
    a scheduler that stops trials early spends what it saves on more configs (Li et al., JMLR 2018, compare
    methods at equal resource). Optionally wraps the adaptive stopper, whose per-trial decisions it passes
    through."""

    def __init__(self, metric: str, mode: str, target: float | None = None, budget: int | None = None,
                 inner: AdaptiveTuneStopper | None = None):
        self.metric, self.mode, self.inner = metric, mode, inner
        self.target = None if target is None else float(target)
        self.budget, self.spent = budget, 0
        self.reached_by: str | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.spent += 1  # one call per reported iteration of any trial
        value = result.get(self.metric)
        if self.target is not None and value is not None and math.isfinite(float(value)) \
                and self.reached_by is None and (
                float(value) >= self.target if self.mode == "max" else float(value) <= self.target):
            self.reached_by = trial_id
        return self.inner(trial_id, result) if self.inner is not None else False

    def stop_all(self) -> bool:
        return self.ended_by is not None

    @property
    def ended_by(self) -> str | None:
        """Why the study ended (target reached first, else budget spent), or None while it goes on."""
        if self.reached_by is not None:
            return f"study target {self.metric} {self.target:g} reached by trial {self.reached_by}"
        if self.budget is not None and self.spent >= self.budget:
            return f"study budget of {self.budget} trial-iterations spent"
        return None

    @property
    def reasons(self) -> dict[str, str]:  # per-trial stops, as AdaptiveTuneStopper.reasons
        return self.inner.reasons if self.inner is not None else {}


class StudyCallback(tune.Callback):
    """Driver-side record of every trial (see app.tune.results for the record format), saved to
    `history_path` after each event so `Tuner.status()` and `--resume` can read it."""

    def __init__(self, space: SearchSpace, history_path: Path, stopper: AdaptiveTuneStopper | StudyStopper | None,
                 records: dict[str, dict] | None = None):
        self.space, self.path, self.stopper = space, Path(history_path), stopper
        self.records: dict[str, dict] = dict(records or {})
        self.lock = threading.Lock()
        self._saved = 0.0

    def __getstate__(self):  # Ray pickles the run config (tuner.pkl); a lock cannot be pickled
        state = dict(self.__dict__)
        state.pop("lock")
        return state

    def __setstate__(self, state):  # a restored study (--resume) continues from the saved history
        self.__dict__.update(state)
        self.lock = threading.Lock()
        if self.path.exists():
            self.records = {r["trial_id"]: r for r in json.loads(self.path.read_text())}

    def record(self, trial) -> dict:
        rec = self.records.setdefault(trial.trial_id, {
            "trial_id": trial.trial_id, "config": {}, "history": [], "status": "running", "error": None,
            "stopped_by": None, "exploits": []})
        rec["config"] = resolve_trial_config(self.space, trial.config)
        return rec

    def on_exploit(self, event: dict) -> None:
        with self.lock:
            rec = self.records.get(event["trial_id"])
            if rec is not None:
                rec["exploits"].append({k: event[k] for k in ("iteration", "donor", "old_config", "new_config")})

    def on_trial_start(self, iteration, trials, trial, **info):
        with self.lock:
            self.record(trial)["status"] = "running"
        self.save()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        keep = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        keep = {k: v for k, v in keep.items() if not k.startswith(("time_", "timestamp", "pid"))}
        with self.lock:
            # arrival order over the whole study: "compute until some trial first reached X" counts reports
            keep["report_index"] = 1 + sum(len(r["history"]) for r in self.records.values())
            self.record(trial)["history"].append(keep)
        self.save(throttle=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        with self.lock:
            rec = self.record(trial)
            rec["status"] = "finished"
            if self.stopper is not None and trial.trial_id in self.stopper.reasons:
                rec["stopped_by"] = self.stopper.reasons[trial.trial_id]
            elif getattr(self.stopper, "ended_by", None):  # StudyStopper ended the whole study
                rec["stopped_by"] = self.stopper.ended_by
        self.save()

    def on_experiment_end(self, trials, **info):
        # results are saved at most once a second: flush the last ones. When a study target or budget ended the
        # study, Ray stops the trials still running without on_trial_complete; close their records here
        ended = getattr(self.stopper, "ended_by", None)
        if ended:
            with self.lock:
                for rec in self.records.values():
                    if rec["status"] == "running":
                        rec["status"] = "finished"
                        rec["stopped_by"] = ended
        self.save()

    def on_trial_error(self, iteration, trials, trial, **info):
        # the local error file is written before this callback; get_error() reads the synced copy, which
        # may not exist yet
        path = trial.error_file
        if path and Path(path).exists():
            text = Path(path).read_text()
        else:
            err = trial.get_error()
            text = str(err) if err is not None else "unknown error"
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        with self.lock:
            rec = self.record(trial)
            rec["status"], rec["error"] = "errored", (lines[-1] if lines else text)[:500]
        self.save()

    def save(self, throttle: bool = False) -> None:
        if throttle and time.time() - self._saved < 1.0:
            return
        with self.lock:
            data = json.dumps(list(self.records.values()), default=_jsonable)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(data)
        tmp.replace(self.path)
        self._saved = time.time()


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def seeds_to_ray(points: list[dict[str, Any]], space: SearchSpace) -> list[dict[str, Any]]:
    """Resolved seed configs -> Ray points (sampled keys only; Ray fills the inactive ones)."""
    out = []
    for p in points:
        resolve(space, {k: v for k, v in p.items() if k in space.sampled_keys})  # validates the point
        out.append({k: v for k, v in p.items() if k in space.sampled_keys})
    return out
