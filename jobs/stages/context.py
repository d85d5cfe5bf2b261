"""What every stage needs: config, run store, progress, the long-lived actors and the MLflow run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import LoopConfig
from app.pool import PoolConfig
from jobs.common import head_node_affinity


def pool_cfg(cfg: LoopConfig, store: Path) -> dict:
    """The pool config with its root resolved: by default ``<store>/pool/<loop name>``."""
    d = cfg.pool.model_dump()
    root = Path(cfg.pool.root)
    if not root.is_absolute():
        # the default lives in the run store, one pool per loop name; an explicit relative root is taken from the CWD
        root = store / "pool" / cfg.name if cfg.pool.root == PoolConfig.model_fields["root"].default else root.resolve()
    d["root"] = str(root)
    return d


@dataclass
class StageContext:
    """Mutable handles shared by the stages of one iteration.

    ``own`` is True when this process started its Ray cluster (then actors need not outlive it);
    ``detached`` forces detached actors anyway (the controller: the pool must survive its restarts).
    """

    cfg: LoopConfig
    store: Path
    prog: Any
    own: bool
    detached: bool = False
    pool: Any = None
    labeler: Any = None
    client: Any = None
    uri: str | None = None
    run_id: str | None = None
    serving: bool = False
    summary: dict = field(default_factory=dict)

    def _actor_opts(self, name: str) -> dict:
        c = self.cfg
        opts = dict(namespace=c.ray.namespace, get_if_exists=True, num_cpus=c.ray.actor_cpus, name=name)
        if self.detached or not self.own:
            opts["lifetime"] = "detached"  # on a user's cluster the pool outlives the job
        if c.ray.state_actors_on_head and (strategy := head_node_affinity()) is not None:
            opts["scheduling_strategy"] = strategy
        return opts

    def open_pool(self):
        """Create or find the named ``DataPool:<name>`` actor."""
        from actors.datapool import DataPoolActor

        self.pool = DataPoolActor.options(**self._actor_opts(f"DataPool:{self.cfg.name}")).remote(
            pool_cfg(self.cfg, self.store))
        return self.pool

    def open_labeler(self, label_names: list[str]):
        """Create or find the named ``Labeler:<name>`` actor (SQLite store under ``<store>/labels``)."""
        from actors.labeler import LabelerActor

        c = self.cfg
        db = self.store / "labels" / f"{c.name}.sqlite"
        db.parent.mkdir(parents=True, exist_ok=True)
        self.labeler = LabelerActor.options(**self._actor_opts(f"Labeler:{c.name}")).remote(
            str(db), label_names if c.task == "classify" else None, c.labeler.guideline, c.labeler.stale_rule)
        return self.labeler

    def start_mlflow(self, run_id: str | None = None):
        """Start (or, given ``run_id``, resume) this iteration's MLflow run; sets ``uri``, ``client``, ``run_id``."""
        import mlflow
        from mlflow.tracking import MlflowClient

        from app.tracking import ensure_experiment, tracking_uri

        self.uri = tracking_uri(self.cfg.tracking.uri, self.store)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id)
        else:
            exp = ensure_experiment(self.client, self.cfg.tracking.experiment, self.store)
            run = mlflow.start_run(experiment_id=exp, run_name=self.cfg.name)
        self.run_id = run.info.run_id
        self.summary["mlflow_run_id"] = self.run_id
        return run
