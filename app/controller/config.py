"""Configuration of the long-lived controller: the ``controller:`` section of a flywheel YAML.

Until ``LoopConfig`` carries a ``controller`` field, ``load_flywheel_config`` splits that section off
a loop YAML and validates both halves, reporting every problem at once like ``app.config.load_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.config import ConfigError, LoopConfig, format_errors, read_yaml_mapping
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
    raw = read_yaml_mapping(p, overrides)
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
