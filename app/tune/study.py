"""A study's configuration: what to search, how to schedule and search it, which task to train on.

Loaded from YAML by `load_study`, validated completely before Ray starts: the search space is parsed, every
sampled key is mapped onto a trainer option (`param_map`), and scheduler / search combinations Ray Tune
cannot run are refused with a message that says what to change.

```yaml
name: tune-demo                       # the study name: unique per store unless `--resume`
space: jobs/configs/tune_demo_space.yaml
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
search: {type: random}
metric: val_accuracy
mode: max
num_samples: 6
max_t: 4                              # iterations per trial; one iteration = trainer.steps_per_iteration steps
task: {path: data/sst2/alps_dev_first3000.tsv, text_field: sentence, label_field: label, ...}
trainer: {steps_per_iteration: 4, overrides: {head_lr: 2.0e-3}}
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.tune.space import SearchSpace, SpaceError, load_space, parse_space


class StudyError(ValueError):
    """The study config is invalid; one line per problem, each naming the field."""


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomScheduler(_Cfg):
    """Every trial runs to max_t (FIFO)."""

    type: Literal["random"] = Field("random", description="no early stopping: every trial runs max_t iterations")


class AshaScheduler(_Cfg):
    """Asynchronous successive halving (Li et al., MLSys 2020); rungs as `jobs.tune plan --scheduler asha`."""

    type: Literal["asha"] = Field("asha", description="asynchronous successive halving")
    grace_period: int = Field(1, ge=1, description="first rung (iterations)")
    reduction_factor: float = Field(3, gt=1, description="eta: keep the top 1/eta at each rung")


class HyperbandScheduler(_Cfg):
    """Synchronous Hyperband (Li et al., JMLR 2018) as Ray's HyperBandScheduler runs it."""

    type: Literal["hyperband"] = Field("hyperband", description="Hyperband brackets of successive halving")
    reduction_factor: float = Field(3, gt=1, description="eta")


class ShaScheduler(_Cfg):
    """Synchronous successive halving (Jamieson & Talwalkar, AISTATS 2016): Hyperband's most aggressive bracket
    only, repeated; rungs as `jobs.tune plan --scheduler sha`."""

    type: Literal["sha"] = Field("sha", description="successive halving: brackets of eta^s trials, top 1/eta kept")
    reduction_factor: float = Field(3, gt=1, description="eta")


class MedianScheduler(_Cfg):
    """Median stopping rule (Golovin et al., KDD 2017, Google Vizier)."""

    type: Literal["median"] = Field("median", description="stop a trial below the median of running averages")
    grace_period: int = Field(1, ge=0, description="iterations before a trial can be stopped")
    min_samples_required: int = Field(2, ge=1, description="trials needed to compute a median")


class PbtScheduler(_Cfg):
    """Population Based Training (Jaderberg et al., 2017) with app.tune.pbt's explore step."""

    type: Literal["pbt"] = Field("pbt", description="population based training")
    perturbation_interval: int = Field(1, ge=1, description="iterations between exploit/explore decisions")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="bottom share replaced by the top share")
    resample_probability: float = Field(0.25, ge=0, le=1, description="chance a key is redrawn, not perturbed")
    mutable: list[str] | None = Field(None, description="keys PBT may change (None: every range/choice key)")
    synch: bool = Field(False, description="wait for the whole population at each interval (Ray's synch)")


class Pb2Scheduler(_Cfg):
    """PB2 (Parker-Holder et al., NeurIPS 2020): PBT whose explore step is a GP bandit over numeric bounds."""

    type: Literal["pb2"] = Field("pb2", description="population based bandits")
    perturbation_interval: int = Field(1, ge=1, description="iterations between exploit/explore decisions")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="bottom share replaced by the top share")
    mutable: list[str] | None = Field(None, description="numeric keys PB2 tunes (None: every uniform/log/int key)")


Scheduler = Annotated[
    RandomScheduler | AshaScheduler | HyperbandScheduler | ShaScheduler | MedianScheduler | PbtScheduler
    | Pb2Scheduler,
    Field(discriminator="type"),
]


class SearchConfig(_Cfg):
    type: Literal["random", "grid", "tpe", "gp"] = Field("random", description="random / grid / Optuna TPE / Optuna GP")
    max_concurrent: int = Field(2, ge=1, description="tpe/gp: trials suggested before their results are in")
    n_startup_trials: int = Field(3, ge=1, description="tpe/gp: random trials before the model takes over")


class TaskData(_Cfg):
    """A small classification task read from a shipped delimited file."""

    path: str = Field("data/sst2/alps_dev_first3000.tsv", description="TSV/CSV file (relative to the repo root)")
    text_field: str = Field("sentence", description="column holding the text")
    label_field: str = Field("label", description="column holding the label")
    label_map: dict[str, str] = Field(default_factory=dict, description='raw label -> name, e.g. {"0": negative}')
    n_train: int = Field(256, ge=8, description="training rows (a seeded shuffle's prefix)")
    n_val: int = Field(128, ge=8, description="validation rows (the next rows of the same shuffle)")
    seed: int = Field(0, description="seed of the train/val shuffle")
    backbone: str = Field("tiny-bert", description="app.models.backbones name or a Hugging Face directory")
    max_length: int = Field(32, ge=8, description="tokens per text")


class TrialTrainer(_Cfg):
    steps_per_iteration: int = Field(4, ge=1, description="optimiser steps between two validation reports")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs Ray reserves for one trial")
    reuse_actors: bool = Field(False, description="run a new trial in a finished trial's process (saves the "
                               "seconds of starting and importing torch per trial)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="TrainerConfig fields fixed for every trial")


class StopperConfig(_Cfg):
    """app.tune.stopper.AdaptiveStopper settings (off unless `enabled`)."""

    enabled: bool = Field(False, description="stop trials whose metric stalls")
    min_delta: float = Field(0.0, ge=0, description="relative improvement that counts")
    patience: int = Field(2, ge=1, description="reports without improvement tolerated (middle phase)")
    early_phase_end: int = Field(0, ge=0, description="iterations < this use 2x patience")
    late_phase_start: int | None = Field(None, ge=0, description="iterations >= this use patience // 2")
    min_steps: int = Field(1, ge=0, description="never stop before this iteration (raised to the warm-up length)")


class StagedConfig(_Cfg):
    """Coarse-to-fine search (pitfall 10): stage 1 is the study as configured (grid or random search);
    stage 2 runs Bayesian search in the space app.tune.staged.narrow_space narrows around stage 1's best."""

    top_k: int = Field(2, ge=1, description="best stage-1 trials the stage-2 ranges are narrowed around")
    factor: float = Field(4.0, gt=1, description="how much narrower a range gets around one best value")
    num_samples: int = Field(6, ge=1, description="stage-2 trials")
    search: Literal["tpe", "gp"] = Field("tpe", description="stage-2 search: Optuna TPE or GP")
    n_startup_trials: int = Field(2, ge=1, description="stage-2 random trials before the model takes over")


class TrackingConfig(_Cfg):
    uri: str | None = Field(None, description="MLflow tracking URI; None: sqlite under the store")
    experiment: str = Field("flywheel-tune", description="MLflow experiment of the studies")
    enabled: bool = Field(True, description="log the study and its trials to MLflow")


class WarmStartConfig(_Cfg):
    k: int = Field(2, ge=1, description="nearest past studies used")
    per_study: int = Field(2, ge=1, description="best configs taken from each")
    jitter: float = Field(0.05, ge=0, description="relative perturbation of seed configs")


# sampled key -> TrainerConfig field (dotted for LoRA); a study's `param_map` adds to or overrides it,
# and maps a key to null to keep it in the trial config without passing it to the trainer.
DEFAULT_PARAM_MAP: dict[str, str | None] = {
    "learning_rate": "lr", "lr": "lr", "head_lr": "head_lr", "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay", "batch_size": "micro_batch_size", "micro_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum", "grad_accum": "grad_accum", "grad_clip": "grad_clip",
    "seed": "seed", "dpo_beta": "dpo_beta", "use_lora": "lora.enabled", "lora_rank": "lora.r",
    "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout", "effective_batch_size": None,
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class StudyConfig(_Cfg):
    name: str = Field(..., description="study name (letters, digits, _ . -); unique in the store")
    space: str | dict[str, Any] = Field(..., description="search-space YAML path or an inline mapping")
    scheduler: Scheduler = Field(default_factory=RandomScheduler, description="trial scheduler")
    search: SearchConfig = Field(default_factory=SearchConfig, description="search algorithm")
    metric: str = Field("val_accuracy", description="reported metric the study optimises")
    mode: Literal["min", "max"] = Field("max", description="minimise or maximise the metric")
    scheduler_metric: str | None = Field(None, description="reported metric the scheduler ranks trials on when it "
                                         "stops or exploits them, e.g. val_loss (None: `metric`)")
    scheduler_mode: Literal["min", "max"] | None = Field(None, description="min or max for scheduler_metric "
                                                         "(required with it)")
    num_samples: int = Field(6, ge=1, description="trials (per grid point for grid keys)")
    target: float | None = Field(None, description="stop the whole study once a trial reports the metric at or "
                                 "beyond this (max: >=, min: <=); None: spend the full budget")
    budget: int | None = Field(None, ge=1, description="stop the whole study once its trials have reported this "
                               "many iterations in total (trial-iterations); None: up to num_samples x max_t")
    max_t: int = Field(4, ge=1, description="most iterations of one trial")
    seed: int = Field(0, description="seed of the search algorithm and PBT")
    keep_checkpoints: int | None = Field(None, ge=1,
                                         description="checkpoints kept per trial (None: 1; PBT/PB2: population)")
    store: str = Field(".flywheel/tune", description="directory of studies (Ray results, MLflow db)")
    task: TaskData = Field(default_factory=TaskData, description="training data and backbone")
    trainer: TrialTrainer = Field(default_factory=TrialTrainer, description="per-trial trainer settings")
    param_map: dict[str, str | None] = Field(default_factory=dict, description="extra key -> trainer field")
    stopper: StopperConfig = Field(default_factory=StopperConfig, description="adaptive early stopping")
    warm_start: bool = Field(False, description="seed the search with configs of the nearest past studies")
    warm_start_opts: WarmStartConfig = Field(default_factory=WarmStartConfig, description="warm-start settings")
    staged: StagedConfig | None = Field(None, description="coarse grid/random stage, then Bayesian search in "
                                        "a narrowed space (None: one stage)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow")

    @model_validator(mode="after")
    def _checks(self) -> StudyConfig:
        if not NAME_RE.match(self.name):
            raise ValueError(f"name: {self.name!r} must match {NAME_RE.pattern} (used as a directory name)")
        if (self.scheduler_metric is None) != (self.scheduler_mode is None):
            raise ValueError("scheduler_mode: set scheduler_metric and scheduler_mode together (got "
                             f"scheduler_metric={self.scheduler_metric!r}, scheduler_mode={self.scheduler_mode!r})")
        if self.scheduler_metric is not None and self.scheduler.type == "random":
            raise ValueError("scheduler_metric: the random scheduler ranks no trials; drop it or pick a scheduler")
        if self.scheduler.type == "sha":
            from app.tune.budget import PlanError, sha_plan

            try:
                sha_plan(self.max_t, self.scheduler.reduction_factor)
            except PlanError as e:
                raise ValueError(f"scheduler: successive halving cannot run: {e}") from None
        if self.scheduler.type in ("pbt", "pb2") and self.search.type in ("tpe", "gp", "grid"):
            raise ValueError(f"search: {self.search.type!r} cannot drive scheduler {self.scheduler.type!r} "
                             "(PBT changes configs mid-trial); use search.type: random")
        if self.staged is not None:
            if self.search.type not in ("grid", "random"):
                raise ValueError(f"search: a staged study's stage 1 is a coarse grid or random search, got "
                                 f"{self.search.type!r} (stage 2's search is staged.search)")
            if self.scheduler.type in ("pbt", "pb2"):
                raise ValueError(f"scheduler: {self.scheduler.type!r} cannot run a staged study (stage 2 is "
                                 "Bayesian search); use random, asha, hyperband, sha or median")
            if len(self.name) > 64 - len(".stage1"):
                raise ValueError(f"name: a staged study's name may have at most 57 characters (stages are "
                                 f"named <name>.stage1 / .stage2), got {len(self.name)}")
        return self

    def param_mapping(self) -> dict[str, str | None]:
        """DEFAULT_PARAM_MAP with this study's `param_map` applied."""
        return DEFAULT_PARAM_MAP | dict(self.param_map)


def _format(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "study"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{where}: {msg} (got {err.get('input')!r})" if err["type"] != "missing" else f"{where}: {msg}")
    return "\n".join(lines)


def parse_study(raw: dict[str, Any], base_dir: str | Path = ".") -> tuple[StudyConfig, SearchSpace]:
    """Validate a study mapping and its search space (a relative `space` path is read from `base_dir`).

    Raises:
        StudyError: every problem found, one per line, each naming its field.
    """
    if not isinstance(raw, dict):
        raise StudyError(f"study config: expected a mapping, got {type(raw).__name__}")
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise StudyError(_format(e)) from None
    try:
        if isinstance(cfg.space, str):
            p = Path(cfg.space)
            space = load_space(p if p.is_absolute() else Path(base_dir) / p)
        else:
            space = parse_space(cfg.space)
    except SpaceError as e:
        raise StudyError(f"space: {e}") from None
    from app.tune.trial_params import check_mapping

    errors = check_mapping(space, cfg.param_mapping(), cfg.trainer.overrides)
    unknown = sorted(set(getattr(cfg.scheduler, "mutable", None) or []) - set(space.sampled_keys))
    if unknown:
        errors.append(f"scheduler.mutable: {unknown} are not sampled keys; keys: {space.sampled_keys}")
    grid = [k for k, p in space.params.items() if getattr(p, "type", None) == "grid"]
    if grid and cfg.search.type in ("tpe", "gp"):
        errors.append(f"search: {cfg.search.type!r} cannot run grid keys {grid}; use type: choice for them "
                      "or search.type: grid")
    if errors:
        raise StudyError("\n".join(errors))
    return cfg, space


def load_study(path: str | Path, base_dir: str | Path = ".") -> tuple[StudyConfig, SearchSpace]:
    """Read and validate a study YAML file (see `parse_study`)."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise StudyError(f"{path}: cannot read study config: {e}") from None
    try:
        return parse_study(raw, base_dir)
    except StudyError as e:
        raise StudyError(f"{path}: {e}") from None
