"""The controller's stage functions: ``jobs.stages`` bodies with their inputs and outputs on disk.

Each function takes the ``IterationState`` and reads what earlier stages produced only from
``state.completed`` (or files those outputs name), so a controller restarted between two stages runs
the next one exactly as the killed one would have. Outputs are JSON; bulky ones (the chosen rows)
are written atomically under the iteration directory and named in the outputs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray

from app.atomic_files import write_json_atomic
from app.controller.control import ControlStore, source_signature
from app.controller.state import IterationState
from jobs.stages import data, deploy, evaluate, label, select, train
from jobs.stages.context import StageContext


def _plain(x):
    """JSON-safe copy (numpy scalars become Python floats)."""
    return json.loads(json.dumps(x, default=float))


class IterationStages:
    """Stage functions of iteration ``iteration`` (its number is also the round number ``r``)."""

    def __init__(self, ctx: StageContext, control: ControlStore, idir: Path, iteration: int):
        self.ctx, self.control, self.idir, self.r = ctx, control, idir, iteration

    # ------------------------------------------------------------------ MLflow run of the iteration
    def open_run(self) -> None:
        """Resume the iteration's MLflow run if one was started (its id is in ``context.json``), else start it."""
        import mlflow

        from app.tracking import flatten

        path = self.idir / "context.json"
        context = json.loads(path.read_text()) if path.exists() else {}
        if mlflow.active_run() is not None:
            mlflow.end_run()
        self.ctx.start_mlflow(context.get("mlflow_run_id"))
        if "mlflow_run_id" not in context:
            write_json_atomic(path, {**context, "mlflow_run_id": self.ctx.run_id})
            c = self.ctx.cfg
            mlflow.log_params({k: v for k, v in list(flatten(c.model_dump(exclude={"pool": {"sources"}})).items())[:400]})
            mlflow.set_tags({"flywheel.iteration": str(self.r), "flywheel.controller": "1"})

    def close_run(self, state: IterationState) -> None:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status={"idle": "FINISHED", "failed": "FAILED"}.get(state.status, "KILLED"))

    def functions(self) -> dict:
        return {"ingest": self.ingest, "select": self.select, "label": self.label, "train": self.train,
                "evaluate": self.evaluate, "decide": self.decide, "deploy": self.deploy}

    # ------------------------------------------------------------------ helpers
    def _ensure_labeler(self, state: IterationState) -> list[str]:
        names = state.completed["ingest"]["label_names"]
        if self.ctx.labeler is None:
            self.ctx.open_labeler(names)
        return names

    def _current(self, state: IterationState) -> str | None:
        """The model scoring selection and pre-labels: the starting model, when it was trained."""
        ing = state.completed["ingest"]
        return ing["start_dir"] if ing["trained"] else None

    # ------------------------------------------------------------------ stages
    def ingest(self, state: IterationState) -> dict:
        ctx = self.ctx
        sig = source_signature([s.path for s in ctx.cfg.pool.sources])
        version = ray.get(ctx.pool.version.remote())
        rows_added = 0
        if sig != self.control.load().source_signature or version == 0:  # new data in the files since the last ingest
            rows_added = data.ingest(ctx)["rows_added"]
            self.control.update(source_signature=sig)
        manifest = ray.get(ctx.pool.manifest.remote())
        names = data.label_names(ctx)
        ctx.open_labeler(names)
        start_dir, start_version, trained = data.starting_model(ctx, names)
        ctx.prog.say(f"  iteration {self.r}: pool v{manifest['version']} ({manifest['counts']['total']} rows); starting "
                     f"model {'champion v' + start_version if start_version else 'base ' + ctx.cfg.model.name}")
        return {"pool_version": manifest["version"], "pool_total": manifest["counts"]["total"], "rows_added": rows_added,
                "label_names": names, "start_dir": str(start_dir), "start_version": start_version, "trained": trained,
                "mlflow_run_id": ctx.run_id}

    def _earlier_failures(self) -> str | None:
        """``failures.json`` of the newest earlier iteration that evaluated (7.1.5 feedback to selection)."""
        for r in range(self.r - 1, 0, -1):
            p = self.idir.parent / f"iter-{r:04d}" / "failures.json"
            if p.exists():
                return str(p)
        return None

    def select(self, state: IterationState) -> dict:
        fb = self.ctx.cfg.controller.feedback
        failures = self._earlier_failures() if fb.enabled else None
        chosen = select.select(self.ctx, self._current(state), self.r, failures_file=failures)
        path = self.idir / "chosen.json"
        write_json_atomic(path, chosen)
        return {"chosen_file": str(path), "selected": len(chosen["rows"]), "strategy": chosen["strategy"],
                "failures_file": failures}

    def label(self, state: IterationState) -> dict:
        names = self._ensure_labeler(state)
        chosen = json.loads(Path(state.completed["select"]["chosen_file"]).read_text())
        return _plain(label.label(self.ctx, chosen, self._current(state), self.r, names))

    def train(self, state: IterationState) -> dict:
        names = self._ensure_labeler(state)
        ing = state.completed["ingest"]
        overrides = self.control.load().trainer_overrides  # from an earlier iteration's evaluation feedback
        if overrides:
            import mlflow

            mlflow.log_dict({"overrides": overrides, "why": self.control.load().overrides_reason}, "trainer_feedback.json")
        # a fixed run name per iteration: a restarted controller resumes from the newest checkpoint
        out = train.train(self.ctx, ing["start_dir"], self.r, names,
                          run_name=f"{self.ctx.cfg.name}-iter{self.r:04d}-{self.ctx.run_id[:8]}",
                          trainer_overrides=overrides)
        self.control.update(last_train_at=time.time(), items_at_last_train=ing["pool_total"])
        losses = [h["loss"] for h in out["history"]]
        train.learning_curve(self.ctx, [{"round": self.r, "labels": state.completed["label"]["labels"], "losses": losses}])
        return {"model_dir": str(out["model_dir"]), "checkpoint": str(out["checkpoint"]), "steps": out["steps"],
                "final_loss": out["final_loss"], "wall_s": out["wall_s"], "losses": losses, "trainer_overrides": overrides}

    def evaluate(self, state: IterationState) -> dict:
        import mlflow

        inputs, targets = data.test_set(self.ctx)
        base, cand = evaluate.evaluate(self.ctx, [state.completed["ingest"]["start_dir"],
                                                  state.completed["train"]["model_dir"]], inputs, targets)
        mlflow.log_metrics({f"baseline.{k}": v for k, v in base.items() if isinstance(v, (int, float))})
        mlflow.log_metrics({f"eval.{k}": v for k, v in cand.items() if isinstance(v, (int, float))})
        m = cand["metric"]
        self.ctx.prog.say(f"  {m}: {base[m]:.4f} → {cand[m]:.4f}; p99 {base['p99_ms']:.1f} → {cand['p99_ms']:.1f} ms")
        fb = None
        if self.ctx.cfg.task == "classify" and self.ctx.cfg.controller.feedback.enabled:
            from jobs.stages import failures

            names = self._ensure_labeler(state)
            gv = ray.get(self.ctx.labeler.counts.remote())["guideline_version"]
            fb = failures.collect(self.ctx, state.completed["train"]["model_dir"], inputs, targets, names, self.idir,
                                  self.r, gv)
        return _plain({"baseline": base, "candidate": cand, "feedback": fb})

    def decide(self, state: IterationState) -> dict:
        import mlflow

        from app.controller.feedback import training_feedback

        ev = state.completed["evaluate"]
        d = evaluate.decide(self.ctx, ev["baseline"], ev["candidate"], state.completed["train"]["losses"])
        m = ev["candidate"]["metric"]
        self.ctx.prog.say(f"  decision: {d.action} — {'; '.join(d.reasons)}")
        # evaluation feeds the next run's settings (7.1.5): recorded with why, applied by the next train stage
        used = {**self.ctx.cfg.trainer.model_dump(), **state.completed["train"]["trainer_overrides"]}
        fb = training_feedback(d.action, float(ev["candidate"][m]), float(ev["baseline"][m]), used)
        if fb is not None:
            changed, why = fb
            self.control.update(trainer_overrides={**state.completed["train"]["trainer_overrides"], **changed},
                                overrides_reason=why)
            mlflow.set_tag("flywheel.training_feedback", why[:500])
            self.ctx.prog.say(f"  feedback for the next training: {why}")
        return {**d.to_dict(), "iteration": self.r, "metric": m, "before": ev["baseline"][m], "after": ev["candidate"][m],
                "training_feedback": None if fb is None else {"changed": fb[0], "why": fb[1]}}

    def _canary_deploy(self, state: IterationState) -> dict:
        """Register as ``challenger`` and roll out through the endpoint's canary (the first version, with no
        champion to compare with, becomes the champion directly); the outcome goes on the model version's tags
        and the iteration's run, so lineage and the decision record show it."""
        import mlflow

        from app.serving.config import load_serve_config
        from app.tracking import get_alias

        ctx, cc = self.ctx, self.ctx.cfg.controller.canary
        scfg = load_serve_config(cc.endpoint_config)
        member = deploy.canary_member(scfg, ctx.cfg.tracking.registered_model)
        name = ctx.cfg.tracking.registered_model
        champ = get_alias(ctx.client, name)
        ours = deploy.registered_for_run(ctx)
        first = champ is None or (ours is not None and str(champ.version) == ours and
                                  not (self.idir / "canary.json").exists())
        version = deploy.register(ctx, state.completed["train"]["model_dir"], state.completed["ingest"]["start_version"],
                                  {"flywheel.iteration": str(self.r)}, alias="champion" if first else "challenger")
        if not first:  # written before the rollout: a resumed stage must not take a promoted version for a first one
            write_json_atomic(self.idir / "canary.json", {"version": version})
        inputs, targets = data.test_set(ctx)
        replay = list(zip(inputs, targets))[: cc.replay_test]
        token = os.environ.get(cc.token_env or scfg.http.auth_token_env or "", "")
        res = deploy.canary_rollout(scfg, ctx.store, ctx.uri, member, version, [] if first else replay,
                                    0 if first else cc.wait_s, token, ctx.prog.say)
        if first:
            res = {**res, "outcome": "champion", "reason": "no champion to canary against: served as champion"}
        for k in ("outcome", "reason"):
            ctx.client.set_model_version_tag(name, version, f"flywheel.canary_{k}", str(res[k])[:5000])
        mlflow.set_tags({"flywheel.canary_outcome": res["outcome"], "flywheel.canary_version": version})
        mlflow.log_dict(_plain(res), "canary.json")
        return {"registered_version": version, "endpoint": res["endpoint"], "canary": _plain(res)}

    def deploy(self, state: IterationState) -> dict:
        self._ensure_labeler(state)
        out = {"registered_version": None, "endpoint": None}
        if state.completed["decide"]["action"] == "deploy" and self.ctx.cfg.controller.canary.endpoint_config:
            return self._canary_deploy(state)
        if state.completed["decide"]["action"] == "deploy":
            out["registered_version"] = deploy.register(
                self.ctx, state.completed["train"]["model_dir"], state.completed["ingest"]["start_version"],
                {"flywheel.iteration": str(self.r)})
            if self.ctx.cfg.serve.enabled:
                inputs, _ = data.test_set(self.ctx)
                deploy.serve(self.ctx, inputs[:1])
                out["endpoint"] = self.ctx.summary.get("endpoint")
        return out
