"""Configuration of the long-lived controller: the ``controller:`` section of a flywheel YAML.

Until ``LoopConfig`` carries a ``controller`` field, ``load_flywheel_config`` splits that section off
a loop YAML and validates both halves, reporting every problem at once like ``app.config.load_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.config import ConfigError, LoopConfig, _set_dotted, format_errors
from app.controller.settings import ControllerConfig

__all__ = ["ControllerConfig", "load_flywheel_config"]


def load_flywheel_config(path: str | Path, overrides: list[str] | None = None) -> tuple[LoopConfig, ControllerConfig]:
    """Load a loop YAML with an optional ``controller:`` section.

    Args:
        path: YAML file.
        overrides: ``dotted.key=yaml_value`` strings (``controller.poll_seconds=5`` works too).

    Raises:
        ConfigError: Missing file, bad YAML, or validation problems (all listed, with dotted keys).
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(raw).__name__}")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        _set_dotted(raw, k.strip(), yaml.safe_load(v))
    if "controller" in LoopConfig.model_fields:  # once LoopConfig carries the section, it validates it
        try:
            loop = LoopConfig.model_validate(raw)
        except ValidationError as e:
            raise ConfigError(f"{p}: {e.error_count()} problem(s):\n{format_errors(e)}") from None
        return loop, loop.controller
    ctl: Any = raw.pop("controller", None) or {}
    problems = []
    loop = controller = None
    try:
        loop = LoopConfig.model_validate(raw)
    except ValidationError as e:
        problems.append(format_errors(e))
    try:
        controller = ControllerConfig.model_validate(ctl)
    except ValidationError as e:
        problems.append("\n".join("  controller." + line.strip() for line in format_errors(e).splitlines()))
    if problems:
        raise ConfigError(f"{p}: problem(s):\n" + "\n".join(problems))
    return loop, controller
