"""faiss k-means vs scikit-learn KMeans on the same data: wall time and inertia.

    .venv/bin/python bench/kmeans_faiss_vs_sklearn.py [--seeds 3]

Data sets: SST-2 MiniLM embeddings (3,872 x 384, cached by bench/selection_label_efficiency.py, else
computed), and synthetic 384-d Gaussian-blob mixtures (as in bench/selection_throughput.py). Methods:
  faiss          faiss.Kmeans, random init, 20 iterations (what app.selection's kmeans uses)
  sklearn-same   sklearn KMeans(init="random", n_init=1, max_iter=20, tol=0): the same algorithm budget
  sklearn-default sklearn KMeans() defaults: k-means++ init, up to 300 iterations, tol=1e-4
sklearn-default runs on the SST-2 sets only. Inertia = sum over all rows of the squared distance to the
nearest centroid, computed the same way (float64) for every method, on the full data. Both libraries use
all cores. Writes bench/results/kmeans_faiss_vs_sklearn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def inertia(x: np.ndarray, c: np.ndarray) -> float:
    """sum_i min_j ||x_i - c_j||^2 in float64 (exact nearest via faiss, distance recomputed in float64)."""
    from app.selection.ranking import nearest_sqdist

    return float(nearest_sqdist(x.astype(np.float64), c.astype(np.float64)).sum())


def fit(method: str, x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, float, int]:
    """Centroids, wall seconds and iterations run."""
    t = time.perf_counter()
    if method == "faiss":
        import faiss

        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, verbose=False,
                          max_points_per_centroid=x.shape[0], min_points_per_centroid=1)  # no subsampling
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        return km.centroids, time.perf_counter() - t, 20
    from sklearn.cluster import KMeans

    kw = dict(init="random", n_init=1, max_iter=20, tol=0.0) if method == "sklearn-same" else {}
    km = KMeans(k, random_state=seed, **kw).fit(x)
    return km.cluster_centers_, time.perf_counter() - t, int(km.n_iter_)


def blobs(n: int, d: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    centers = r.standard_normal((100, d)).astype(np.float32)
    return centers[r.integers(100, size=n)] + r.standard_normal((n, d), dtype=np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/kmeans_faiss_vs_sklearn.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from selection_label_efficiency import embeddings, load_sst2

    pool, _, test, _ = load_sst2()
    sst = embeddings(pool + test)
    both = ("faiss", "sklearn-same")
    # sklearn defaults (k-means++, up to 300 iterations) only on the real data: on the synthetic sets one
    # fit takes many minutes on 2 shared cores; the synthetic sets get one seed for the same reason
    sets = [("sst2-minilm", sst, 20, both + ("sklearn-default",), a.seeds),
            ("sst2-minilm", sst, 100, both + ("sklearn-default",), a.seeds),
            ("blobs-100k", blobs(100_000, 384, 0), 100, both, 1), ("blobs-64k", blobs(64_000, 384, 1), 1000, both, 1)]
    rows = []
    for name, x, k, methods, seeds in sets:
        for method in methods:
            runs = [fit(method, x, k, s) for s in range(seeds)]
            row = {"data": name, "n": int(x.shape[0]), "d": int(x.shape[1]), "k": k, "method": method,
                   "seeds": seeds, "time_s": round(float(np.mean([r[1] for r in runs])), 3),
                   "inertia": float(np.mean([inertia(x, r[0]) for r in runs])),
                   "iters": float(np.mean([r[2] for r in runs]))}
            rows.append(row)
            print(json.dumps(row), flush=True)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps({"rows": rows, "partial": True}, indent=1))  # survives a kill
    for r in rows:
        ref = next(f for f in rows if f["data"] == r["data"] and f["k"] == r["k"] and f["method"] == "faiss")
        r["time_vs_faiss"] = round(r["time_s"] / ref["time_s"], 2)
        r["inertia_vs_faiss"] = round(r["inertia"] / ref["inertia"], 4)
    doc = {"rows": rows, "machine": {"nproc": os.cpu_count(), "arch": platform.machine(),
                                     "loadavg": os.getloadavg()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1))
    print("| data | n x d | k | method | time (s) | x faiss | inertia / faiss | iterations |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['n']} x {r['d']} | {r['k']} | {r['method']} | {r['time_s']} | "
              f"{r['time_vs_faiss']} | {r['inertia_vs_faiss']} | {r['iters']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
