"""Label efficiency of selection strategies on SST-2: accuracy vs labels, MiniLM embeddings + a linear head.

    .venv/bin/python bench/selection_label_efficiency.py [--seeds 5] [--start 20 --step 20 --budget 400] \
        [--standardize]

Pool: data/sst2/alps_dev_first3000.tsv (3,000 labelled sentences whose labels are hidden until picked);
test: data/sst2/alps_test.tsv (872). Sentences are embedded once with all-MiniLM-L6-v2 (cached under
$TMPDIR/flywheel_bench). Every strategy starts from the same 20 random labels per seed, then each round
retrains a scikit-learn LogisticRegression (defaults: C=1, lbfgs; not tuned) on the labels so far, scores
the pool and asks ``app.selection.select`` for 20 more, up to 400. Reported: test accuracy per round
(mean over seeds), and for each strategy the labels it needs to reach the accuracy random sampling
reaches with all 400, as a fraction of 400. Writes bench/results/selection_label_efficiency.{json,png}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "entropy", "margin", "kmeans", "combined", "diverse_batch")


def load_sst2() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    import pandas as pd

    read = lambda p: pd.read_csv(ROOT / "data/sst2" / p, sep="\t", quoting=3)  # noqa: E731 (quoting=3: none)
    pool, test = read("alps_dev_first3000.tsv"), read("alps_test.tsv")
    return (pool["sentence"].astype(str).tolist(), pool["label"].to_numpy(),
            test["sentence"].astype(str).tolist(), test["label"].to_numpy())


def embeddings(texts: list[str]) -> np.ndarray:
    """MiniLM embeddings, computed once and cached by content hash (about 30 s on 2 busy cores)."""
    from app.selection.embed import embed_texts

    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "flywheel_bench" / f"minilm-{key}.npy"
    if cache.exists():
        return np.load(cache)
    x = embed_texts(texts, batch_size=64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, x)
    return x


def run_curve(strategy: str, seed: int, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray,
              schedule: list[int], hx: np.ndarray, hxt: np.ndarray) -> list[float]:
    """Test accuracy after each round of ``schedule`` (cumulative label counts) for one strategy and seed.

    x / xt: MiniLM embeddings (selection geometry); hx / hxt: the head's features (x itself, or standardised).
    """
    from sklearn.linear_model import LogisticRegression

    from app.selection import SelectionInput, select

    rng = np.random.default_rng(seed)
    labelled = rng.choice(len(x), size=schedule[0], replace=False)  # same cold start for every strategy
    accs = []
    for r, target in enumerate(schedule):
        if r:
            lr_probs = clf.predict_proba(hx)
            inp = SelectionInput(n=len(x), probs=lr_probs, embeddings=x, exclude=labelled)
            params = {"round_idx": r - 1, "total_rounds": len(schedule) - 1} if strategy == "combined" else {}
            res = select(strategy, inp, target - len(labelled), seed=seed * 1000 + r, **params)
            labelled = np.concatenate([labelled, res.selected])
        clf = LogisticRegression(max_iter=1000).fit(hx[labelled], y[labelled])
        accs.append(float((clf.predict(hxt) == yt).mean()))
    return accs


def labels_to_reach(schedule: list[int], mean_acc: np.ndarray, target: float) -> int | None:
    """First label count in the schedule whose mean accuracy is >= target (None: not reached)."""
    hit = np.flatnonzero(mean_acc >= target - 1e-12)
    return int(schedule[hit[0]]) if hit.size else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--start", type=int, default=20, help="random labels before the first selection")
    ap.add_argument("--step", type=int, default=20, help="labels added per round")
    ap.add_argument("--budget", type=int, default=400, help="total labels (random's full budget)")
    ap.add_argument("--standardize", action="store_true",
                    help="head features: z-score each dimension with the unlabelled pool's mean/std (no labels used)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/selection_label_efficiency[_std].json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    t0 = time.time()
    pool_texts, y, test_texts, yt = load_sst2()
    x_all = embeddings(pool_texts + test_texts)
    x, xt = x_all[: len(pool_texts)], x_all[len(pool_texts):]
    t_embed = time.time() - t0
    hx, hxt = x, xt
    if args.standardize:  # MiniLM rows are unit-norm (per-dim scale ~0.05), which C=1 regularises hard
        mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-8
        hx, hxt = (x - mu) / sd, (xt - mu) / sd
    out = args.out or ROOT / f"bench/results/selection_label_efficiency{'_std' if args.standardize else ''}.json"
    schedule = list(range(args.start, args.budget + 1, args.step))
    curves = {s: np.array([run_curve(s, seed, x, y, xt, yt, schedule, hx, hxt) for seed in range(args.seeds)])
              for s in STRATEGIES}
    from sklearn.linear_model import LogisticRegression

    full = float((LogisticRegression(max_iter=1000).fit(hx, y).predict(hxt) == yt).mean())
    target = float(curves["random"].mean(axis=0)[-1])
    summary = {}
    for s, acc in curves.items():
        need = labels_to_reach(schedule, acc.mean(axis=0), target)
        summary[s] = {"mean_acc": acc.mean(axis=0).round(4).tolist(), "std_acc": acc.std(axis=0).round(4).tolist(),
                      "labels_to_reach_random_full": need,
                      "ratio_to_random": None if need is None else round(need / args.budget, 3)}

    from app.selection.plots import learning_curve_png

    title = f"SST-2, MiniLM + logistic regression{' (standardised)' if args.standardize else ''}, {args.seeds} seeds"
    png = learning_curve_png({s: (schedule, a) for s, a in curves.items()}, out.with_suffix(".png"), title=title,
                             target=target)
    doc = {"standardize": args.standardize, "schedule": schedule, "seeds": args.seeds, "pool": len(x),
           "test": len(xt), "target_acc": target, "full_pool_acc": full, "strategies": summary,
           "png": str(png.relative_to(ROOT) if png.is_relative_to(ROOT) else png),
           "embed_s": round(t_embed, 1), "total_s": round(time.time() - t0, 1),
           "machine": {"nproc": os.cpu_count(), "arch": platform.machine()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"random at {args.budget} labels: {target:.4f}; all {len(x)} labels: {full:.4f}")
    print(f"| strategy | acc @ 100 | acc @ 200 | acc @ {args.budget} | labels to reach random@{args.budget} | ratio |")
    print("|---|---|---|---|---|---|")
    at = {b: schedule.index(b) for b in (100, 200, args.budget) if b in schedule}
    for s, v in summary.items():
        cells = [f"{v['mean_acc'][i]:.4f} ± {v['std_acc'][i]:.4f}" if i is not None else "-"
                 for i in (at.get(100), at.get(200), at.get(args.budget))]
        need = v["labels_to_reach_random_full"]
        print(f"| {s} | {' | '.join(cells)} | {need if need is not None else f'> {args.budget}'} | "
              f"{v['ratio_to_random'] if need is not None else '-'} |")
    print(f"wall: embed {doc['embed_s']} s, total {doc['total_s']} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
