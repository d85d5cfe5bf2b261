"""``ControllerConfig``: the ``controller:`` section of a flywheel YAML.

Kept apart from ``app.controller.config`` (which imports ``app.config``) so that ``app.config`` can
import it for a ``LoopConfig.controller`` field without an import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.controller.triggers import TriggerConfig


class ControllerConfig(BaseModel):
    """How the Controller actor runs and when it starts an iteration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    triggers: TriggerConfig = Field(default_factory=TriggerConfig, description="When to start an iteration (app.controller.triggers)")
    poll_seconds: float = Field(30.0, gt=0, description="Seconds between trigger checks while idle")
    actor_name: str = Field("Controller", min_length=1, description="Name of the Controller actor in the Ray namespace")
    num_cpus: float = Field(0.25, gt=0, description="CPUs reserved by the Controller actor (fractional: it mostly waits)")
    max_restarts: int = Field(3, ge=-1, description="Ray restarts of a crashed Controller (-1: unlimited); each resumes from disk")
    max_iterations: int | None = Field(None, ge=1, description="Stop after this many iterations per `start` (None: until `stop`)")
    metrics: bool = Field(True, description="Export dashboard gauges (stage, pool size, review queue depth, iteration time)")
