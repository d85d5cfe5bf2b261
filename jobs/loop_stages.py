"""One loop iteration, wired over Ray actors, Ray Data, Ray Train and Ray Serve.

The stages themselves live in ``jobs.stages`` (shared with the long-lived controller,
``actors.controller``); this class runs them in order once, with ``selection.rounds`` rounds of
select → label → train, and reports.
"""

from __future__ import annotations

import time
from pathlib import Path

import ray

from app.config import LoopConfig
from jobs.stages import data, deploy, evaluate, label, select, train
from jobs.stages.context import StageContext, pool_cfg

_pool_cfg = pool_cfg  # jobs.serve_up imports this name: the pool exactly where `jobs.loop` keeps it


class Loop:
    def __init__(self, cfg: LoopConfig, store: Path, prog, own_cluster: bool):
        self.cfg, self.store, self.prog, self.own = cfg, store, prog, own_cluster
        self.current_stage = "setup"
        self.ctx = StageContext(cfg, store, prog, own_cluster,
                                summary={"name": cfg.name, "task": cfg.task, "store": str(store)})
        self.summary = self.ctx.summary

    @property
    def serving(self) -> bool:
        return self.ctx.serving

    def run(self) -> dict:
        import mlflow

        from app.tracking import flatten

        c, P, ctx = self.cfg, self.prog, self.ctx
        t_start = time.time()
        ctx.start_mlflow()
        self.run_id = ctx.run_id
        mlflow.log_params({k: v for k, v in list(flatten(c.model_dump(exclude={"pool": {"sources"}})).items())[:400]})
        ctx.open_pool()

        self.current_stage = "ingest"
        with P.stage("ingest"):
            data.ingest(ctx)
        label_names = data.label_names(ctx)
        ctx.open_labeler(label_names)

        self.current_stage = "baseline"
        with P.stage("baseline"):
            start_dir, start_version, trained = data.starting_model(ctx, label_names)
            test_inputs, test_targets = data.test_set(ctx)
            P.say(f"  starting model: {'champion v' + start_version if start_version else 'base ' + c.model.name}"
                  f" ({start_dir}); {len(test_inputs)} labelled test items")

        current = start_dir if trained else None
        history = []
        for r in range(1, c.selection.rounds + 1):
            self.current_stage = f"select[{r}]"
            with P.stage(f"select[{r}]"):
                chosen = select.select(ctx, current, r)
            self.current_stage = f"label[{r}]"
            with P.stage(f"label[{r}]"):
                lab = label.label(ctx, chosen, current, r, label_names)
            self.current_stage = f"train[{r}]"
            with P.stage(f"train[{r}]"):
                out = train.train(ctx, start_dir, r, label_names)
            current = out["model_dir"]
            history.append({"round": r, **lab, "steps": out["steps"], "final_loss": out["final_loss"],
                            "train_wall_s": out["wall_s"], "losses": [h["loss"] for h in out["history"]]})
        self.summary["rounds"] = [{k: v for k, v in h.items() if k != "losses"} for h in history]
        train.learning_curve(ctx, history)

        self.current_stage = "evaluate"
        with P.stage("evaluate"):
            base_eval, cand_eval = evaluate.evaluate(ctx, [start_dir, current], test_inputs, test_targets)
            mlflow.log_metrics({f"baseline.{k}": v for k, v in base_eval.items() if isinstance(v, (int, float))})
            mlflow.log_metrics({f"eval.{k}": v for k, v in cand_eval.items() if isinstance(v, (int, float))})
            m = cand_eval["metric"]
            P.say(f"  {m} on {cand_eval['n']} test items: starting model {base_eval[m]:.4f} → new model {cand_eval[m]:.4f};"
                  f" p99 {base_eval['p99_ms']:.1f} → {cand_eval['p99_ms']:.1f} ms")
        metric = cand_eval["metric"]
        self.summary["metric"] = {"name": metric, "before": base_eval[metric], "after": cand_eval[metric],
                                  "p99_ms_before": base_eval["p99_ms"], "p99_ms_after": cand_eval["p99_ms"]}

        self.current_stage = "decide"
        with P.stage("decide"):
            decision = evaluate.decide(ctx, base_eval, cand_eval, history[-1]["losses"])
            if decision.action == "deploy":
                self.summary["registered_version"] = deploy.register(ctx, current, start_version)
            P.say(f"  decision: [bold]{decision.action}[/bold] — {'; '.join(decision.reasons)}")
        self.summary["decision"] = decision.to_dict()

        self.current_stage = "serve"
        if c.serve.enabled:
            with P.stage("serve"):
                deploy.serve(ctx, test_inputs[:1])
        self.summary["stage_seconds"] = {k: round(v, 1) for k, v in P.times.items()}
        self.summary["wall_s"] = round(time.time() - t_start, 1)
        self.summary["data_version"] = ray.get(ctx.pool.version.remote())
        mlflow.log_dict(self.summary, "summary.json")
        mlflow.end_run()
        self.current_stage = "done"
        return self.summary

    # ------------------------------------------------------------------ end
    def print_summary(self, s: dict) -> None:
        from rich.table import Table

        t = Table(title=f"Flywheel iteration '{s['name']}' ({s['task']})", show_header=True)
        t.add_column("stage")
        t.add_column("seconds", justify="right")
        for k, v in s.get("stage_seconds", {}).items():
            t.add_row(k, f"{v:.1f}")
        self.prog.console.print(t)
        m = s.get("metric", {})
        for r in s.get("rounds", []):
            self.prog.say(f"round {r['round']}: {r['labels']} labels (auto {r['auto']}, review {r['review']}, "
                          f"QC {r['qc']}, oracle {r['oracle']}), {r['steps']} steps, loss {r['final_loss']:.4f}")
        self.prog.say(f"data version: v{s.get('data_version')}   MLflow run: {s.get('mlflow_run_id')}")
        self.prog.say(f"{m.get('name')}: {m.get('before', float('nan')):.4f} → {m.get('after', float('nan')):.4f}   "
                      f"p99 {m.get('p99_ms_before', 0):.1f} ms → {m.get('p99_ms_after', 0):.1f} ms")
        self.prog.say(f"decision: {s.get('decision', {}).get('action')}   endpoint: {s.get('endpoint', '(not serving)')}"
                      f"   total {s.get('wall_s')} s")

    def cleanup(self, keep_serving: bool = False) -> None:
        import mlflow

        if mlflow.active_run() is not None:  # the run stopped before the end: say so in MLflow
            mlflow.set_tag("flywheel.failed_stage", self.current_stage)
            mlflow.end_run(status="FAILED")
        if self.ctx.serving and not keep_serving:
            from ray import serve

            try:
                serve.delete(self.cfg.serve.app_name)
                if self.own:
                    serve.shutdown()
            except Exception:  # noqa: BLE001 - best effort on the way out; Ray shutdown follows
                pass
            self.ctx.serving = False
