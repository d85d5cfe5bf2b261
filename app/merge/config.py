"""Merge YAML schema: mergekit's format for the methods both tools share, plus Flywheel's extra keys.

mergekit keys: ``merge_method``, ``models`` (``model`` + ``parameters``) or ``slices`` (``sources`` with
``layer_range``), ``base_model``, ``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source``.
Flywheel keys: ``embed_resize``, ``random_seed``, ``dare_rng``, ``max_shard_size``, ``workers``, ``calibration``.
Everything, including model paths and every method parameter, is checked here, before any tensor is read,
and all problems are reported together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.merge import methods as _methods  # noqa: F401  (registers every method)
from app.merge import registry
from app.merge.validate import groups, problems

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def _setting_error(value: Any) -> str | None:
    """Why ``value`` is not a mergekit parameter setting (scalar, gradient list or filter list)."""
    if isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, list) and value:
        if all(isinstance(e, (bool, int, float, str)) for e in value):
            return None
        for e in value:
            if not isinstance(e, dict) or "value" not in e or set(e) - {"filter", "value"}:
                return f"{value!r}: a list must hold scalars or {{filter, value}} entries"
            if e.get("filter") is not None and not isinstance(e["filter"], str):
                return f"filter {e['filter']!r} must be a string"
            if err := _setting_error(e["value"]):
                return err
        return None
    return f"{value!r} is not a scalar, a list of numbers or a list of {{filter, value}}"


def _check_settings(params: dict[str, Any] | None) -> dict[str, Any] | None:
    for key, value in (params or {}).items():
        if err := _setting_error(value):
            raise ValueError(f"parameter {key!r}: {err}")
    return params


class ModelEntry(BaseModel):
    """One input model of the ``models`` form."""

    model_config = _FROZEN
    model: str = Field(..., description="local Hugging Face model directory (safetensors)")
    parameters: dict[str, Any] | None = Field(None, description="per-model parameters (weight, density, ...)")
    @field_validator("parameters")
    @classmethod
    def check_parameters(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_settings(v)


class SliceSource(BaseModel):
    """A layer range of one model feeding an output slice."""

    model_config = _FROZEN
    model: str = Field(..., description="local Hugging Face model directory (safetensors)")
    layer_range: tuple[int, int] = Field(..., description="[start, end) layer indices taken from the model")
    parameters: dict[str, Any] | None = Field(None, description="per-source parameters")
    @field_validator("parameters")
    @classmethod
    def check_parameters(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_settings(v)


class SliceEntry(BaseModel):
    """An output slice: layers merged from aligned ranges of several models."""

    model_config = _FROZEN
    sources: list[SliceSource] = Field(..., min_length=1, description="aligned layer ranges to merge")
    base_model: str | None = Field(None, description="overrides the top-level base_model for this slice")
    parameters: dict[str, Any] | None = Field(None, description="parameters for this slice")
    @field_validator("parameters")
    @classmethod
    def check_parameters(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_settings(v)


class CalibrationConfig(BaseModel):
    """Data for estimating Fisher / Gram statistics when the YAML gives no precomputed files."""

    model_config = _FROZEN
    data: str = Field(..., description="JSONL: one record per line with 'input_ids' or a text field")
    text_field: str = Field("text", description="record key holding raw text (tokenised per model)")
    num_samples: int = Field(32, ge=1, description="records used")
    max_length: int = Field(128, ge=2, description="tokens per record after truncation")
    batch_size: int = Field(1, ge=1, description="records per forward pass (1 = per-example Fisher)")
    save_dir: str | None = Field(None, description="where statistics files go (default: a temp dir)")


class MergeConfig(BaseModel):
    """A validated merge recipe."""

    model_config = _FROZEN
    merge_method: str = Field(..., description=f"one of {registry.available()}")
    models: list[ModelEntry] | None = Field(None, description="models to merge (or use slices)")
    slices: list[SliceEntry] | None = Field(None, description="output slices (or use models)")
    base_model: str | None = Field(None, description="model task vectors are taken from / SLERP's t=0 end")
    parameters: dict[str, Any] | None = Field(None, description="global parameters (t, normalize, lambda, ...)")
    dtype: str | None = Field(None, description="dtype the merge computes in (default: the inputs')")
    out_dtype: str | None = Field(None, description="dtype written (default: dtype)")
    tokenizer_source: str | None = Field(None, description="'base' (default) or a model whose tokenizer is copied")
    embed_resize: Literal["error", "pad"] = Field(
        "error", description="vocab size mismatch: fail, or pad rows with each model's mean embedding"
    )
    random_seed: int = Field(0, description="seed for DARE's random masks")
    dare_rng: Literal["mergekit", "per_tensor"] = Field(
        "mergekit", description="DARE masks: one generator in tensor-name order (mergekit --random-seed's masks; "
        "one local worker) or one per tensor and model (any order: workers, Ray)")
    max_shard_size: int | str = Field("5B", description="bytes per output shard: int or '500M', '2G', '5B'")
    workers: int = Field(1, ge=1, description="tensors merged concurrently (memory grows with this)")
    calibration: CalibrationConfig | None = Field(None, description="data for fisher / regmean statistics")

    @field_validator("parameters")
    @classmethod
    def check_parameters(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_settings(v)

    @property
    def method(self) -> registry.MergeMethod:
        return registry.get(self.merge_method)

    def referenced_models(self) -> list[str]:
        """Every model the recipe mentions, in first-mention order."""
        names = [self.base_model] if self.base_model else []
        names += [m.model for m in self.models or []]
        for sl in self.slices or []:
            names += ([sl.base_model] if sl.base_model else []) + [s.model for s in sl.sources]
        return list(dict.fromkeys(names))

    def to_slices(self, num_layers: Callable[[str], int]) -> list[SliceEntry]:
        """The ``models`` form as one slice over all layers (base appended when the method uses it)."""
        if self.slices:
            return list(self.slices)
        entries = [(m.model, m.parameters) for m in self.models or []]
        if self.base_model and self.method.base != "unused" and all(m != self.base_model for m, _ in entries):
            entries.append((self.base_model, None))
        sources = [SliceSource(model=m, layer_range=(0, num_layers(m)), parameters=p) for m, p in entries]
        return [SliceEntry(sources=sources)]

    def notes(self) -> list[str]:
        """Messages about accepted-but-ignored mergekit parameters."""
        ignored = self.method.ignored_params
        used = set()
        for _, scope in self._scopes():
            used |= set(scope or {}) & set(ignored)
        return [ignored[k] for k in sorted(used)]

    def _scopes(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(location label, parameters) for every place parameters can be set."""
        out = [("parameters", self.parameters)]
        out += [(f"models[{i}].parameters", m.parameters) for i, m in enumerate(self.models or [])]
        for i, sl in enumerate(self.slices or []):
            out.append((f"slices[{i}].parameters", sl.parameters))
            out += [(f"slices[{i}].sources[{j}].parameters", s.parameters) for j, s in enumerate(sl.sources)]
        return out

    def models_missing_stats(self) -> list[str]:
        """Inputs of a fisher / regmean merge with no statistics file in the YAML (need ``calibration``)."""
        method = self.method
        out = []
        for _, slice_params, members, base in groups(self) if method.stats else []:
            for m, p in members:
                if method.base != "unused" and m == base:
                    continue
                if not any(method.stats in (s or {}) for s in (p, slice_params, self.parameters)):
                    out.append(m)
        return list(dict.fromkeys(out))

    @model_validator(mode="after")
    def _validate(self) -> "MergeConfig":
        errors = problems(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self


def load_config(path: str | Path) -> MergeConfig:
    """Parse and validate a merge YAML file (raises ValueError / pydantic.ValidationError)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"merge config {str(p)!r} does not exist")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"merge config {str(p)!r} must be a YAML mapping")
    return MergeConfig.model_validate(data)
