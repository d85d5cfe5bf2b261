"""Turn a validated MergeConfig into a list of per-tensor tasks, checking the models from headers only.

Each ``TensorTask`` is plain, picklable data — file paths, tensor names, resolved parameters — so a task
can run in this process, a thread or a Ray worker that reads the files itself. Naming follows mergekit:
embeddings take slice 0's sources at ``t = 0``; layers of each slice take ``t = idx / (len - 1)``;
the final norm and head take the last slice's sources at ``t = 1``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.merge import io, registry
from app.merge.config import MergeConfig, SliceEntry, SliceSource
from app.merge.errors import MergeConfigError, MergeInputError
from app.merge.io import DTYPE_NAMES, ST_DTYPES, ModelFiles, TensorMeta, split_layer_name
from app.merge.params import resolve
from app.merge.writer import TensorSpec


@dataclass(frozen=True)
class SourceRef:
    """One input tensor: which model, which file, which name inside it."""

    model: str
    path: str
    name: str


@dataclass(frozen=True)
class TensorInfo:
    """What a method may need to know about the output tensor it computes."""

    name: str
    kind: str  # "pre" (embeddings), "layer", "post" (final norm, lm_head)
    layer: int | None
    num_layers: int
    t: float  # position in the slice, for gradients
    seed: int
    heads: tuple[int, int, int] | None = None  # (num_heads, num_kv_heads, head_dim)
    vocab_rows: int | None = None  # pad the vocab axis to this many rows (embed_resize: pad)


@dataclass(frozen=True)
class TensorTask:
    """Everything needed to compute one output tensor."""

    info: TensorInfo
    method: str
    inputs: tuple[SourceRef, ...]
    base: SourceRef | None
    model_params: dict[str, list] = field(default_factory=dict)
    global_params: dict[str, Any] = field(default_factory=dict)
    stats: tuple[SourceRef | None, ...] | None = None
    compute_dtype: str | None = None
    out_dtype: str = "float32"
    out_shape: tuple[int, ...] = ()


@dataclass
class MergePlan:
    """The tasks plus what the output directory needs besides tensors."""

    tasks: list[TensorTask]
    out_config: dict
    config_dir: Path
    tokenizer_dir: Path
    notes: list[str]
    num_layers: int
    random_stream: int | None = None  # seed of one generator drawn by every task in order (dare_rng: mergekit)

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(t.info.name, t.out_shape, getattr(torch, t.out_dtype)) for t in self.tasks]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _is_pre(name: str) -> bool:
    """Embeddings come before the layers; every other non-layer tensor (norm, head) after."""
    return "embed" in name or name.split(".")[-2:-1] in (["wte"], ["wpe"])


def _check_same_tokens(models: dict[str, ModelFiles]) -> None:
    """Equal vocab sizes are not enough: row i of every embedding must be the same token in every model.

    Merging rows of different tokens silently corrupts the merged embeddings, so any id that two models'
    tokenizers map to different tokens is an error; a longer vocabulary that only appends tokens (what
    ``embed_resize: pad`` handles) passes. Models whose tokenizer files are byte-identical are not parsed.
    """
    import hashlib

    def digest(root: Path) -> bytes:
        h = hashlib.sha1()
        for f in ("tokenizer.json", "vocab.json", "vocab.txt"):
            if (root / f).is_file():
                h.update(f.encode() + (root / f).read_bytes())
        return h.digest()

    seen: dict[bytes, str] = {}
    for name, m in models.items():
        seen.setdefault(digest(m.path), name)
    if len(seen) < 2:
        return
    tables = {n: t for n in seen.values() if (t := io.token_table(models[n].path)) is not None}
    if len(tables) < 2:
        return
    (ref, a), *rest = tables.items()
    for name, b in rest:
        for i in range(min(len(a), len(b))):
            if a[i] != b[i]:
                raise MergeInputError(
                    f"tokenizers differ: token id {i} is {a[i]!r} in {ref!r} but {b[i]!r} in {name!r}; merged "
                    "embedding rows would mix different tokens (models must share a tokenizer; embed_resize: "
                    "pad only covers vocabularies that append tokens)"
                )


def build_plan(cfg: MergeConfig, stats_paths: dict[str, str] | None = None) -> MergePlan:
    """Read every model's headers, check they can be merged, and list one task per output tensor.

    Args:
        cfg: validated recipe.
        stats_paths: model -> Fisher/Gram file computed from ``calibration`` (YAML paths take precedence).
    Raises:
        MergeInputError: architecture, layer count, vocab or shape mismatch; missing tensor.
        MergeConfigError: a parameter that only fails for some tensors (e.g. a gradient crossing 0).
    """
    method = cfg.method
    models = {name: ModelFiles.open(name) for name in cfg.referenced_models()}
    ref = next(iter(models.values()))
    for m in models.values():
        if m.architecture != ref.architecture:
            raise MergeInputError(
                f"different architectures: {ref.name!r} is {ref.architecture}, {m.name!r} is {m.architecture}"
            )
    vocab = {n: m.vocab_size for n, m in models.items()}
    vocab_target = None
    if len(set(vocab.values())) > 1:
        if cfg.embed_resize == "error":
            raise MergeInputError(
                f"vocab sizes differ: {vocab}; set embed_resize: pad to pad embeddings to the largest"
            )
        vocab_target = max(v for v in vocab.values() if v)
    _check_same_tokens(models)
    slices = cfg.to_slices(lambda n: models[n].num_layers)
    for i, sl in enumerate(slices):
        for s in sl.sources:
            if s.layer_range[1] > models[s.model].num_layers:
                raise MergeInputError(f"slices[{i}]: layer_range {list(s.layer_range)} exceeds the "
                                      f"{models[s.model].num_layers} layers of {s.model!r}")
        spans = {s.model: s.layer_range[1] - s.layer_range[0] for s in sl.sources}
        if len(set(spans.values())) > 1:
            raise MergeInputError(f"models have different numbers of layers: {spans}")
    if cfg.models:
        _check_same_names([models[s.model] for s in slices[0].sources])
    num_layers = sum(sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0] for sl in slices)
    build = _TaskBuilder(cfg, method, models, vocab_target, stats_paths or {}, num_layers)

    first = models[slices[0].sources[0].model]
    flat = [n for n in first.tensors if split_layer_name(n) is None]
    tasks = [build(n, "pre", None, 0.0, slices[0], lambda s, n=n: n) for n in flat if _is_pre(n)]
    out_layer = 0
    for sl in slices:
        src0 = sl.sources[0]
        length = src0.layer_range[1] - src0.layer_range[0]
        for idx in range(length):
            t = idx / (length - 1) if length > 1 else 1.0
            parsed = map(split_layer_name, models[src0.model].tensors)
            names = [p for p in parsed if p and p[1] == src0.layer_range[0] + idx]
            for prefix, _, rest in names:
                tasks.append(build(f"{prefix}.{out_layer}.{rest}", "layer", out_layer, t, sl,
                                   lambda s, p=prefix, r=rest, i=idx: f"{p}.{s.layer_range[0] + i}.{r}"))
            out_layer += 1
    last = models[slices[-1].sources[0].model]
    tasks += [build(n, "post", None, 1.0, slices[-1], lambda s, n=n: n) for n in last.tensors
              if split_layer_name(n) is None and not _is_pre(n)]
    if method.prepare:
        tasks = method.prepare(tasks)

    src = models[cfg.base_model or slices[0].sources[0].model]
    out_config = copy.deepcopy(src.config)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in out_config:
            out_config[key] = num_layers
    if vocab_target:
        nested = "vocab_size" not in out_config and "text_config" in out_config
        (out_config["text_config"] if nested else out_config)["vocab_size"] = vocab_target
    out_dtype = cfg.out_dtype or cfg.dtype
    if out_dtype:
        keys = [k for k in ("dtype", "torch_dtype") if k in out_config] or ["torch_dtype"]
        for k in keys:
            out_config[k] = _dtype_name(DTYPE_NAMES[out_dtype])
    tok = cfg.tokenizer_source
    tokenizer_dir = src.path if tok in (None, "base") else (models[tok].path if tok in models else Path(tok))
    stream = None
    if cfg.dare_rng == "mergekit" and any(registry.get(t.method).draws for t in tasks):
        # mergekit's executor merges tensors in name order (a lexicographic topological sort keyed by tensor
        # name) and draws DARE masks from torch's global generator, seeded by --random-seed, model by model in
        # config order; computing in that order from one generator with that seed gives its masks bit for bit
        # (bench/merge_vs_mergekit.py). The output index maps names to shards, so the order is free here.
        tasks = sorted(tasks, key=lambda t: t.info.name)
        stream = cfg.random_seed
    return MergePlan(tasks, out_config, src.path, tokenizer_dir, cfg.notes(), num_layers, stream)


def _check_same_names(models: list[ModelFiles]) -> None:
    ref = models[0]
    for m in models[1:]:
        for a, b in ((ref, m), (m, ref)):
            extra = sorted(set(a.tensors) - set(b.tensors))
            if extra:
                raise MergeInputError(f"tensor {extra[0]!r} is in model {a.name!r} but missing from {b.name!r} "
                                      f"({len(extra)} such tensors)")


class _TaskBuilder:
    """Builds one TensorTask: aligns sources, checks shapes, resolves parameters for that tensor."""

    def __init__(self, cfg, method, models, vocab_target, stats_paths, num_layers):
        self.cfg, self.method, self.models = cfg, method, models
        self.vocab_target, self.stats_paths, self.num_layers = vocab_target, stats_paths, num_layers
        self._stat_headers: dict[str, dict[str, TensorMeta]] = {}

    def __call__(self, out_name: str, kind: str, layer: int | None, t: float, sl: SliceEntry, name_of) -> TensorTask:
        cfg, method = self.cfg, self.method
        base_name = sl.base_model or cfg.base_model
        uses_base = method.base != "unused" and base_name is not None
        base_src = next((s for s in sl.sources if s.model == base_name), None) if uses_base else None
        if method.base == "required" and base_src is None:
            raise MergeConfigError(
                f"base_model {base_name!r} must be one of the sources of every slice for {method.name}"
            )
        inputs = [s for s in sl.sources if not (uses_base and s.model == base_name)]
        metas: list[tuple[SliceSource, TensorMeta]] = []
        for s in ([base_src] if base_src else []) + inputs:
            meta = self.models[s.model].tensors.get(name_of(s))
            if meta is None:
                raise MergeInputError(
                    f"tensor {name_of(s)!r} is missing from model {s.model!r} (needed for output {out_name!r})"
                )
            metas.append((s, meta))
        s0, m0 = metas[0]
        is_vocab = layer is None and len(m0.shape) == 2 and m0.shape[0] == self.models[s0.model].vocab_size
        for s, m in metas[1:]:
            same = m.shape == m0.shape or (is_vocab and self.vocab_target and m.shape[1:] == m0.shape[1:])
            if not same:
                raise MergeInputError(f"shape mismatch for tensor {out_name!r}: model {s0.model!r} has {m0.shape}, "
                                      f"model {s.model!r} has {m.shape}")
        if m0.dtype not in ST_DTYPES:
            raise MergeInputError(f"tensor {out_name!r} has unsupported dtype {m0.dtype}")

        model_params: dict[str, list] = {p: [] for p in method.model_params}
        for s in inputs:
            for p, spec in method.model_params.items():
                value = resolve(p, tensor_name=name_of(s), t=t, scopes=[s.parameters, sl.parameters, cfg.parameters])
                model_params[p].append(self._checked(p, spec, value, f"model {s.model!r}, tensor {out_name!r}"))
        global_params = {}
        for p, spec in method.global_params.items():
            value = resolve(p, tensor_name=out_name, t=t, scopes=[sl.parameters, cfg.parameters])
            global_params[p] = self._checked(p, spec, value, f"tensor {out_name!r}")
        if global_params.get("normalize") and "weight" in model_params and abs(sum(model_params["weight"])) < 1e-8:
            raise MergeConfigError(
                f"weights {model_params['weight']} for tensor {out_name!r} sum to 0 while normalize is true"
            )
        stats = None
        if method.stats:
            paths = model_params.pop(method.stats)
            stats = tuple(self._stat_ref(s, p, name_of(s)) for s, p in zip(inputs, paths))
            if any(x is None for x in stats) and not all(x is None for x in stats):
                missing = [s.model for s, x in zip(inputs, stats) if x is None]
                raise MergeInputError(
                    f"{method.stats} statistics for tensor {out_name!r} exist for some models but not {missing}"
                )

        float_in = ST_DTYPES[m0.dtype].is_floating_point
        out_dtype = (cfg.out_dtype or cfg.dtype) if float_in else None
        out_dtype_name = _dtype_name(DTYPE_NAMES[out_dtype] if out_dtype else ST_DTYPES[m0.dtype])
        vocab_rows = self.vocab_target if is_vocab and self.vocab_target else None
        shape = (vocab_rows, *m0.shape[1:]) if vocab_rows else m0.shape
        heads = self.models[s0.model].heads
        info = TensorInfo(out_name, kind, layer, self.num_layers, t, cfg.random_seed, heads, vocab_rows)
        return TensorTask(
            info=info,
            method=method.name,
            inputs=tuple(SourceRef(s.model, m.path, name_of(s)) for s, m in metas[1 if base_src else 0:]),
            base=SourceRef(base_src.model, metas[0][1].path, name_of(base_src)) if base_src else None,
            model_params=model_params,
            global_params=global_params,
            stats=stats,
            compute_dtype=_dtype_name(DTYPE_NAMES[cfg.dtype]) if cfg.dtype and float_in else None,
            out_dtype=out_dtype_name,
            out_shape=tuple(shape),
        )

    @staticmethod
    def _checked(name: str, spec: registry.Param, value: Any, where: str) -> Any:
        if value is None:
            if spec.default is registry.REQUIRED:
                raise MergeConfigError(f"missing required parameter {name!r} ({where})")
            return spec.default
        if err := spec.check(name, value):
            raise MergeConfigError(f"{err} ({where})")
        return value

    def _stat_ref(self, src: SliceSource, path: str | None, name: str) -> SourceRef | None:
        path = path or self.stats_paths.get(src.model)
        if path is None:
            raise MergeConfigError(f"{self.method.name}: no {self.method.stats} file for model {src.model!r}")
        if path not in self._stat_headers:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                self._stat_headers[path] = {
                    k: TensorMeta(path, tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()
                }
        return SourceRef(src.model, path, name) if name in self._stat_headers[path] else None
