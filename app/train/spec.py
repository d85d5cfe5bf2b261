"""What one training run needs, as plain JSON: the spec a Ray Train worker, a Tune trial or a plain
process rebuilds everything from, and the trainer options read from it.

``trainer`` holds ``TrainerConfig.model_dump()``; options are read with :func:`option`, whose defaults
come from :class:`app.config.TrainerConfig`, so a partial dict (a Tune trial, an older run) still works.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.config import TrainerConfig

TASKS = ("classify", "sft", "dpo", "reward")

# Defaults of every trainer option, from the typed config (one source of truth): a spec built from an older
# ``trainer`` dict still gets every option through :func:`option`.
OPTION_DEFAULTS: dict[str, Any] = TrainerConfig().model_dump()


def option(trainer: dict[str, Any], key: str) -> Any:
    """``trainer[key]`` or its default from :data:`OPTION_DEFAULTS` (KeyError names unknown keys)."""
    if key in trainer:
        return trainer[key]
    if key not in OPTION_DEFAULTS:
        raise KeyError(f"unknown trainer option {key!r}; known: {sorted(OPTION_DEFAULTS)}")
    return OPTION_DEFAULTS[key]


class TrainSpec(BaseModel):
    """Everything a worker needs, JSON-serialisable (sent as ``model_dump()`` and rebuilt on the worker).

    Rows by task: classify: ``inputs`` texts, ``targets`` labels; sft: prompts, responses;
    dpo / reward: ``inputs`` prompts, ``targets`` chosen responses, ``rejected`` rejected responses.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: Literal["classify", "sft", "dpo", "reward"] = Field(description="training objective")
    start_model: str = Field(description="Flywheel model dir (continue) or Hugging Face backbone dir (fresh)")
    start_is_flywheel: bool = Field(description="start_model is a Flywheel model dir (flywheel_model.json)")
    base_name: str = Field(description="backbone name recorded in the exported model")
    label_names: list[str] = Field(default_factory=list, description="classify: label names, index = class id")
    inputs: list[str] = Field(description="texts (classify) or prompts (sft, dpo, reward)")
    targets: list[str] = Field(description="labels (classify), responses (sft) or chosen responses (dpo, reward)")
    rejected: list[str] = Field(default_factory=list, description="dpo / reward: rejected responses")
    ref_chosen_logps: list[float] | None = Field(None, description="dpo: precomputed reference log π_ref(chosen)")
    ref_rejected_logps: list[float] | None = Field(None, description="dpo: precomputed reference log π_ref(rejected)")
    difficulty: list[float] | None = Field(None, description="per-row difficulty for trainer.curriculum (larger = harder); None: token count")
    max_length: int = Field(ge=2, description="token budget per sequence (longer ones are truncated and counted)")
    trainer: dict[str, Any] = Field(description="TrainerConfig.model_dump() plus options of OPTION_DEFAULTS")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (rank 0 logs step metrics)")
    mlflow_run_id: str | None = Field(None, description="MLflow run receiving the step metrics")
    metric_prefix: str = Field("train", description="prefix of the logged metric names")
    ckpt_root: str | None = Field(None, description="directory of this run's checkpoints (fallback search, best)")

    @model_validator(mode="after")
    def _rows_line_up(self) -> TrainSpec:
        n = len(self.inputs)
        if len(self.targets) != n:
            raise ValueError(f"TrainSpec: {n} inputs but {len(self.targets)} targets; they must pair up")
        if self.task in ("dpo", "reward") and len(self.rejected) != n:
            raise ValueError(f"TrainSpec: task {self.task!r} needs one rejected response per prompt; "
                             f"got {len(self.rejected)} for {n} prompts")
        for name in ("ref_chosen_logps", "ref_rejected_logps"):
            v = getattr(self, name)
            if v is not None and (self.task != "dpo" or len(v) != n):
                raise ValueError(f"TrainSpec: {name} is only for task 'dpo' and needs {n} values; "
                                 f"got {len(v)} for task {self.task!r}")
        if self.difficulty is not None and len(self.difficulty) != n:
            raise ValueError(f"TrainSpec: difficulty has {len(self.difficulty)} values for {n} rows")
        if (self.ref_chosen_logps is None) != (self.ref_rejected_logps is None):
            raise ValueError("TrainSpec: give both ref_chosen_logps and ref_rejected_logps, or neither")
        if n == 0:
            raise ValueError("TrainSpec: no training rows (inputs is empty)")
        return self
