"""Typed configuration of the main loop, loaded from YAML.

Every option has a default and a one-line description; unknown keys are errors; all errors are
reported at once with the dotted key, the bad value and what is allowed. Dotted overrides from the
command line (``trainer.lr=1e-5``) are applied before validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.controller.settings import ControllerConfig
from app.pool.config import PoolConfig


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayConfig(_Cfg):
    address: str | None = Field(None, description="Cluster to join ('auto', ray://...); None: RAY_ADDRESS, else a running local cluster, else start one")
    num_cpus: int | None = Field(None, description="CPUs for a local cluster this job starts (None: all cores)")
    dashboard: bool = Field(True, description="Start the Ray dashboard (127.0.0.1) with a local cluster")
    namespace: str = Field("flywheel", description="Ray namespace of the named actors")
    actor_cpus: float = Field(0.25, gt=0, description="CPUs reserved by each long-lived actor (DataPool, Labeler)")
    state_actors_on_head: bool = Field(True, description="Prefer the head node for the Controller, DataPool and Labeler (worker nodes come and go)")


class ModelConfig(_Cfg):
    name: str = Field("minilm", description="minilm, smollm2, tiny-bert, tiny-llama, or a path to a Hugging Face directory")
    max_length: int = Field(64, ge=8, le=8192, description="Max tokens per example (longer ones are truncated and counted)")
    start_from: Literal["champion", "base"] = Field("champion", description="Starting model: the registry champion if it exists, else the base model")


class SelectionConfig(_Cfg):
    strategy: str = Field("entropy", description="Selection strategy name from app.selection (see `python -m jobs.select --help`)")
    budget: int = Field(200, ge=1, description="Items selected for labelling per round")
    rounds: int = Field(2, ge=1, le=20, description="select → label → train rounds in one iteration")
    cold_start: Literal["random"] = Field("random", description="Strategy when no model exists yet")
    max_pool: int | None = Field(None, ge=1, description="Score at most this many unlabelled items per round (random subsample)")
    batch_size: int = Field(64, ge=1, description="Ray Data batch size for scoring")
    concurrency: int = Field(2, ge=1, description="Scoring actors in the Ray Data actor pool (each loads the model once)")
    actor_cpus: float = Field(0.5, gt=0, description="CPUs per scoring actor")
    seed: int = Field(0, description="Seed for random choices")


class LabelerConfig(_Cfg):
    threshold: float = Field(0.9, ge=0, le=1, description="Pre-labels at or above this confidence are auto-accepted")
    qc_fraction: float = Field(0.1, ge=0, le=1, description="Share of auto-accepted items also sent to review as random QC")
    reviewer: Literal["oracle", "human"] = Field("oracle", description="'oracle' is a SIMULATED annotator answering from gold labels")
    guideline: str = Field("Label the sentiment of the sentence.", description="Labelling guideline text; changing it bumps the version")
    max_new_tokens: int = Field(48, ge=1, description="sft: tokens generated for a pre-label")
    overlap_fraction: float = Field(0.0, ge=0, le=1, description="Share of reviewed items labelled by overlap_k annotators")
    overlap_k: int = Field(2, ge=2, le=10, description="Annotators per overlap item")
    consensus: Literal["majority", "weighted"] = Field("majority", description="Final label of overlap items: majority or annotator-quality-weighted vote")
    stale_rule: Literal["none", "model_only", "all"] = Field("model_only", description="Labels re-queued when the guideline changes")
    drift_psi: float = Field(0.2, gt=0, description="Alert when the label distribution's PSI against earlier rounds exceeds this")
    drift_p: float = Field(0.01, gt=0, lt=1, description="Alert when the chi-square p-value of that shift is below this")
    agreement_drop: float = Field(0.1, gt=0, le=1, description="Alert when QC agreement drops by more than this between rounds")
    seed: int = Field(0, description="Seed for QC and overlap sampling")


class LoraConfig(_Cfg):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights")
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(["q_proj", "v_proj"], description="Module names that get adapters")


class TrainerConfig(_Cfg):
    num_workers: int = Field(2, ge=1, description="Ray Train workers")
    cpus_per_worker: float = Field(0.75, gt=0, description="CPUs per training worker (fractional on small machines)")
    use_gpu: bool | Literal["auto"] = Field("auto", description="One GPU per worker (NCCL): true, false, or auto = true when the cluster has a GPU for each of the minimum workers")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    epochs: float = Field(3.0, gt=0, description="Passes over the labelled set")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs)")
    micro_batch_size: int = Field(16, ge=1, description="Examples per worker per step")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of the backbone / adapters")
    head_lr: float = Field(1e-3, gt=0, description="classify: learning rate of the fresh head")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share of the steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="Gradient clipping norm")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings")
    checkpoint_every: int = Field(50, ge=1, description="Steps between Ray Train checkpoints (plus one at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept by Ray Train")
    max_failures: int = Field(1, ge=0, description="Worker-group restarts Ray Train may do")
    seed: int = Field(0, description="Training seed")
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="Raw DeepSpeed JSON merged over the generated config")
    engine: Literal["deepspeed", "torch"] = Field("deepspeed", description="deepspeed, or torch (plain AdamW in one process, e.g. inside a Tune trial)")
    global_batch_size: int | None = Field(None, ge=1, description="Sequences per optimiser step over all workers (kept when the world size changes); None: micro × accum × workers")
    min_workers: int | None = Field(None, ge=1, description="Elastic: ScalingConfig(num_workers=(min_workers, num_workers)); None: fixed size")
    dpo_beta: float = Field(0.1, gt=0, description="DPO β (strength of the implicit KL penalty)")
    dpo_loss: Literal["sigmoid", "hinge", "ipo", "robust"] = Field("sigmoid", description="DPO loss variant")
    dpo_label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Assumed preference-flip rate ε (sigmoid, robust)")
    dpo_reference: Literal["model", "precompute"] = Field("model", description="model: frozen reference copy in memory; precompute: reference log-probs once at start")
    max_nan_steps: int = Field(5, ge=1, description="Consecutive non-finite losses skipped before the run aborts (last good checkpoint kept)")
    best_metric: str = Field("ckpt_loss", description="Checkpoint metric that picks the never-deleted best checkpoint")
    best_mode: Literal["min", "max"] = Field("min", description="Whether best_metric is minimised or maximised")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision (bf16/fp16 where the device allows)")
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimiser state in CPU memory")
    offload_params: bool = Field(False, description="ZeRO-3: parameters offloaded to CPU memory")
    export: bool = Field(True, description="Write the final model directory into the last checkpoint")
    report_every: int = Field(10, ge=1, description="Report metrics (without a checkpoint) every this many steps")
    activation_checkpoint_ratio: float = Field(0.0, ge=0, le=1, description="Share of transformer blocks recomputed in backward, largest first")
    grad_compression: Literal["none", "powersgd", "topk"] = Field("none", description="Compression of the DDP all-reduce (engine: torch with several workers)")
    powersgd_rank: int = Field(4, ge=1, description="PowerSGD approximation rank")
    powersgd_start_iter: int = Field(10, ge=2, description="Plain all-reduce steps before PowerSGD starts")
    topk_ratio: float = Field(0.01, gt=0, le=1, description="top-k compression: share of gradient entries sent per bucket")
    profile_dir: str | None = Field(None, description="Write a torch.profiler trace and the communication share of time here")
    profile_steps: tuple[int, int] = Field((2, 4), description="Optimiser steps to profile (first, last; inclusive)")
    elastic_resize_interval_s: float = Field(60.0, gt=0, description="How often an elastic run checks for room to grow")
    curriculum: Literal["none", "linear", "root", "step", "adaptive"] = Field("none", description="Data order: competence pacing of easy-to-hard rows (Platanios et al. 2019); none: shuffled")
    curriculum_anti: bool = Field(False, description="Anti-curriculum: hardest rows first")
    curriculum_c0: float = Field(0.2, gt=0, le=1, description="Share of rows available at step 0")
    curriculum_ramp: float = Field(0.5, gt=0, le=1, description="Share of the training steps until every row is available (scheduled pacings)")
    curriculum_replay: float = Field(0.0, ge=0, le=1, description="Extra easy rows replayed, as a share of the available rows (against forgetting)")
    pipeline_stages: int = Field(1, ge=1, description="Pipeline-parallel stages (DeepSpeed PipelineModule; sft on Llama/GPT-2 models; needs zero_stage 0 or 1)")
    tensor_parallel: int = Field(1, ge=1, description="Tensor-parallel degree (DeepSpeed AutoTP, tensor_parallel.autotp_size; sft; zero_stage 0-2)")
    parallel_plan: Literal["manual", "auto"] = Field("manual", description="manual: pipeline_stages × tensor_parallel as given; auto: app.train.planner picks dp × tp × pp from the model and device memory")
    device_memory_gb: float | None = Field(None, gt=0, description="auto plan: memory of one device in GB; None: the GPU's, or the machine's RAM / num_workers on CPU")
    gpus_per_node: int = Field(8, ge=1, description="auto plan: devices per node (tensor parallelism stays inside one node)")
    loader_workers: int = Field(0, ge=0, description="Data-loader worker processes building micro-batches ahead of the loop (0: in the loop)")
    peak_tflops: float | None = Field(None, gt=0, description="MFU: peak TFLOP/s of one device at the training precision; None: looked up from the GPU name (MFU is logged only with CUDA)")

    @model_validator(mode="after")
    def _elastic_range(self) -> "TrainerConfig":
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(f"trainer.min_workers={self.min_workers} exceeds trainer.num_workers={self.num_workers}")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("trainer.offload_params needs trainer.zero_stage=3")
        if self.grad_compression != "none" and self.engine != "torch":
            raise ValueError(f"trainer.grad_compression={self.grad_compression!r} needs trainer.engine='torch' (DDP)")
        if self.profile_steps[0] > self.profile_steps[1] or self.profile_steps[0] < 1:
            raise ValueError(f"trainer.profile_steps={list(self.profile_steps)}: need 1 <= first <= last")
        if self.pipeline_stages > 1 and self.zero_stage >= 2:
            raise ValueError(f"trainer.pipeline_stages={self.pipeline_stages} needs trainer.zero_stage 0 or 1 "
                             f"(DeepSpeed's pipeline engine rejects ZeRO-{self.zero_stage}); set trainer.zero_stage=1")
        if self.tensor_parallel > 1 and self.zero_stage == 3:
            raise ValueError(f"trainer.tensor_parallel={self.tensor_parallel} needs trainer.zero_stage 0-2 "
                             f"(DeepSpeed AutoTP does not combine with ZeRO-3)")
        if self.loader_workers and self.curriculum == "adaptive":
            raise ValueError("trainer.loader_workers > 0 cannot prefetch with trainer.curriculum='adaptive' "
                             "(each batch depends on the losses before it); set loader_workers=0")
        if (self.pipeline_stages > 1 or self.tensor_parallel > 1) and self.engine != "deepspeed":
            raise ValueError("trainer.pipeline_stages / tensor_parallel > 1 need trainer.engine='deepspeed'")
        return self


class GateConfig(_Cfg):
    min_gain: float = Field(0.02, ge=-1, description="deploy: metric > baseline × (1 + min_gain); negative accepts a small loss")
    latency_tolerance: float = Field(1.1, ge=1, description="deploy: p99 latency < baseline p99 × latency_tolerance")
    target: float = Field(0.8, description="collect_more_data when the metric is below this target")
    min_safety: float = Field(0.9, description="rollback when a safety score is present and below this")
    max_loss_cv: float = Field(0.5, gt=0, description="adjust_training when the late-training loss coefficient of variation exceeds this")


class EvalConfig(_Cfg):
    max_items: int | None = Field(None, ge=1, description="Evaluate on at most this many test items (deterministic prefix)")
    latency_samples: int = Field(100, ge=1, description="Single-item predictions timed for p50/p99 latency")
    gate: GateConfig = Field(default_factory=GateConfig, description="Decision rules")


class ServeConfig(_Cfg):
    enabled: bool = Field(True, description="Deploy the champion behind Ray Serve at the end")
    host: str = Field("127.0.0.1", description="HTTP host")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    app_name: str = Field("flywheel", description="Serve application name")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per replica")
    max_text_chars: int = Field(4000, ge=1, description="Longest text accepted (longer: HTTP 413)")
    max_batch: int = Field(64, ge=1, description="Most texts per request (more: HTTP 413)")


class TrackingConfig(_Cfg):
    uri: str | None = Field(None, description="MLflow tracking URI; None: MLFLOW_TRACKING_URI or sqlite under the store")
    experiment: str = Field("flywheel", description="MLflow experiment")
    registered_model: str = Field("flywheel-model", description="Registry name of the deployed model")


class LoopConfig(_Cfg):
    name: str = Field("demo", description="Run name (chosen by you: no timestamps are added)")
    task: Literal["classify", "sft"] = Field("classify", description="classify (text → label) or sft (prompt → response)")
    store: str = Field(".flywheel", description="Run store: pool, labels, checkpoints, models, MLflow db (FLYWHEEL_HOME overrides)")
    pool: PoolConfig = Field(description="Data pool: sources, splits, filters")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="What to label")
    labeler: LabelerConfig = Field(default_factory=LabelerConfig, description="Routing and review")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Ray Train + DeepSpeed")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation and decision gate")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Ray Serve endpoint")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray cluster")
    controller: ControllerConfig = Field(default_factory=ControllerConfig, description="Long-lived controller (python -m jobs.flywheel): triggers, polling, restarts")

    @model_validator(mode="before")
    @classmethod
    def _pool_task(cls, data: Any) -> Any:
        # The task is said once at the top; the pool inherits it unless it says otherwise.
        if isinstance(data, dict) and isinstance(data.get("pool"), dict):
            pool = dict(data["pool"])
            pool.setdefault("task", data.get("task", "classify"))
            data = {**data, "pool": pool}
        return data

    @model_validator(mode="after")
    def _check(self) -> "LoopConfig":
        if self.pool.task != self.task:
            raise ValueError(f"pool.task={self.pool.task!r} differs from task={self.task!r}: remove pool.task")
        if self.task == "classify" and self.model.name == "tiny-llama":
            raise ValueError("model.name='tiny-llama' is a causal LM; for task 'classify' use tiny-bert, minilm or smollm2")
        if self.task == "sft" and self.model.name in ("minilm", "tiny-bert"):
            raise ValueError(f"model.name={self.model.name!r} is an encoder; task 'sft' needs a causal LM (smollm2, tiny-llama, path)")
        return self


class ConfigError(ValueError):
    """A config file failed validation; the message lists every problem."""


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override {key}: {p} is not a section")
    cur[parts[-1]] = value


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        val = e.get("input")
        shown = json.dumps(val, default=str)[:80] if e["type"] != "missing" else "missing"
        lines.append(f"  {loc}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def read_yaml_mapping(
    path: str | Path, overrides: list[str] | None = None, error: type[Exception] | None = None
) -> dict:
    """Read a YAML file whose top level is a mapping and apply ``dotted.key=yaml_value`` overrides.

    Every config loader (loop, flywheel, serve) goes through here so that a missing file, bad YAML and a bad
    override read the same everywhere. ``error`` is the exception class raised (``ConfigError`` by default).
    """
    error = error or ConfigError
    p = Path(path)
    if not p.is_file():
        raise error(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise error(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    for ov in overrides or []:
        if "=" not in ov:
            raise error(f"override {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        _set_dotted(raw, k.strip(), yaml.safe_load(v))
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> LoopConfig:
    """Load and validate a loop config; ``overrides`` are ``dotted.key=yaml_value`` strings."""
    p = Path(path)
    raw = read_yaml_mapping(p, overrides)
    try:
        return LoopConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{p}: {e.error_count()} problem(s):\n{format_errors(e)}") from None


def config_reference(model: type[BaseModel] = LoopConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every option: the README's config reference."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        key = f"{prefix}{name}"
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None:
            rows.append((key, "", f.description or ""))
            rows.extend(config_reference(sub, key + "."))
        else:
            if f.default_factory is not None:
                default = json.dumps(f.default_factory(), default=str)
            elif f.is_required():
                default = "(required)"
            else:
                default = json.dumps(f.default, default=str)
            rows.append((key, default, f.description or ""))
    return rows


def config_reference_markdown() -> str:
    """The README's config reference table (README and code are compared by a test)."""
    from app.pool.config import SourceSpec

    lines = ["| key | default | description |", "|---|---|---|"]
    for k, d, desc in config_reference(LoopConfig):
        desc = desc.replace("|", "/")
        lines.append(f"| **{k}** | | {desc} |" if d == "" else f"| `{k}` | `{d}` | {desc} |")
    lines += ["", "`pool.sources[]` entries:", "", "| key | default | description |", "|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | {desc.replace('|', '/')} |" for k, d, desc in config_reference(SourceSpec)]
    return "\n".join(lines) + "\n"
