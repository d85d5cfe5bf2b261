"""From a trial's resolved config to the trainer options of that trial.

A search space speaks the user's vocabulary (`learning_rate`, `batch_size`); the trainer speaks
`TrainerConfig`'s (`lr`, `micro_batch_size`). `param_map` (key -> trainer field, dotted for nested LoRA
fields, or None for "record only") joins them; `check_mapping` refuses a space whose keys are not all mapped
before Ray starts, and `trainer_options` builds and validates the trial's options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from app.tune.space import SearchSpace


def _trainer_fields() -> dict[str, Any]:
    from app.config import TrainerConfig

    return TrainerConfig().model_dump()


def _has_field(fields: dict[str, Any], dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if head not in fields:
        return False
    return not rest or (isinstance(fields[head], dict) and _has_field(fields[head], rest))


def check_mapping(space: SearchSpace, mapping: Mapping[str, str | None], overrides: Mapping[str, Any]) -> list[str]:
    """Problems with mapping `space`'s keys onto trainer fields (empty list when fine).

    Every key of the space needs an entry; mapped fields must exist in TrainerConfig; two keys may not feed
    one field (which one wins would depend on file order); overrides must name existing fields.
    """
    fields, errors, owner = _trainer_fields(), [], {}
    for key in space.params:
        if key not in mapping:
            errors.append(f"param_map: space key {key!r} is not mapped to a trainer field; add "
                          f"`param_map: {{{key}: <field>}}` (fields: {sorted(fields)}) or map it to null")
            continue
        target = mapping[key]
        if target is None:
            continue
        if not _has_field(fields, target):
            errors.append(f"param_map: {key} -> {target!r} is not a TrainerConfig field; fields: {sorted(fields)}")
        elif target in owner:
            errors.append(f"param_map: {key} and {owner[target]} both set trainer field {target!r}; map one to null")
        else:
            owner[target] = key
    for name in overrides:
        if not _has_field(fields, name):
            errors.append(f"trainer.overrides: {name!r} is not a TrainerConfig field; fields: {sorted(fields)}")
    return errors


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        d[head] = dict(d.get(head) or {})
        _set(d[head], rest, value)
    else:
        d[head] = value


def trainer_options(
    config: Mapping[str, Any],
    mapping: Mapping[str, str | None],
    overrides: Mapping[str, Any],
    fixed: Mapping[str, Any],
) -> dict[str, Any]:
    """`TrainerConfig(...).model_dump()` for one trial.

    Precedence, lowest first: TrainerConfig defaults, the study's `overrides`, the trial's config through
    `mapping`, then `fixed` (what the tuner itself must control: engine, world size, step counts).

    Raises:
        ValueError: the combined options fail TrainerConfig's validation; the message names the field and the
            trial value (e.g. warmup_ratio 1.5 from the space).
    """
    from app.config import TrainerConfig

    opts = _trainer_fields()
    for source in (overrides, {mapping[k]: v for k, v in config.items() if mapping.get(k)}, fixed):
        for name, value in source.items():
            _set(opts, name, value)
    try:
        return TrainerConfig.model_validate(opts).model_dump()
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                        for err in e.errors())
        raise ValueError(f"trial config {dict(config)} gives invalid trainer options: {bad}") from None


def max_warmup_ratio(space: SearchSpace, mapping: Mapping[str, str | None], overrides: Mapping[str, Any]) -> float:
    """The longest warm-up share any trial can have: the upper bound of the space key mapped to
    `warmup_ratio`, else the override, else TrainerConfig's default. The stopper's min_steps is raised to
    ceil(this * max_t) so no trial is stopped while its learning rate is still warming up (pitfall 9)."""
    from app.tune.params import ChoiceParam, FixedParam, GridParam

    for key, target in mapping.items():
        if target == "warmup_ratio" and key in space.params:
            p = space.params[key]
            if isinstance(p, FixedParam):
                return float(p.value)
            if isinstance(p, (ChoiceParam, GridParam)):
                return float(max(p.values))
            return float(getattr(p, "high", 0.0))
    return float(overrides.get("warmup_ratio", _trainer_fields()["warmup_ratio"]))
