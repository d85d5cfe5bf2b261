"""`python -m jobs.tune run` end to end on 2 CPUs: the real trainer (torch engine, tiny-bert) on shipped SST-2
rows, the result JSON contract, MLflow parent/child runs, refusing a reused study name, an errored trial that
does not stop the study, and PBT restoring the donor's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TASK = {"label_map": {"0": "negative", "1": "positive"}, "n_train": 32, "n_val": 16, "max_length": 16}


def _write(tmp: Path, study: dict) -> Path:
    p = tmp / f"{study['name']}.yaml"
    p.write_text(yaml.safe_dump(study))
    return p



def _printed_json(out: str) -> dict:
    """The result object `jobs.tune run` printed. Ray forwards actor output (an earlier test's Tuner actor,
    "(Tuner pid=...)") to the driver's stdout, so skip anything before the object and after it."""
    return json.JSONDecoder().raw_decode(out[out.index("{"):])[0]


def test_run_records_trials_mlflow_and_refuses_a_reused_name(ray_local, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.tune import main

    store = ray_local / "store"
    # grid over warmup_ratio: 0.0 trains; 1.5 breaks TrainerConfig (warmup_ratio < 1) inside the trial,
    # which must be recorded as errored while the study goes on
    cfg = _write(ray_local, {
        "name": "t-run", "store": str(store), "metric": "val_accuracy", "mode": "max", "num_samples": 1,
        "max_t": 2, "seed": 0, "task": TASK, "trainer": {"steps_per_iteration": 2},
        "space": {"learning_rate": {"type": "fixed", "value": 3.0e-3},
                  "warmup_ratio": {"type": "grid", "values": [0.0, 1.5]}},
        "search": {"type": "grid"}, "tracking": {"experiment": "tune-it"}})
    out = ray_local / "result.json"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    printed = _printed_json(capsys.readouterr().out)
    result = json.loads(out.read_text())
    assert printed == result
    assert list(result) == ["study", "scheduler", "search", "metric", "mode", "best", "trials", "total_iterations",
                            "warm_start_from"]
    assert (result["study"], result["scheduler"], result["search"]) == ("t-run", "random", "grid")
    by_warmup = {t["config"]["warmup_ratio"]: t for t in result["trials"]}
    ok, bad = by_warmup[0.0], by_warmup[1.5]
    assert bad["status"] == "errored" and "warmup_ratio" in bad["stop_reason"] and bad["iterations"] == 0
    assert ok["status"] == "finished" and ok["iterations"] == 2 and ok["stop_reason"] == "max_t"
    # accuracy over 16 validation rows is a multiple of 1/16
    assert 0.0 <= ok["score"] <= 1.0 and (ok["score"] * 16) == pytest.approx(round(ok["score"] * 16), abs=1e-4)
    assert result["best"] == {"trial_id": ok["trial_id"], "config": ok["config"], "score": ok["score"]}
    assert result["total_iterations"] == 2 + 0

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tune-it").experiment_id
    runs = client.search_runs([exp])
    parents = [r for r in runs if r.data.tags.get("flywheel.kind") == "tune_study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert {c.info.run_name for c in children} == {ok["trial_id"], bad["trial_id"]}
    good = next(c for c in children if c.info.run_name == ok["trial_id"])
    steps = [m.step for m in client.get_metric_history(good.info.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2] and good.data.tags["stop_reason"] == "max_t"
    assert next(c for c in children if c.info.run_name == bad["trial_id"]).info.status == "FAILED"
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"curves.png", "parallel_coordinates.png", "result.json"} <= arts
    assert json.loads(parents[0].data.tags["flywheel.task_features"])["log10_train_size"] == pytest.approx(
        1.50515, abs=1e-5)  # log10(32)

    # the same name again is refused before anything runs; --resume of an unknown study too
    assert main(["run", "--config", str(cfg)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg), "--resume", "other"]) == 2
    assert "does not match" in capsys.readouterr().err
    # an explicit --resume of the finished study restores it: no trial runs again, nothing is logged twice
    assert main(["run", "--config", str(cfg), "--resume", "t-run"]) == 0
    again = _printed_json(capsys.readouterr().out)
    assert again["trials"] == result["trials"] and again["best"] == result["best"]
    assert len([r for r in client.search_runs([exp]) if r.data.tags.get("flywheel.kind") == "tune_study"]) == 1


def test_pbt_exploited_trial_resumes_from_its_donors_checkpoint(ray_local):
    import torch

    from app.train import run_checkpoints as rc
    from app.tune.study import parse_study
    from jobs.tune_run import run_study

    cfg, space = parse_study({
        "name": "t-pbt", "store": str(ray_local / "store"), "metric": "val_loss", "mode": "min",
        "num_samples": 2, "max_t": 3, "seed": 1, "task": TASK, "trainer": {"steps_per_iteration": 2},
        "keep_checkpoints": 10,
        "space": {"learning_rate": {"type": "log_uniform", "low": 1.0e-4, "high": 3.0e-2},
                  "head_lr": {"type": "fixed", "value": 1.0e-3}},
        # synch: both members wait at each interval, so the exploit happens however slowly trials start
        "scheduler": {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                      "mutable": ["learning_rate"], "synch": True},
        "tracking": {"enabled": False}})
    result = run_study(cfg, space)
    d = ray_local / "store" / "studies" / "t-pbt"
    events = json.loads((d / "exploits.json").read_text())
    assert events, "with 2 trials and quantile 0.5 the worse trial exploits the better one"
    e = events[0]
    exploited = next(t for t in result["trials"] if t["trial_id"] == e["trial_id"])
    assert {"iteration": e["iteration"], "donor": e["donor"]} in exploited["exploited_from"]
    assert e["iteration"] >= 1 and e["donor"] != e["trial_id"]

    # the exploited trial's first checkpoint after it resumed from a donor checkpoint an exploit event handed
    # it (synch PBT also pauses and resumes trials from their own checkpoints, so that need not be the newest)
    ray_dir = ray_local / "store" / "ray" / "t-pbt"
    # Ray also writes pbt_policy_<trial id>.txt beside the trial directories
    trial_dir = next(p for p in ray_dir.iterdir() if p.is_dir() and e["trial_id"] in p.name)
    given = {ev["donor_checkpoint"]: ev for ev in events if ev["trial_id"] == e["trial_id"] and ev["donor_checkpoint"]}
    after_exploit = []
    for c in trial_dir.glob("checkpoint_*"):
        resumes = [ev for ev in json.loads((c / rc.EVENTS).read_text()) if ev["event"] == "resumed"]
        if resumes and resumes[-1]["from"] in given:
            after_exploit.append((rc.read_meta(c)["step"], str(c), resumes[-1]))
    table = [(c.name, rc.read_meta(c)["step"], [ev for ev in json.loads((c / rc.EVENTS).read_text())
                                                if ev["event"] in ("resumed", "skipped_checkpoint")])
             for c in sorted(trial_dir.glob("checkpoint_*"))]
    assert after_exploit, f"the exploited trial never resumed from a checkpoint PBT gave it: {given=} {table=}"
    _, final, last_resume = min(after_exploit)
    final = Path(final)
    ev = given[last_resume["from"]]
    donor_ckpt = Path(ev["donor_checkpoint"])
    assert ev["donor"] in donor_ckpt.parent.name  # the donor's own checkpoint directory
    donor_step, final_step = rc.read_meta(donor_ckpt)["step"], rc.read_meta(final)["step"]
    assert final_step == donor_step + 2  # one iteration (2 steps) trained after taking the donor's state
    # it continued the donor's run: its step records up to the donor's step are the donor's
    donor_hist = json.loads((donor_ckpt / rc.HISTORY).read_text())
    hist = json.loads((final / rc.HISTORY).read_text())
    assert [h["loss"] for h in hist[:donor_step]] == [h["loss"] for h in donor_hist]

    # replay: the real runner, resumed from the donor's checkpoint with the explored config, reaches the same
    # weights as the exploited trial did, so the trial started from the donor's weights and optimiser state
    from app.models.backbones import resolve as resolve_backbone
    from app.train.runner import Hooks, run
    from app.train.spec import TrainSpec
    from app.tune.task_data import load_rows
    from app.tune.trial_params import trainer_options
    from jobs.tune_trainable import fixed_trainer_options

    rows = load_rows(cfg.task, ROOT)
    start = str(resolve_backbone("tiny-bert", ray_local / "store" / "models"))
    fixed = fixed_trainer_options(cfg.model_dump())  # same step total, so the same LR schedule
    opts = trainer_options(ev["new_config"], cfg.param_mapping(), {}, fixed)
    spec = TrainSpec(task="classify", start_model=start, start_is_flywheel=False, base_name="tiny-bert",
                     label_names=rows.labels, inputs=rows.train_texts, targets=rows.train_labels, max_length=16,
                     trainer=opts)
    got = {}

    def keep(metrics, ckpt_dir, name):
        if ckpt_dir is not None:
            got[int(metrics["step"])] = rc.load_weights(ckpt_dir)

    torch.set_num_threads(1)  # as in the trial
    run(spec, Hooks(latest=lambda: donor_ckpt, report=keep, say=lambda m: None))
    want = rc.load_weights(final)
    assert set(got[donor_step + 2]) == set(want)
    for k, v in want.items():
        assert torch.allclose(got[donor_step + 2][k], v, atol=1e-6), k


def test_tuner_actor_runs_a_study_and_answers_status(ray_local):
    import ray

    from actors.tuner import NAME, NAMESPACE, get_or_create

    tuner = get_or_create(store=str(ray_local / "actor-store"))
    assert ray.get_actor(NAME, namespace=NAMESPACE) is not None  # named: other drivers find it
    study = {"name": "t-actor", "metric": "val_accuracy", "mode": "max", "num_samples": 1, "max_t": 1,
             "task": TASK, "trainer": {"steps_per_iteration": 2}, "tracking": {"enabled": False},
             "space": {"learning_rate": {"type": "fixed", "value": 3.0e-3}}}
    assert ray.get(tuner.start.remote(study, base_dir=str(ROOT))) == "t-actor"
    assert ray.get(tuner.status.remote("t-actor"))["state"] in ("running", "finished")
    result = ray.get(tuner.wait.remote("t-actor", 300))
    s = ray.get(tuner.status.remote("t-actor"))
    assert (s["state"], s["running"], s["finished"], s["errored"]) == ("finished", 0, 1, 0)
    assert s["best"] == result["best"] and s["total_iterations"] == 1
    with pytest.raises(ray.exceptions.RayTaskError, match="already exists"):
        ray.get(tuner.start.remote(study))
    assert ray.get(tuner.status.remote("never-ran")) == {"state": "unknown"}
    ray.kill(tuner)


def test_staged_study_runs_tpe_in_the_space_narrowed_around_stage1(ray_local, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.tune import main

    store = ray_local / "staged-store"
    # stage 1: grid over lr (2 trials, warm-up drawn at random); stage 2: TPE, 2 trials, in the narrowed space
    cfg = _write(ray_local, {
        "name": "t-staged", "store": str(store), "metric": "val_accuracy", "mode": "max", "num_samples": 1,
        "max_t": 1, "seed": 0, "task": TASK, "trainer": {"steps_per_iteration": 2, "reuse_actors": True},
        "space": {"learning_rate": {"type": "grid", "values": [1.0e-3, 1.0e-2]},
                  "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2}},
        "search": {"type": "grid"}, "staged": {"top_k": 1, "factor": 4, "num_samples": 2, "n_startup_trials": 1},
        "tracking": {"experiment": "tune-staged"}})
    assert main(["run", "--config", str(cfg)]) == 0
    result = _printed_json(capsys.readouterr().out)
    assert (result["study"], result["search"]) == ("t-staged", "staged:grid->tpe")
    assert [s["study"] for s in result["stages"]] == ["t-staged.stage1", "t-staged.stage2"]
    assert [t["stage"] for t in result["trials"]] == [1, 1, 2, 2]
    assert result["total_iterations"] == 4 == sum(s["total_iterations"] for s in result["stages"])
    stage1 = [t for t in result["trials"] if t["stage"] == 1]
    top = max(stage1, key=lambda t: t["score"])
    narrowed = result["narrowed"]
    assert narrowed["around"] == [top["config"]]
    # whichever lr won, the grid neighbours of it span the whole geometric grid [1e-3, 1e-2]
    assert narrowed["space"]["learning_rate"] == {"type": "log_uniform", "low": 1.0e-3, "high": 1.0e-2}
    wr = narrowed["space"]["warmup_ratio"]  # width 0.2 / 4, around the winner's warm-up, inside [0, 0.2]
    assert wr["high"] - wr["low"] == pytest.approx(0.05) and wr["low"] <= top["config"]["warmup_ratio"] <= wr["high"]
    for t in result["trials"][2:]:
        c = t["config"]
        assert 1.0e-3 <= c["learning_rate"] <= 1.0e-2 and wr["low"] <= c["warmup_ratio"] <= wr["high"]
    scored = [t for t in result["trials"] if t["score"] is not None]
    assert result["best"]["score"] == max(t["score"] for t in scored)

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tune-staged").experiment_id
    parents = {r.data.tags["flywheel.study"]: r for r in client.search_runs([exp])
               if r.data.tags.get("flywheel.kind") == "tune_study"}
    assert set(parents) == {"t-staged.stage1", "t-staged.stage2"}
    two = parents["t-staged.stage2"]
    assert two.data.tags["search"] == "tpe"
    assert two.data.tags["flywheel.narrowed_ranges"] == "\n".join(narrowed["log"])
    assert "narrowing.json" in {a.path for a in client.list_artifacts(two.info.run_id)}
