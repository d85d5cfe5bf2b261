"""``ControllerConfig``: the ``controller:`` section of a flywheel YAML.

Kept apart from ``app.controller.config`` (which imports ``app.config``) so that ``app.config`` can
import it for a ``LoopConfig.controller`` field without an import cycle.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.controller.triggers import TriggerConfig


class OnlineSignalConfig(BaseModel):
    """Where the live-degradation trigger reads its online metric (a Serve endpoint's /feedback accuracy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = Field(None, description="Serve endpoint name (jobs.serve_up); None: no online signal")
    namespace: str = Field("flywheel", min_length=1, description="Ray namespace of the endpoint's state actor")
    min_labels: int = Field(30, ge=1, description="Fewest feedback labels in the window before the metric counts")
    threshold: Literal["absolute", "relative"] = Field(
        "relative", description="absolute: triggers.degradation_threshold; relative: champion val accuracy - tolerance")
    tolerance: float = Field(0.05, ge=0, le=1, description="Accepted drop below val accuracy in relative mode")


class FeedbackConfig(BaseModel):
    """How evaluation failures steer the next selection and the guideline review (7.1.5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Save failures at evaluate and use them at the next select")
    low_score: float = Field(0.6, gt=0, le=1, description="A correct test item whose true-label probability is below this counts as a failure")
    max_failures: int = Field(200, ge=1, description="Most failures kept (lowest true-label probability first)")
    k: int = Field(5, ge=1, description="Pool neighbours per failure that get a bonus")
    max_bonus: float = Field(1.0, gt=0, description="Bonus of a pool item identical to a failure (cosine 1)")
    share: float = Field(0.25, ge=0, le=1, description="Largest share of the selection budget given to failure neighbours")
    n_clusters: int = Field(5, ge=1, description="k-means clusters of failures written as guideline-review items")


class CanaryDeployConfig(BaseModel):
    """How the deploy stage rolls a new version out through an ensemble endpoint's canary (jobs.serve_up)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_config: str | None = Field(
        None, description="Serve ensemble YAML with a member sourced models:/<tracking.registered_model>@champion; "
        "None: deploy registers the version as champion (and serves it directly when serve.enabled)")
    wait_s: float = Field(600.0, ge=0, description="Longest wait in the deploy stage for promotion or rollback; "
                          "after it the outcome is 'pending' and the canary goes on with live traffic")
    replay_test: int = Field(0, ge=0, description="Labelled test items the deploy stage posts (and labels via "
                             "/feedback) in a loop to drive the canary when there is no live traffic; 0: none")
    token_env: str | None = Field(None, description="Env var with the endpoint's bearer token for the replay "
                                  "(None: the endpoint's http.auth_token_env)")


class ControllerConfig(BaseModel):
    """How the Controller actor runs and when it starts an iteration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    triggers: TriggerConfig = Field(default_factory=TriggerConfig, description="When to start an iteration (app.controller.triggers)")
    online: OnlineSignalConfig = Field(default_factory=OnlineSignalConfig, description="Online metric for the degraded trigger")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="Evaluation feedback to selection and review")
    canary: CanaryDeployConfig = Field(default_factory=CanaryDeployConfig, description="Deploys through an endpoint's canary")
    poll_seconds: float = Field(30.0, gt=0, description="Seconds between trigger checks while idle")
    actor_name: str = Field("Controller", min_length=1, description="Name of the Controller actor in the Ray namespace")
    num_cpus: float = Field(0.25, gt=0, description="CPUs reserved by the Controller actor (fractional: it mostly waits)")
    max_restarts: int = Field(3, ge=-1, description="Ray restarts of a crashed Controller (-1: unlimited); each resumes from disk")
    max_iterations: int | None = Field(None, ge=1, description="Stop after this many iterations per `start` (None: until `stop`)")
    metrics: bool = Field(True, description="Export dashboard gauges (stage, pool size, review queue depth, iteration time)")
