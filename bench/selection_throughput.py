"""Throughput of scoring + selection (k-means diversity + MMR) over synthetic embeddings: Ray Data vs numpy.

    .venv/bin/python bench/selection_throughput.py [--n 1000000] [--budget 1000] [--variants numpy,engine,ray]

Data: n synthetic 384-d float32 embeddings (a mixture of 100 Gaussian blobs, unit noise) written as
npy shards, plus a random linear scoring head W (384 x 4). The pipeline, identical in output for every
variant: score each row (relevance = H(softmax(e W)) / log 4), k-means with k = budget clusters trained on
budget * 64 sampled rows (20 Lloyd iterations), assign every row to its nearest centroid and pick the row
nearest each centroid (budget picks), and greedy MMR (lam = 0.5, relevance as above, cosine) for budget picks.

Variants, each in its own subprocess so its peak memory can be measured (sum over its process tree):
  numpy   single process: all embeddings loaded into one array; scikit-learn KMeans (init="random",
          n_init=1, same sample, same iterations) + pairwise_distances_argmin_min; eager MMR (one
          float32 (n, d) @ (d,) product per pick, the textbook loop). BLAS/OpenMP use all cores.
  engine  app.selection engine in one process: shards memory-mapped, faiss k-means, one fused per-shard
          pass (score + assign), lazy MMR (exact, see app/selection/streaming.py).
  ray     the same engine with its per-shard passes on Ray Data (local Ray, 2 CPUs, 2 actors x 1 CPU).
rows/s = n / pipeline wall time (the numpy variant includes loading the shards; Python imports and Ray
start-up are reported separately, not counted). Writes bench/results/selection_throughput_<n>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_data(root: Path, n: int, d: int, shard_rows: int, seed: int) -> None:
    """Shards of a 100-blob Gaussian mixture; each shard seeded on its own so the data never sits in RAM."""
    from app.selection.shards import write_index, write_shard

    centers = np.random.default_rng(seed).standard_normal((100, d)).astype(np.float32)
    recs = []
    for s, start in enumerate(range(0, n, shard_rows)):
        r = np.random.default_rng([seed, s])
        m = min(shard_rows, n - start)
        x = centers[r.integers(100, size=m)] + r.standard_normal((m, d), dtype=np.float32)
        recs.append(write_shard(root, np.arange(start, start + m), x))
    write_index(root, recs)


def head(d: int, seed: int) -> np.ndarray:
    return (np.random.default_rng([seed, 99]).standard_normal((d, 4)) / np.sqrt(d)).astype(np.float32)


class Log:
    """Stage timings, flushed to the result file after each stage so a killed run still reports."""

    def __init__(self, path: Path, variant: str):
        self.path, self.doc, self.t = path, {"variant": variant, "stages": {}}, time.perf_counter()

    def stage(self, name: str, **extra) -> None:
        now = time.perf_counter()
        self.doc["stages"][name] = round(now - self.t, 3)
        self.doc.update(extra)
        self.t = now
        self.path.write_text(json.dumps(self.doc))


def run_numpy(root: Path, a, log: Log) -> dict:
    from scipy.special import softmax
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances_argmin_min

    from app.selection.shards import EmbeddingShards
    from app.selection.streaming import normalised_entropy

    log.stage("imports")
    sh = EmbeddingShards(root)
    x = np.concatenate([np.asarray(e) for _, e in sh.blocks()])  # rows were generated in order
    log.stage("load")
    rel = normalised_entropy(softmax((x @ head(a.dim, a.seed)).astype(np.float64), axis=1))
    log.stage("score")
    rng = np.random.default_rng(a.seed)
    sample = np.sort(rng.choice(a.n, size=min(a.n, a.budget * a.mppc), replace=False))
    km = KMeans(a.budget, init="random", n_init=1, max_iter=a.niter, tol=0.0, random_state=a.seed).fit(x[sample])
    log.stage("kmeans_train")
    cluster, dist = pairwise_distances_argmin_min(x, km.cluster_centers_)
    log.stage("kmeans_assign")
    sizes = np.bincount(cluster, minlength=a.budget)
    order = np.lexsort((dist, cluster))
    first = order[np.r_[True, cluster[order][1:] != cluster[order][:-1]]]
    rep = dict(zip(cluster[first].tolist(), first.tolist()))
    km_sel = [rep[c] for c in np.argsort(-sizes, kind="stable") if c in rep]  # empty clusters: no pick
    log.stage("kmeans_pick")
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    max_sim, avail, mmr_sel = np.zeros(a.n, dtype=np.float32), np.ones(a.n, bool), []
    for t in range(a.budget):
        i = int(np.argmax(np.where(avail, a.lam * rel - (1 - a.lam) * max_sim, -np.inf)))
        mmr_sel.append(i)
        avail[i] = False
        np.maximum(max_sim, u @ u[i], out=max_sim)
        if t % 50 == 49:
            log.doc["mmr_picks_done"], log.doc["mmr_elapsed_s"] = t + 1, round(time.perf_counter() - log.t, 1)
            log.path.write_text(json.dumps(log.doc))
    log.stage("mmr", mmr_picks_done=a.budget)
    return {"kmeans": km_sel, "mmr": mmr_sel, "mean_centroid_dist": float(dist.mean())}


def run_engine(root: Path, a, log: Log, run_blocks) -> dict:
    from app.selection.engine import nearest_free_row
    from app.selection.shards import EmbeddingShards
    from app.selection.streaming import kmeans_pick, lazy_mmr, train_centroids

    log.stage("imports")
    sh = EmbeddingShards(root)
    rng = np.random.default_rng(a.seed)
    sample = np.sort(rng.choice(a.n, size=min(a.n, a.budget * a.mppc), replace=False))
    cents = train_centroids(sh.take(sample), a.budget, a.seed, a.niter, a.mppc)
    log.stage("kmeans_train")
    cols = run_blocks(str(root), {"centroids": cents, "head_w": head(a.dim, a.seed)})  # one pass: score + assign
    log.stage("score_assign_pass")
    mask = np.ones(a.n, bool)
    km_sel, _ = kmeans_pick(cols["cluster"], cols["d2"], cents, mask, np.zeros((0, a.dim)),
                            lambda c, free: nearest_free_row(sh, cents[c], free))
    log.stage("kmeans_pick")
    mmr_sel, _, _, picks = lazy_mmr(sh.take, cols["relevance"], a.budget, a.lam, mask)
    log.stage("mmr")
    run_blocks(str(root), {"sim_to": picks})  # every row's MMR value after the last pick (the eager loop has it)
    log.stage("mmr_final_pass")
    return {"kmeans": km_sel, "mmr": mmr_sel, "mean_centroid_dist": float(np.sqrt(cols["d2"]).mean())}


def child(a) -> None:
    a.variant = a.child
    log = Log(Path(a.result), a.variant)
    root = Path(a.data)
    if a.variant == "numpy":
        out = run_numpy(root, a, log)
    elif a.variant == "engine":
        from app.selection.streaming import run_blocks_local

        out = run_engine(root, a, log, run_blocks_local)
    else:
        import functools

        import ray

        from actors.selection_engine import run_blocks_ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        log.stage("ray_init")
        out = run_engine(root, a, log, functools.partial(run_blocks_ray, concurrency=2, num_cpus=1.0))
        ray.shutdown()
    log.doc.update(out)
    log.path.write_text(json.dumps(log.doc))


def tree_memory(proc) -> dict[str, int]:
    """Sum of RssAnon / RssShmem / RssFile (bytes) over ``proc`` and its descendants (Ray workers included)."""
    import psutil

    tot = {"anon": 0, "shmem": 0, "file": 0}
    for p in [proc] + proc.children(recursive=True):
        try:
            for line in open(f"/proc/{p.pid}/status"):
                for key, name in (("RssAnon:", "anon"), ("RssShmem:", "shmem"), ("RssFile:", "file")):
                    if line.startswith(key):
                        tot[name] += int(line.split()[1]) * 1024
        except (OSError, psutil.Error):
            pass
    return tot


def measure(variant: str, data: Path, a, out_dir: Path) -> dict:
    import psutil

    res_path = out_dir / f"{variant}.json"
    cmd = [sys.executable, __file__, "--child", variant, "--data", str(data), "--result", str(res_path)] + [
        f"--{k}={getattr(a, k)}" for k in ("n", "dim", "budget", "mppc", "niter", "lam", "seed")]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    err = open(out_dir / f"{variant}.err", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    ps, peak = psutil.Process(proc.pid), {"anon": 0, "shmem": 0, "file": 0, "anon+shmem": 0}
    while proc.poll() is None:
        m = tree_memory(ps)
        m["anon+shmem"] = m["anon"] + m["shmem"]
        peak = {k: max(peak[k], m[k]) for k in peak}
        if time.perf_counter() - start > a.timeout:
            for p in ps.children(recursive=True) + [ps]:
                p.kill()
            break
        time.sleep(0.2)
    wall = time.perf_counter() - start
    rc = proc.wait()
    err.close()
    doc = json.loads(res_path.read_text()) if res_path.exists() else {"stages": {}}
    doc.update(rc=rc, wall_s=round(wall, 1), peak_mib={k: round(v / 2**20) for k, v in peak.items()},
               finished=proc.returncode == 0 and "mmr" in doc["stages"])
    pipeline = sum(v for k, v in doc["stages"].items() if k not in ("ray_init", "imports"))
    doc["pipeline_s"] = round(pipeline, 2)
    doc["rows_per_s"] = round(a.n / pipeline) if doc["finished"] else None
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--mppc", type=int, default=64, help="k-means training sample = budget * mppc rows")
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=32)
    ap.add_argument("--variants", default="ray,engine,numpy")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per variant before it is killed")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/selection_throughput_<n>.json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0
    with tempfile.TemporaryDirectory(prefix="fw-throughput-") as tmp:
        data, t0 = Path(tmp) / "emb", time.perf_counter()
        make_data(data, a.n, a.dim, -(-a.n // a.shards), a.seed)
        gen_s = time.perf_counter() - t0
        res = {v: measure(v, data, a, Path(tmp)) for v in a.variants.split(",")}
        errs = {v: (Path(tmp) / f"{v}.err").read_text()[-2000:] for v in res if res[v]["rc"] != 0}
    doc = {"n": a.n, "dim": a.dim, "budget": a.budget, "kmeans_sample": min(a.n, a.budget * a.mppc),
           "niter": a.niter, "lam": a.lam, "shards": a.shards, "generate_s": round(gen_s, 1),
           "pairwise_matrix_gib": round(a.n * a.n * 4 / 2**30, 1), "variants": res, "errors": errs,
           "machine": {"nproc": os.cpu_count(), "arch": platform.machine(), "loadavg": os.getloadavg()}}
    base = res.get("numpy", {})
    for v, r in res.items():
        if r.get("rows_per_s") and base.get("rows_per_s"):
            r["speedup_vs_numpy"] = round(r["rows_per_s"] / base["rows_per_s"], 2)
        if v != "numpy" and base.get("finished") and r.get("finished"):
            r["mmr_same_picks_as_numpy"] = sum(x == y for x, y in zip(r["mmr"], base["mmr"]))
            r["mmr_overlap_with_numpy"] = len(set(r["mmr"]) & set(base["mmr"]))
    if res.get("ray", {}).get("finished") and res.get("engine", {}).get("finished"):
        doc["ray_equals_engine"] = all(res["ray"][s] == res["engine"][s] for s in ("kmeans", "mmr"))
    for r in res.values():
        r.pop("kmeans", None), r.pop("mmr", None)
    out = a.out or ROOT / f"bench/results/selection_throughput_{a.n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
