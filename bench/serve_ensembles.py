"""Benchmark ensemble serving: quality vs cost per policy on the test split, then an HTTP load test.

    .venv/bin/python bench/serve_ensembles.py [--config jobs/configs/serve_demo.yaml] [--clients 8]
        [--requests 10] [--items 300] [--timed 100] [--out bench/results/serve_ensembles.json] [--skip-load]

Part 1 (offline, in this process): the members of the config (built and registered first if missing) are
calibrated and every policy is fitted on the val split, then scored on the test split: accuracy, mean and
p99 single-request latency, share of items escalated past one member. Latency of an item = the sum of the
measured single-text forward times of the members the policy needed for it (members called one after
another, as in a cascade), over the first `--timed` test items. Cascade runs at several accuracy targets;
a cost-accuracy plot goes to MLflow and next to the JSON.

Part 2 (HTTP): the endpoint is deployed on a private local Ray (2 CPUs, fractional replicas) with the weighted
policy, so every request reaches the expensive member; `--clients` threads each post `--requests` single texts
to 127.0.0.1, once with `@serve.batch` on the expensive member (max 16, 10 ms) and once without (max 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def single_text_seconds(member: dict, texts: list[str], torch_threads: int) -> np.ndarray:
    """(n,) seconds of one forward pass per text, one text at a time, with the replica's torch threads."""
    from app.serving.members import MemberModel

    model = MemberModel(member["dir"], torch_threads)
    model.forward(texts[:2])  # warm-up: first call allocates
    out = []
    for t in texts:
        t0 = time.perf_counter()
        model.forward([t])
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def offline(cfg, store, client, n_items: int, n_timed: int, prog) -> dict:
    from app.serving.data import load_labelled
    from app.serving.fitting import calibrate_members, evaluate_plan, fit_plan
    from jobs.serve_build import member_outputs, resolve_member

    data = load_labelled(cfg.data.sources, cfg.data.labels, cfg.data.split)
    val, test = data.val.head(cfg.data.max_val), data.test.head(n_items)
    members = [resolve_member(m, client, store, data, cfg.experiment, prog=prog) for m in cfg.members]
    v_out = [member_outputs(m, val.texts, store, "val") for m in members]
    t_out = [member_outputs(m, test.texts, store, "test") for m in members]
    prog(f"  timing single-text forward passes on {n_timed} test items ...")
    per_item = [single_text_seconds(m, test.texts[:n_timed], mc.torch_threads) for m, mc in zip(members, cfg.members)]
    for m, sec in zip(members, per_item):
        m["cost"] = float(sec.mean())
    from app.serving.calibration import apply_temperature, expected_calibration_error

    cal = calibrate_members([o[0] for o in v_out], val.labels, True, cfg.policy.ece_bins)
    for c, o in zip(cal, t_out):  # held-out check: the val temperature applied to the test split
        c["ece_test_before"] = expected_calibration_error(apply_temperature(o[0], 1.0), test.labels,
                                                          cfg.policy.ece_bins)
        c["ece_test_after"] = expected_calibration_error(apply_temperature(o[0], c["temperature"]), test.labels,
                                                         cfg.policy.ece_bins)
    names = [m["name"] for m in members]
    rows = []

    def score(label: str, plan: dict, idx: list[int]) -> None:
        """Score a plan whose members are members[idx[0]], members[idx[1]], ... ."""
        from app.serving.registry import load_policy

        outs = [t_out[i] for i in idx]
        ev = evaluate_plan(plan, [o[0] for o in outs], [o[1] for o in outs], test.labels)
        probs = [apply_temperature(o[0], m["temperature"]) for o, m in zip(outs, plan["members"])]
        used = load_policy(plan["policy"]).combine(probs, np.asarray(outs[plan["gate_member"]][1])).members_used
        if plan["policy"]["policy"] == "moe" and plan["policy"].get("mode") == "hard":
            used = [sorted({plan["gate_member"], *u}) for u in used]
        # latency of item j = sum of the single-text times of the members it needed (timed items only)
        lat = np.array([sum(per_item[idx[i]][j] for i in u) for j, u in enumerate(used[:n_timed])]) * 1000
        rows.append({"policy": label, "accuracy": ev["accuracy"], "mean_ms": float(lat.mean()),
                     "p99_ms": float(np.percentile(lat, 99)), "escalated": ev["escalated"],
                     "stage_share": ev["stage_share"]})

    for i, name in enumerate(names):
        solo = fit_plan([members[i]], [v_out[i][0]], [v_out[i][1]], val.labels, data.label_names, "weighted", {})
        score(f"{name} alone", solo, [i])
    both = dict(members=members, val_logits=[o[0] for o in v_out], val_embeddings=[o[1] for o in v_out],
                labels=val.labels, label_names=data.label_names, gate_member=cfg.gate_index())
    every = list(range(len(members)))
    score("weighted", fit_plan(policy_name="weighted", policy_params={}, **both), every)
    score("moe (soft)", fit_plan(policy_name="moe", policy_params={"mode": "soft"}, **both), every)
    score("moe (hard)", fit_plan(policy_name="moe", policy_params={"mode": "hard"}, **both), every)
    for target in (0.70, 0.75, 0.78, 0.80, 0.82, 0.85):
        score(f"cascade target {target:.2f}", fit_plan(policy_name="cascade",
                                                       policy_params={"target_accuracy": target}, **both), every)
    return {"n_val": len(val.texts), "n_test": len(test.texts), "n_timed": n_timed, "rows": rows,
            "calibration": [{"member": n, **c} for n, c in zip(names, cal)],
            "single_text_ms": {n: {"mean": float(s.mean() * 1000), "p99": float(np.percentile(s, 99) * 1000)}
                               for n, s in zip(names, per_item)}}


def load_test(cfg, store, uri, clients: int, per_client: int, texts: list[str], prog) -> list[dict]:
    import httpx
    import ray

    from app.serving.config import ServeEnsembleConfig
    from jobs.serve_up import down, up

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = []
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="flywheel", log_to_driver=False)
    try:
        for batching in (True, False):
            d = cfg.model_dump()
            d.update(name="bench", policy={**d["policy"], "name": "weighted", "params": {}},
                     http={**d["http"], "port": port, "auth_token_env": None, "member_timeout_s": 600.0},
                     canary={**d["canary"], "enabled": False}, traffic={**d["traffic"], "sample_rate": 0.0})
            for m in d["members"]:
                m["batch"] = {"max_batch_size": 16 if batching and m["name"] == d["members"][-1]["name"] else 1,
                              "wait_ms": 10.0 if batching else 0.0}
            c = ServeEnsembleConfig.model_validate(d)
            up(c, store, uri, prog=prog)
            url = f"http://127.0.0.1:{port}/predict"
            lat, codes, lock = [], [], threading.Lock()

            def client(i: int) -> None:
                with httpx.Client(timeout=600) as h:
                    for n in range(per_client):
                        t0 = time.perf_counter()
                        try:
                            code = h.post(url, json={"text": texts[(i * per_client + n) % len(texts)]}).status_code
                        except httpx.HTTPError as e:
                            code = type(e).__name__
                        with lock:
                            lat.append((time.perf_counter() - t0) * 1000)
                            codes.append(code)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            a = np.asarray(lat)
            results.append({"batching": batching, "clients": clients, "requests": len(codes),
                            "throughput_rps": len(codes) / wall, "p50_ms": float(np.percentile(a, 50)),
                            "p99_ms": float(np.percentile(a, 99)), "errors": sum(c != 200 for c in codes)})
            prog(f"  load test batching={batching}: {results[-1]}")
        down("bench")
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="jobs/configs/serve_demo.yaml")
    ap.add_argument("--items", type=int, default=300, help="test items scored offline")
    ap.add_argument("--timed", type=int, default=100, help="test items whose single-text latency is measured")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    ap.add_argument("--out", default="bench/results/serve_ensembles.json")
    ap.add_argument("--skip-load", action="store_true")
    a = ap.parse_args()
    from mlflow.tracking import MlflowClient

    from app.serving.config import load_serve_config
    from app.tracking import tracking_uri
    from jobs.common import set_offline_env, store_root

    set_offline_env()
    prog = (lambda m: print(m, file=sys.stderr, flush=True))
    cfg = load_serve_config(a.config)
    store = store_root(cfg.store)
    uri = tracking_uri(cfg.tracking_uri, store)
    client = MlflowClient(uri)
    t0 = time.time()
    res = {"command": " ".join(["python", *sys.argv]), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "load_avg_before": os.getloadavg()[0]}}
    out = ROOT / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    res["offline"] = offline(cfg, store, client, a.items, min(a.timed, a.items), prog)
    out.write_text(json.dumps(res, indent=2))  # part 1 is kept even if the load test is interrupted
    if not a.skip_load:
        from app.serving.data import load_labelled

        texts = load_labelled(cfg.data.sources, cfg.data.labels, cfg.data.split).test.texts
        res["load"] = load_test(cfg, store, uri, a.clients, a.requests, texts, prog)
    res["machine"]["load_avg_after"] = os.getloadavg()[0]
    res["wall_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(res, indent=2))
    _plot_and_log(res, client, cfg, store, out)
    print(_markdown(res))
    return 0


def _plot_and_log(res: dict, client, cfg, store, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from app.tracking import ensure_experiment

    rows = res["offline"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["mean_ms"], r["accuracy"], color="C1" if r["policy"].startswith("cascade") else "C0")
        ax.annotate(r["policy"].replace("cascade target ", "c"), (r["mean_ms"], r["accuracy"]), fontsize=7)
    ax.set_xlabel("mean single-request latency (ms)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Ensemble policies: cost vs accuracy")
    png = out.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(experiment_id=ensure_experiment(client, cfg.experiment, store), run_name="bench-serve"):
        mlflow.log_artifact(str(png), "plots")
        mlflow.log_dict(res, "serve_ensembles.json")
        for r in rows:
            key = r["policy"].replace(" ", "_").replace("(", "").replace(")", "")
            mlflow.log_metrics({f"{key}.accuracy": r["accuracy"], f"{key}.mean_ms": r["mean_ms"]})


def _markdown(res: dict) -> str:
    lines = ["| policy | test accuracy | mean latency | p99 latency | escalated |", "|---|--:|--:|--:|--:|"]
    for r in res["offline"]["rows"]:
        lines.append(f"| {r['policy']} | {r['accuracy']:.3f} | {r['mean_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
                     f"{r['escalated']:.1%} |")
    lines += ["", "| member | T (val) | ECE val before → after | ECE test before → after | val accuracy |",
              "|---|--:|--:|--:|--:|"]
    for c in res["offline"]["calibration"]:
        lines.append(f"| {c['member']} | {c['temperature']:.2f} | {c['ece_before']:.3f} → {c['ece_after']:.3f} | "
                     f"{c['ece_test_before']:.3f} → {c['ece_test_after']:.3f} | {c['val_accuracy']:.3f} |")
    if res.get("load"):
        lines += ["", "| batching | clients | requests | throughput | p50 | p99 | errors |",
                  "|---|--:|--:|--:|--:|--:|--:|"]
        for r in res["load"]:
            lines.append(f"| {'on' if r['batching'] else 'off'} | {r['clients']} | {r['requests']} | "
                         f"{r['throughput_rps']:.1f} req/s | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
                         f"{r['errors']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
