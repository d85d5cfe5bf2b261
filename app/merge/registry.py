"""Registry of merge methods: a method is a pure function over aligned tensors plus a parameter spec.

Like mergekit's ``@merge_method`` decorator: the spec says which parameters the YAML may set per model
(``weight``, ``density``, ...) and globally (``t``, ``normalize``, ``lambda``, ...), with defaults and
bounds, so a config is validated before any tensor is read.

Calling convention of a method function::

    fn(tensors: list[Tensor], *, base: Tensor | None, info: TensorInfo, **params) -> Tensor

``tensors`` are the aligned inputs (the base model excluded when the method uses one), every tensor of
shape S; per-model parameters arrive as lists aligned with ``tensors``; global parameters as scalars.
Parameter names that are Python keywords get a trailing underscore (``lambda`` -> ``lambda_``).
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

REQUIRED: Any = object()  # sentinel default: the YAML must provide the parameter


@dataclass(frozen=True)
class Param:
    """One YAML parameter of a merge method.

    Attributes:
        default: value when the YAML does not set it; ``REQUIRED`` if it must be set.
        kind: ``"float"``, ``"int"``, ``"bool"`` or ``"str"``.
        low, high: inclusive/exclusive bounds, see ``low_open`` / ``high_open``; None for unbounded.
        choices: allowed strings for a ``"str"`` parameter (None: any string).
        help: one line shown in error messages and docs.
    """

    default: Any = REQUIRED
    kind: Literal["float", "int", "bool", "str"] = "float"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    help: str = ""

    def check(self, name: str, value: Any) -> str | None:
        """Return an error message if ``value`` is not allowed for this parameter, else None."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"{name}={value!r} must be true or false"
        if self.kind == "str":
            if not isinstance(value, str):
                return f"{name}={value!r} must be a string"
            if self.choices is not None and value not in self.choices:
                return f"{name}={value!r} is not one of {list(self.choices)}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}={value!r} must be a number"
        if self.kind == "int" and not float(value).is_integer():
            return f"{name}={value!r} must be an integer"
        if not math.isfinite(value):
            return f"{name}={value!r} must be finite"
        lo_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        hi_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if lo_bad or hi_bad:
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            left = "(" if self.low_open or self.low is None else "["
            right = ")" if self.high_open or self.high is None else "]"
            interval = f"{left}{lo}, {hi}{right}"
            return f"{name}={value!r} is outside {interval}"
        return None


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method (see module docstring for the function's calling convention)."""

    name: str
    fn: Callable[..., Any]
    base: Literal["required", "optional", "unused"] = "unused"
    model_params: Mapping[str, Param] = field(default_factory=dict)
    global_params: Mapping[str, Param] = field(default_factory=dict)
    ignored_params: Mapping[str, str] = field(default_factory=dict)  # accepted for mergekit compat, with a note
    min_models: int = 1
    max_models: int | None = None
    stats: str | None = None  # model parameter holding a per-model statistics file ("fisher", "gram")
    prepare: Callable[[list], list] | None = None  # optional pass over all tensor tasks before merging
    draws: bool = False  # takes ``rng``: a random stream shared across tensors (DARE, dare_rng: mergekit)
    reference: str = ""

    def all_params(self) -> dict[str, Param]:
        """Every parameter the YAML may set (per-model and global)."""
        return {**self.model_params, **self.global_params}


_METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, **spec: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` as merge method ``name``; rejects duplicate names.

    Args:
        name: the ``merge_method`` value users write in YAML.
        **spec: the remaining ``MergeMethod`` fields (base, model_params, global_params, ...).
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        register(MergeMethod(name=name, fn=fn, **spec))
        return fn

    return wrap


def register(method: MergeMethod) -> MergeMethod:
    """Add a fully built ``MergeMethod`` (used when one function serves several names)."""
    if method.name in _METHODS:
        raise ValueError(f"merge method {method.name!r} registered twice")
    _METHODS[method.name] = method
    return method


def get(name: str) -> MergeMethod:
    """Look a method up by name; KeyError lists the valid names."""
    if name not in _METHODS:
        raise KeyError(f"unknown merge_method {name!r}; available: {available()}")
    return _METHODS[name]


def available() -> list[str]:
    """Sorted names of all registered methods."""
    return sorted(_METHODS)


def kwarg_name(param: str) -> str:
    """Python keyword argument for a YAML parameter name (``lambda`` -> ``lambda_``)."""
    return param + "_" if keyword.iskeyword(param) else param
