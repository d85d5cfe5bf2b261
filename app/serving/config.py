"""Typed config of an ensemble endpoint (`python -m jobs.serve up CONFIG`), loaded from YAML.

One file says which members to serve (registry URIs or paths, and how to build a member that does not exist
yet), which policy combines them, the HTTP limits, the canary rules and where sampled traffic goes. Unknown
keys are errors; every problem is reported at once with its dotted key (`app.config.format_errors`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.pool.config import SPLIT_NAMES, SourceSpec
from app.serving.canary import CanaryPlan

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")  # goes into Serve app names and Prometheus tags


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildSpec(_Cfg):
    """How to build a member that does not exist yet: frozen backbone, mean pooling, logistic-regression head."""

    backbone: str = Field(..., description="minilm, smollm2, tiny-bert, or a Hugging Face directory")
    max_length: int = Field(64, ge=8, le=2048, description="tokens per text (longer texts are truncated)")
    train_rows: int = Field(800, ge=20, description="at most this many train-split rows are embedded to fit the head")
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic-regression head")
    batch_size: int = Field(32, ge=1, description="texts per forward pass while embedding")
    seed: int = Field(0, description="seed of the train-row sample")


class BatchSpec(_Cfg):
    """Request batching inside a member replica (`@serve.batch`)."""

    max_batch_size: int = Field(16, ge=1, description="calls merged into one forward pass (1 = no batching)")
    wait_ms: float = Field(10.0, ge=0, description="longest wait for a batch to fill, in milliseconds")


class AutoscalingSpec(_Cfg):
    """Serve autoscaling of a member deployment (replaces num_replicas)."""

    min_replicas: int = Field(1, ge=0, description="fewest replicas")
    max_replicas: int = Field(2, ge=1, description="most replicas")
    target_ongoing_requests: float = Field(4.0, gt=0, description="requests per replica the autoscaler aims at")


class MemberConfig(_Cfg):
    """One ensemble member: a Flywheel classifier directory served as its own deployment."""

    name: str = Field(..., description="short id (a-z, 0-9, '-'), used in stage names and Serve app names")
    source: str = Field(..., description="models:/NAME@alias, models:/NAME/VERSION, or a local directory")
    build: BuildSpec | None = Field(None, description="build the member from data when the source does not exist")
    cost: float | None = Field(None, ge=0, description="cascade cost per item; None: measured seconds per item")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per replica (fractional so all fit on 2 cores)")
    num_replicas: int = Field(1, ge=1, description="replicas when autoscaling is not set")
    autoscaling: AutoscalingSpec | None = Field(None, description="autoscaling instead of a fixed replica count")
    batch: BatchSpec = Field(default_factory=lambda: BatchSpec(max_batch_size=1, wait_ms=0.0),
                             description="@serve.batch settings (default: no batching)")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per replica")
    max_ongoing_requests: int = Field(64, ge=1, description="concurrent calls one replica accepts")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name {v!r}: use 1-31 characters a-z, 0-9 and '-', starting with a letter or digit")
        return v


class DataConfig(_Cfg):
    """Labelled data for building members, fitting the policy (val split) and benchmarks (test split)."""

    sources: list[SourceSpec] = Field(..., min_length=1, description="labelled files (pool SourceSpec format)")
    labels: list[str] = Field(..., min_length=2, description="class names, in the members' label order")
    split: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
                                    description="hash split like the pool: an item's split never changes")
    max_val: int | None = Field(None, ge=10, description="fit the policy on at most this many val rows")

    @field_validator("split")
    @classmethod
    def _split_ok(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != set(SPLIT_NAMES) or any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"split = {v}; need keys {list(SPLIT_NAMES)} with ratios >= 0 summing to 1")
        return v


class PolicyConfig(_Cfg):
    """How member probabilities become one answer (a policy from app.serving.registry)."""

    name: str = Field("cascade", description="weighted, moe or cascade")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="fit() keyword arguments, e.g. {target_accuracy: 0.85}")
    gate_member: str | None = Field(None, description="moe: member whose embedding feeds the gate (default: first)")
    calibrate: bool = Field(True, description="temperature-scale each member on val before fitting the policy")
    ece_bins: int = Field(15, ge=1, description="bins of the expected calibration error")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from app.serving.registry import available

        if v not in available():
            raise ValueError(f"policy {v!r} is unknown; available: {available()}")
        return v

    @model_validator(mode="after")
    def _params_fit(self) -> "PolicyConfig":
        import inspect

        from app.serving.registry import get

        fit = inspect.signature(get(self.name).fit).parameters
        allowed = [k for k, p in fit.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(self.params) - set(allowed))
        if unknown:
            raise ValueError(f"policy.params {unknown} are not parameters of {self.name!r}; allowed: {allowed}")
        return self


class HttpConfig(_Cfg):
    """HTTP proxy and request limits."""

    host: str = Field("127.0.0.1", description="address the Serve proxy binds (first start of Serve only)")
    port: int = Field(8000, ge=1, le=65535, description="port of the Serve proxy (first start of Serve only)")
    route_prefix: str = Field("/", pattern=r"^/",
                              description="HTTP route of the ingress (e.g. /ensemble beside the loop's app at /)")
    max_text_chars: int = Field(4000, ge=1, description="longest text accepted (longer: 413)")
    max_batch: int = Field(64, ge=1, description="most texts per request (more: 413)")
    auth_token_env: str | None = Field("FLYWHEEL_SERVE_TOKEN",
                                       description="env var holding a bearer token; unset or empty: no auth")
    member_timeout_s: float = Field(30.0, gt=0, description="longest wait for one member call")
    ingress_cpus: float = Field(0.25, gt=0, description="CPUs per ingress replica")
    ingress_replicas: int = Field(1, ge=1, description="ingress replicas")


class CanaryConfig(_Cfg):
    """Progressive rollout of the `challenger` alias against `champion`, with live gates."""

    enabled: bool = Field(True, description="start a canary when a member has a challenger alias")
    challenger_alias: str = Field("challenger", description="registry alias of the candidate versions")
    plan: CanaryPlan = Field(default_factory=CanaryPlan, description="steps and gate thresholds")
    shadow_fraction: float = Field(1.0, ge=0, le=1,
                                   description="share of challenger requests also sent to the champion to compare")
    promote: bool = Field(True, description="after the last step, move the champion alias to the challenger versions")


class TrafficConfig(_Cfg):
    """Live requests back into the data pool as unlabelled items."""

    sample_rate: float = Field(0.1, ge=0, le=1, description="share of requests (not opted out) kept")
    hard_below: float = Field(0.7, ge=0, le=1, description="confidence under which an item is a hard candidate")
    pool_name: str = Field("demo", description="DataPool actor 'DataPool:<pool_name>' (namespace flywheel) if running")
    pool_config: str | None = Field("jobs/configs/demo.yaml",
                                    description="loop config whose pool is opened directly when no actor runs")
    flush_rows: int = Field(50, ge=1, description="rows buffered before a pool write")
    flush_s: float = Field(30.0, gt=0, description="longest time rows wait before a pool write")


class FeedbackConfig(_Cfg):
    """True labels posted to POST /feedback for answered requests (online accuracy, canary accuracy gate)."""

    window: int = Field(500, ge=1, description="online accuracy per model version over its last this many labels")
    remember: int = Field(50_000, ge=1, description="answered requests remembered for matching feedback")


class ServeEnsembleConfig(_Cfg):
    """A whole ensemble endpoint."""

    name: str = Field("ensemble", description="Serve application name of the HTTP ingress")
    store: str = Field(".flywheel", description="run store (FLYWHEEL_HOME overrides): built members, caches, MLflow")
    ray_address: str | None = Field(None, description="cluster to join; None: RAY_ADDRESS or a running local one")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster started by `up --block`")
    namespace: str = Field("flywheel", description="Ray namespace of the rollout-state actor")
    data: DataConfig = Field(..., description="labelled data (build, policy fit, benchmark)")
    members: list[MemberConfig] = Field(..., min_length=1, description="ensemble members, any order")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="ensemble policy")
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP and request limits")
    canary: CanaryConfig = Field(default_factory=CanaryConfig, description="canary rollout")
    traffic: TrafficConfig = Field(default_factory=TrafficConfig, description="traffic back into the pool")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="feedback labels")
    experiment: str = Field("flywheel-serve", description="MLflow experiment of builds, fits and rollout events")
    tracking_uri: str | None = Field(None, description="MLflow URI; None: MLFLOW_TRACKING_URI or sqlite in the store")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name {v!r}: use 1-31 characters a-z, 0-9 and '-'")
        return v

    @model_validator(mode="after")
    def _cross(self) -> "ServeEnsembleConfig":
        errors = []
        names = [m.name for m in self.members]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            errors.append(f"members: duplicate name(s) {dup}")
        if self.policy.name == "moe" and len(self.members) < 2:
            errors.append("policy.name=moe needs at least 2 members")
        if self.policy.gate_member is not None and self.policy.gate_member not in names:
            errors.append(f"policy.gate_member={self.policy.gate_member!r} is not a member name; members: {names}")
        for i, m in enumerate(self.members):
            if m.autoscaling and m.autoscaling.min_replicas > m.autoscaling.max_replicas:
                errors.append(f"members[{i}].autoscaling: min_replicas > max_replicas")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    def gate_index(self) -> int:
        """Index of the member whose embedding feeds a moe gate."""
        names = [m.name for m in self.members]
        return names.index(self.policy.gate_member) if self.policy.gate_member else 0


class ServeConfigError(ValueError):
    """A serve config failed validation; the message lists every problem."""


def load_serve_config(path: str | Path) -> ServeEnsembleConfig:
    """Load and validate a serve YAML; relative source paths are taken from the current directory.

    Raises:
        ServeConfigError: missing file, bad YAML, or every validation problem with its dotted key.
    """
    from app.config import format_errors, read_yaml_mapping

    p = Path(path)
    raw = read_yaml_mapping(p, error=ServeConfigError)
    try:
        return ServeEnsembleConfig.model_validate(raw)
    except ValidationError as e:
        raise ServeConfigError(f"{p}: {e.error_count()} problem(s):\n{format_errors(e)}") from None


def parse_source(source: str) -> tuple[str, str | None, str | None]:
    """Split a member source into (kind, name, ref).

    "models:/sst2-minilm@champion" -> ("alias", "sst2-minilm", "champion");
    "models:/sst2-minilm/3" -> ("version", "sst2-minilm", "3"); anything else -> ("path", source, None).

    Raises:
        ValueError: a models:/ URI without a name or without @alias or /version.
    """
    if not source.startswith("models:/"):
        return "path", source, None
    rest = source[len("models:/"):]
    m = re.fullmatch(r"([^@/]+)@([A-Za-z0-9_-]+)", rest)
    if m:
        return "alias", m.group(1), m.group(2)
    m = re.fullmatch(r"([^@/]+)/(\d+)", rest)
    if m:
        return "version", m.group(1), m.group(2)
    raise ValueError(f"source {source!r}: expected models:/NAME@alias or models:/NAME/VERSION or a local path")
