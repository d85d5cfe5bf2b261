"""Real merge demo: fine-tune one base on two classification tasks, merge (linear, TIES, Fisher), retention table.

    nice -n 10 .venv/bin/python bench/merge_demo.py [--steps 150] [--work /tmp/merge_demo] [--store .flywheel]

Base: all-MiniLM-L6-v2 (``app.models.backbones.resolve("minilm")``) with a 2-way classification head that
is initialised once (seed 0) and saved as ``base``, so both fine-tunes start from the same weights and their
task vectors share a base. Tasks, both from the shipped data/:
  - ``sst2``: SST-2 sentiment (train: ALPS dev rows, test: GLUE validation rows).
  - ``needs_input``: does an Alpaca-libre instruction refer to an input it is given ("Edit the given
    sentence ...") or stand alone ("Write a haiku ...")? Label = the row has a non-empty ``input``.
Classification heads are task-specific, so, as in the TIES paper's classification experiments, the merged
encoder is evaluated on task k with task k's own head (``classifier.*`` of the model fine-tuned on k).
Retention of a merge on task k = merged accuracy / accuracy of the model fine-tuned on k
(``app.merge.diagnostics.retention``); the combined score is the accuracy over both test sets.
Fisher merging uses the diagonal Fisher of each fine-tune (``app.merge.statistics.estimate_fisher``,
per-example gradients of the classification loss on training rows). Everything is logged to MLflow
(experiment ``merge_demo``, one run per merge) and written to bench/results/merge_demo.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = ("sst2", "needs_input")


def load_tasks(data: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, dict[str, list]]:
    """{task: {"train": [(text, label)], "test": [...]}} from the shipped SST-2 and Alpaca-libre files."""
    def tsv(path: Path) -> list[tuple[str, int]]:
        with open(path, newline="") as f:
            return [(r["sentence"].strip(), int(r["label"])) for r in csv.DictReader(f, delimiter="\t")]

    rng = random.Random(seed)
    sst_train, sst_test = tsv(data / "sst2/alps_dev_first3000.tsv"), tsv(data / "sst2/alps_test.tsv")
    rng.shuffle(sst_train)
    rng.shuffle(sst_test)
    rows = []
    for name in ("alpaca_libre_tasks_v1.jsonl", "alpaca_libre_tasks_v3.jsonl"):
        for line in open(data / "alpaca_libre" / name):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # the dataset has a few broken lines (see data/SOURCES.md)
            if r.get("status") == "ok" and r.get("instruction"):
                rows.append((r["instruction"].strip(), int(bool(str(r.get("input", "")).strip()))))
    rows = sorted(set(rows))
    rng.shuffle(rows)
    return {"sst2": {"train": sst_train[:n_train], "test": sst_test[:n_test]},
            "needs_input": {"train": rows[n_test:n_test + n_train], "test": rows[:n_test]}}


MAX_LENGTH = 32  # tokens per row: SST-2 sentences and Alpaca instructions are short; keeps the demo cheap


def batches(tok, rows, batch_size: int, max_length: int = MAX_LENGTH):
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        enc["labels"] = torch.tensor([y for _, y in chunk])
        yield dict(enc)


def finetune(model, tok, rows, steps: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Plain AdamW loop: ``steps`` updates on shuffled mini-batches; returns the loss per step."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses: list[float] = []
    order: list = []
    while len(losses) < steps:
        if len(order) < batch_size:
            order = list(rows)
            rng.shuffle(order)
        chunk, order = order[:batch_size], order[batch_size:]
        batch = next(batches(tok, chunk, batch_size))
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model, tok, rows) -> float:
    model.eval()
    right = 0
    for b in batches(tok, rows, 64):
        labels = b.pop("labels")
        right += int((model(**b).logits.argmax(-1) == labels).sum())
    return right / len(rows)


def with_head(model_dir: str, head_from: str):
    """Load ``model_dir`` and replace its ``classifier.*`` with those of ``head_from`` (task-specific heads)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    weights = load_file(str(Path(head_from) / "model.safetensors"))
    head = {k: v for k, v in weights.items() if k.startswith("classifier.")}
    missing = model.load_state_dict(head, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    return model


def merge(cfg: dict, out: Path) -> float:
    from app.merge.config import MergeConfig
    from app.merge.engine import run_merge
    from app.merge.plan import build_plan

    t0 = time.perf_counter()
    run_merge(build_plan(MergeConfig.model_validate(cfg)), out, overwrite=True, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/merge_demo", help="models and merges go here")
    p.add_argument("--data", default=str(ROOT / "data"), help="folder with sst2/ and alpaca_libre/")
    p.add_argument("--store", default=str(ROOT / ".flywheel"), help="run store holding the MLflow db and artifacts")
    p.add_argument("--steps", type=int, default=40, help="optimiser steps per task (batch 16)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument("--n-train", type=int, default=1000, help="training rows per task")
    p.add_argument("--n-test", type=int, default=200, help="test rows per task")
    p.add_argument("--fisher-samples", type=int, default=32, help="training rows for each diagonal Fisher")
    p.add_argument("--density", type=float, default=0.3, help="TIES density")
    p.add_argument("--out", default=str(ROOT / "bench/results/merge_demo.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.merge.diagnostics import retention
    from app.merge.statistics import estimate_fisher, save_stats
    from app.models.backbones import resolve

    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = resolve("minilm", work / "cache")
    tok = AutoTokenizer.from_pretrained(src)
    data = load_tasks(Path(args.data), args.n_train, args.n_test)
    base_dir = work / "base"
    torch.manual_seed(0)  # the same head initialisation for both fine-tunes
    base = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2, dtype=torch.float32)
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)

    ft_dirs, fisher_files, log = {}, {}, {"losses": {}}
    for i, task in enumerate(TASKS):
        model = AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=torch.float32)
        losses = finetune(model, tok, data[task]["train"], args.steps, args.lr, 16, seed=i)
        log["losses"][task] = [round(sum(losses[:10]) / 10, 4), round(sum(losses[-10:]) / 10, 4)]
        ft_dirs[task] = work / f"ft_{task}"
        model.save_pretrained(ft_dirs[task])
        tok.save_pretrained(ft_dirs[task])
        rows = data[task]["train"][: args.fisher_samples]
        fisher = estimate_fisher(model, batches(tok, rows, 1), loss_fn=lambda m, b: m(**b).loss)
        fisher_files[task] = str(save_stats(fisher, work / f"fisher_{task}.safetensors", "fisher"))
        print(f"fine-tuned {task}: loss {log['losses'][task]}", flush=True)
        del model

    sources = {k: str(v) for k, v in ft_dirs.items()}
    recipes = {
        "linear": {"merge_method": "linear", "models": [{"model": sources[t], "parameters": {"weight": 0.5}}
                                                        for t in TASKS]},
        "ties": {"merge_method": "ties", "base_model": str(base_dir),
                 "models": [{"model": sources[t], "parameters": {"weight": 1.0, "density": args.density}}
                            for t in TASKS]},
        "fisher": {"merge_method": "fisher", "models": [{"model": sources[t], "parameters": {
            "weight": 1.0, "fisher": fisher_files[t]}} for t in TASKS]},
    }
    models = {"base": str(base_dir), **{f"ft_{t}": sources[t] for t in TASKS}}
    merge_seconds = {}
    for name, cfg in recipes.items():
        merge_seconds[name] = round(merge(cfg, work / f"merged_{name}"), 2)
        models[f"merged_{name}"] = str(work / f"merged_{name}")

    scores: dict[str, dict[str, float]] = {}
    for label, path in models.items():
        scores[label] = {t: accuracy(with_head(path, sources[t]), tok, data[t]["test"]) for t in TASKS}
        n = {t: len(data[t]["test"]) for t in TASKS}
        scores[label]["combined"] = sum(scores[label][t] * n[t] for t in TASKS) / sum(n.values())
        print(f"{label}: {scores[label]}", flush=True)
    source = {t: scores[f"ft_{t}"][t] for t in TASKS}
    table = {}
    for label in models:
        r = retention({t: scores[label][t] for t in TASKS}, source)
        table[label] = {**{f"acc_{k}": round(v, 4) for k, v in scores[label].items()},
                        **{f"retention_{k}": round(v, 4) for k, v in r["per_task"].items()},
                        "retention_mean": round(r["mean"], 4)}

    result = {"base": "all-MiniLM-L6-v2 + 2-way head", "tasks": {t: {s: len(v) for s, v in data[t].items()}
                                                                  for t in TASKS},
              "steps": args.steps, "lr": args.lr, "max_length": MAX_LENGTH, "ties_density": args.density,
              "fisher_samples": args.fisher_samples,
              "train_loss_first10_last10": log["losses"], "merge_seconds": merge_seconds,
              "table": table, "seconds": round(time.perf_counter() - t_start, 1),
              "machine": "2 CPU cores shared with other developers"}
    log_mlflow(result, recipes, args.store)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(table, indent=1))


def log_mlflow(result: dict, recipes: dict, store: str) -> None:
    """One MLflow run per evaluated model (params: method / recipe; metrics: accuracies and retention)."""
    import mlflow

    from app.tracking import ensure_experiment, tracking_uri

    client = mlflow.MlflowClient(tracking_uri(None, store))
    exp = ensure_experiment(client, "merge_demo", store)
    for label, row in result["table"].items():
        run = client.create_run(exp, run_name=label, tags={"flywheel.kind": "merge_demo"})
        rid = run.info.run_id
        client.log_param(rid, "model", label)
        method = label.removeprefix("merged_")
        if method in recipes:
            client.log_param(rid, "merge_method", method)
            client.log_param(rid, "merge_seconds", result["merge_seconds"][method])
            client.log_text(rid, json.dumps(recipes[method], indent=2), "merge_config.json")
        for k, v in row.items():
            client.log_metric(rid, k, v)
        client.set_terminated(rid)


if __name__ == "__main__":
    main()
