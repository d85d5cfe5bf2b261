"""Ray Train + DeepSpeed training: the worker entry point and the driver-side launcher.

The loop itself is ``app.train.runner.run`` (Ray-free); this file only supplies its :class:`Hooks`
from Ray Train (rank, world size, ``get_checkpoint``, ``report``) or Ray Tune, and starts a
``TorchTrainer``. The worker rebuilds everything from ``TrainSpec.model_dump()``, so a restarted
worker group rebuilds the same thing.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from app.train.runner import Hooks, run
from app.train.spec import TrainSpec, option

__all__ = ["TrainSpec", "run_training", "train_loop_per_worker", "train_in_tune_trial"]
log = logging.getLogger(__name__)


def _local(ckpt) -> Path | None:
    """A Ray checkpoint as a local directory (storage on this filesystem: its own path)."""
    if ckpt is None:
        return None
    p = Path(ckpt.path)
    return p if p.is_dir() else Path(ckpt.to_directory())


class _MlflowSink:
    """Batches rank 0's step records into MLflow and a Ray dashboard gauge (tokens/s)."""

    def __init__(self, spec: TrainSpec, run_name: str):
        from ray.util.metrics import Gauge

        self.spec, self.pending = spec, []
        self.client = None
        if spec.mlflow_uri and spec.mlflow_run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(spec.mlflow_uri)
        self.gauge = Gauge("flywheel_train_tokens_per_s", "training throughput, all workers", tag_keys=("run",))
        self.gauge.set_default_tags({"run": run_name})

    def __call__(self, rec: dict) -> None:
        self.gauge.set(rec["tokens_per_s"])
        if self.client is None:
            return
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self.pending += [Metric(f"{self.spec.metric_prefix}/{k}", float(v), ms, rec["step"])
                         for k, v in rec.items() if k != "step"]
        if len(self.pending) >= 40 or rec["step"] % 50 == 0:
            self.flush()

    def flush(self) -> None:
        if self.client is not None and self.pending:
            self.client.log_batch(self.spec.mlflow_run_id, metrics=self.pending)
            self.pending = []


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: run the shared loop with Ray Train's rank, checkpoints and reports."""
    import ray.train
    import torch

    spec = TrainSpec.model_validate(config)
    # as many threads as whole CPUs reserved (fractional CPUs: 1); more only oversubscribe the cores
    torch.set_num_threads(max(1, int(spec.trainer["cpus_per_worker"])))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if spec.ckpt_root:  # who is training, for operators (and the fault-injection test)
        pids = Path(spec.ckpt_root) / "workers"
        pids.mkdir(parents=True, exist_ok=True)
        (pids / f"rank_{rank}.pid").write_text(str(os.getpid()))

    def report(metrics, d, name):
        if d is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(d)), checkpoint_dir_name=name)

    sink = _MlflowSink(spec, ctx.get_experiment_name()) if rank == 0 else None
    run(spec, Hooks(rank=rank, world_size=ctx.get_world_size(), latest=lambda: _local(ray.train.get_checkpoint()),
                    report=report, log=sink))
    if sink is not None:
        sink.flush()


def train_in_tune_trial(config: dict) -> None:
    """Ray Tune function trainable: one in-process worker (``trainer.engine`` torch, or deepspeed with world 1).

    ``config`` is ``TrainSpec.model_dump()``; reports go through ``tune.report`` and resume through
    ``tune.get_checkpoint()``.
    """
    from ray import tune

    spec = TrainSpec.model_validate(config)

    def report(metrics, d, name):
        tune.report(metrics, checkpoint=None if d is None else tune.Checkpoint.from_directory(str(d)))

    run(spec, Hooks(rank=0, world_size=1, latest=lambda: _local(tune.get_checkpoint()), report=report))


def run_training(spec: TrainSpec, storage: Path, run_name: str, out_dir: Path | None) -> dict:
    """Launch a TorchTrainer, wait, copy the exported model to ``out_dir``; return a summary.

    Running again with the same ``storage`` and ``run_name`` resumes that run from its newest verified
    checkpoint. Elastic when ``trainer.min_workers`` is set: ``num_workers=(min_workers, num_workers)``.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from app.train.layout import want_gpu

    t = spec.trainer
    root = Path(storage).resolve() / run_name
    spec = spec.model_copy(update={"ckpt_root": str(root)})
    lo = option(t, "min_workers")
    workers = (lo, t["num_workers"]) if lo is not None and lo < t["num_workers"] else t["num_workers"]
    # new option (not yet a TrainerConfig field): how often an elastic run looks for room to grow
    elastic = {"elastic_resize_monitor_interval_s": float(option(t, "elastic_resize_interval_s"))} \
        if isinstance(workers, tuple) else {}
    use_gpu, why = want_gpu(t["use_gpu"], ray.cluster_resources().get("GPU", 0.0), lo or t["num_workers"])
    print(f"[train] {why}", flush=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.model_dump(),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": t["cpus_per_worker"]}, **elastic),
        run_config=RunConfig(name=run_name, storage_path=str(Path(storage).resolve()),
                             failure_config=FailureConfig(max_failures=t["max_failures"]),
                             # >= 2 so a corrupted newest checkpoint has a predecessor to fall back to
                             checkpoint_config=CheckpointConfig(num_to_keep=max(2, t["keep_checkpoints"]))),
    )
    t0 = time.time()
    result = trainer.fit()
    if result.error is not None or result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} failed: {result.error or 'no checkpoint was written'}")
    import json

    from app.train import run_checkpoints as rc

    src = _local(result.checkpoint)
    history = json.loads((src / rc.HISTORY).read_text())
    events = json.loads((src / rc.EVENTS).read_text())
    model_dir = None
    if out_dir is not None and (src / "model").is_dir():
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(src / "model", out_dir)
        model_dir = str(out_dir)
    return {"checkpoint": result.checkpoint.path, "model_dir": model_dir, "history": history, "events": events,
            "wall_s": time.time() - t0, "steps": history[-1]["step"] if history else 0,
            "final_loss": history[-1]["loss"] if history else float("nan"), "meta": rc.read_meta(src)}
