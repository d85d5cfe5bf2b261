"""Soak run of the long-lived flywheel: three Controller iterations, new data between them, one fault each.

    nice -n 10 .venv/bin/python bench/soak.py [--out bench/results/soak.json] [--rows 120] [--no-faults]

Two runs in one command, each in its own local Ray: a fault-free baseline, then the faulted run; the result
holds both and their ratios (faulted / baseline wall time per iteration, total wall and CPU time), so the
cost of recovery is read against the same machine load. ``--no-faults`` runs the baseline only.

One isolated local Ray (2 CPUs). The source TSV starts with ``--rows`` SST-2 rows; before iterations
2 and 3 another ``--rows`` are appended, so the volume trigger (``min_new_items = rows // 2``) fires.
Faults, one per iteration, each injected once the iteration reaches ``train``:

1. kill the Controller actor (Ray restarts it; it resumes at ``train`` from disk)
2. SIGKILL training worker rank 0 by pid (``<ckpt_root>/workers/rank_0.pid``; Ray Train restarts the
   worker group from the newest checkpoint, ``trainer.max_failures = 1``)
3. kill the Labeler actor (Ray restarts it; it reloads its SQLite store; no label may be lost)

Recovery time: from the kill until the victim answers again (Controller: a status call from the
restarted actor; worker: a new pid in ``rank_0.pid``; Labeler: a ``counts`` call). Iteration time:
``iteration_end.wall_s`` of the controller's event log (the restarted incarnation's share for
iteration 1, which also contains the redone ``train``), plus the driver's wall clock from ``start``.
The machine is shared with other developers: times are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SRC = ROOT / "data" / "sst2" / "alps_dev_first3000.tsv"
BUDGET = 24


def _config(tmp: Path, source: Path, rows: int) -> Path:
    cfg = f"""
name: soak
task: classify
store: {tmp / 'home'}
pool:
  sources:
    - {{path: {source}, fields: {{text: sentence, label: label}}, label_role: gold,
        label_map: {{"0": negative, "1": positive}}}}
  labels: [negative, positive]
model: {{name: tiny-bert, max_length: 32}}
selection: {{strategy: entropy, budget: {BUDGET}, rounds: 1, concurrency: 1}}
labeler: {{threshold: 0.5, qc_fraction: 0.0}}
trainer: {{engine: torch, num_workers: 1, cpus_per_worker: 1.0, epochs: 3, micro_batch_size: 4, checkpoint_every: 2,
           report_every: 1, max_failures: 1}}
eval: {{max_items: 20, latency_samples: 5, gate: {{min_gain: -1.0, latency_tolerance: 1000, target: 0.0}}}}
serve: {{enabled: false}}
tracking: {{experiment: soak, registered_model: soak-model}}
ray: {{address: local, dashboard: false, num_cpus: 2}}
controller:
  poll_seconds: 0.5
  triggers: {{min_new_items: {rows // 2}, max_wait_hours: 0, degradation_threshold: null, policy: seed}}
"""
    p = tmp / "soak.yaml"
    p.write_text(cfg)
    return p


def _append_rows(source: Path, lines: list[str], start: int, count: int) -> None:
    """Append data rows [start, start + count) of the SST-2 TSV (header written on first use)."""
    with open(source, "a") as f:
        if start == 0:
            f.write(lines[0])
        f.writelines(lines[1 + start: 1 + start + count])


def _wait(fn, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def _cpu_s() -> float:
    """User + sys CPU seconds of this process and its reaped children (the Ray processes, after shutdown)."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    ap.add_argument("--rows", type=int, default=120, help="source rows at start and appended before iterations 2, 3")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed per iteration")
    ap.add_argument("--no-faults", action="store_true", help="only the fault-free baseline run")
    args = ap.parse_args()
    lines = SRC.read_text().splitlines(keepends=True)
    if len(lines) < 1 + 3 * args.rows:
        print(f"--rows {args.rows}: the source has only {len(lines) - 1} rows", file=sys.stderr)
        return 2
    runs = {}
    for mode in (("baseline",) if args.no_faults else ("baseline", "faults")):
        t0, c0, load0 = time.time(), _cpu_s(), os.getloadavg()
        runs[mode] = _run(args, lines, faults=mode == "faults")
        runs[mode].update(wall_s=round(time.time() - t0, 1), cpu_s=round(_cpu_s() - c0, 1),
                          loadavg_start=[round(x, 1) for x in load0],
                          loadavg_end=[round(x, 1) for x in os.getloadavg()])
        print(json.dumps({mode: {k: runs[mode][k] for k in ("ok", "wall_s", "cpu_s", "loadavg_end")}}), flush=True)
    ok = all(r["ok"] for r in runs.values())
    out = {"ok": ok, "runs": runs, "rows_per_arrival": args.rows,
           "machine": f"{platform.node()} {os.cpu_count()} CPUs, shared with other developers (timings noisy)",
           "command": "nice -n 10 .venv/bin/python bench/soak.py" + (" --no-faults" if args.no_faults else "")}
    if "faults" in runs and ok:
        b, f = runs["baseline"], runs["faults"]
        out["ratios"] = {  # faulted / fault-free, same command: the cost of recovering
            "total_wall": round(f["wall_s"] / b["wall_s"], 2), "total_cpu": round(f["cpu_s"] / b["cpu_s"], 2),
            "iteration_wall": {r["kind"]: round(r["iteration_wall_s"] / rb["iteration_wall_s"], 2)
                               for r, rb in zip(f["iterations"], b["iterations"])}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({"ok": ok, "out": args.out, "ratios": out.get("ratios")}))
    return 0 if ok else 1


def _run(args, lines: list[str], faults: bool) -> dict:
    """One soak run in its own local Ray: three iterations, new data before 2 and 3, one fault each if ``faults``."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    from app.controller.config import load_flywheel_config
    from jobs.common import set_offline_env
    from jobs.flywheel import get_or_create

    tmp = Path(tempfile.mkdtemp(prefix="flywheel-soak-"))
    source = tmp / "arriving.tsv"
    _append_rows(source, lines, 0, args.rows)
    set_offline_env()
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    cfg, ccfg = load_flywheel_config(_config(tmp, source, args.rows))
    home = Path(cfg.store)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "ray"), namespace="flywheel",
             runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
    results = []
    try:
        ctl = get_or_create(cfg, ccfg, home, own=True)

        def status():
            try:
                return ray.get(ctl.status.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                return None

        for it in (1, 2, 3):
            if it > 1:
                _append_rows(source, lines, (it - 1) * args.rows, args.rows)  # new data arrives
            t0 = time.time()
            ray.get(ctl.start.remote(1))
            if faults:  # the baseline is not polled for train: a short stage could pass between two polls
                _wait(lambda: (s := status()) and s["iteration"] == it and s["current_stage"] == "train",
                      args.timeout, f"iteration {it} to reach train")
            fault: dict = {"iteration": it, "kind": "none"}
            if not faults:
                pass
            elif it == 1:
                _wait(lambda: any((home / "ray_results").rglob("checkpoint_*")), 120, "a checkpoint", 0.2)
                tk = time.time()
                ray.kill(ctl, no_restart=False)
                _wait(lambda: (s := status()) and s["restarted"], 300, "the restarted Controller", 0.2)
                fault.update(kind="kill Controller", recovery_s=round(time.time() - tk, 2))
            elif it == 2:
                pidf = _wait(lambda: next(iter(sorted(home.glob(f"ray_results/*-iter{it:04d}-*/workers/rank_0.pid"))), None),
                             300, "the training worker's pid file", 0.2)
                pid = int(_wait(lambda: pidf.read_text().strip(), 30, "a pid"))
                tk = time.time()
                os.kill(pid, signal.SIGKILL)
                _wait(lambda: (x := pidf.read_text().strip()) and x != str(pid), 300, "a new training worker", 0.2)
                fault.update(kind="SIGKILL training worker rank 0", pid=pid, recovery_s=round(time.time() - tk, 2))
            else:
                lab = ray.get_actor(f"Labeler:{cfg.name}", namespace=cfg.ray.namespace)
                before = ray.get(lab.counts.remote())
                tk = time.time()
                ray.kill(lab, no_restart=False)

                def counts():
                    try:
                        return ray.get(lab.counts.remote(), timeout=30)
                    except (RayActorError, GetTimeoutError):
                        return None

                after = _wait(counts, 300, "the restarted Labeler", 0.2)
                fault.update(kind="kill Labeler", recovery_s=round(time.time() - tk, 2),
                             labels_before=before["final_source"], labels_after=after["final_source"])
            final = _wait(lambda: (s := status()) and s["state"] in ("stopped", "failed") and s, args.timeout,
                          f"iteration {it} to finish")
            events = ray.get(ctl.events.remote(10_000))
            ends = [e for e in events if e["event"] == "iteration_end" and e["iteration"] == it]
            trig = [e for e in events if e["event"] == "trigger"][-1]
            done = json.loads((home / "controller" / cfg.name / "state.json").read_text())["state"]["completed"]
            results.append({**fault, "state": final["state"], "iteration_status": final["iteration_status"],
                            "completed_stages": final["completed_stages"], "decision": (final["last_decision"] or {}).get("action"),
                            "pool_version": final["pool_version"], "trigger_reasons": trig["reasons"],
                            "iteration_wall_s": round(time.time() - t0, 1),
                            "controller_iteration_s": ends[-1]["wall_s"] if ends else None,
                            "selection_used_failures_of": (done.get("select") or {}).get("failures_file"),
                            "evaluate_feedback": (done.get("evaluate") or {}).get("feedback"),
                            "error": final.get("error")})
            print(json.dumps(results[-1]), flush=True)
            if final["state"] == "failed" or final["iteration_status"] != "idle":
                break
    finally:
        ray.shutdown()
    ok = len(results) == 3 and all(r["iteration_status"] == "idle" and r["state"] == "stopped" for r in results)
    return {"ok": ok, "faults": faults, "iterations": results, "store": str(tmp)}

if __name__ == "__main__":
    raise SystemExit(main())
