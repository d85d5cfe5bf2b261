"""PNG plots for selection: a 2-D map of pool vs selected rows, and accuracy-vs-labels learning curves.

Both save a file and, when an MLflow run is active, log it as an artifact under ``plots/``.
matplotlib (Agg backend) and mlflow are imported inside the functions.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np


def pca_2d(fit_rows: np.ndarray, *rows: np.ndarray) -> list[np.ndarray]:
    """Fit a 2-component PCA on ``fit_rows`` (m, d) and project it and each extra (k, d) array to (., 2).

    PCA keeps the two directions of largest variance: x -> (x - mean) V_2, with V_2 the top-2 right singular
    vectors of the centred (m, d) matrix (``numpy.linalg.svd``; signs fixed so each axis's largest loading
    is positive, as scikit-learn's ``svd_flip`` does). A linear, deterministic view: unlike t-SNE, distances
    along the axes mean the same everywhere. numpy rather than sklearn.decomposition.PCA only to skip a
    multi-second import for what is one SVD.
    """
    fit_rows = np.asarray(fit_rows, dtype=np.float64)
    if fit_rows.ndim != 2 or fit_rows.shape[0] < 2:
        raise ValueError(f"pca_2d needs an (m >= 2, d) array to fit, got shape {fit_rows.shape}")
    mean = fit_rows.mean(axis=0)
    _, _, vt = np.linalg.svd(fit_rows - mean, full_matrices=False)
    v = vt[:2].T  # (d, <=2)
    v = v * np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    if v.shape[1] < 2:  # d == 1: put everything on the x axis
        v = np.c_[v, np.zeros(v.shape[0])]
    return [(np.asarray(r, dtype=np.float64).reshape(-1, fit_rows.shape[1]) - mean) @ v for r in (fit_rows, *rows)]


def log_png(path: Path) -> bool:
    """Log ``path`` to the active MLflow run under ``plots/``; False (and no error) when none is active."""
    if "mlflow" not in sys.modules:  # nothing imported mlflow, so no run can be active; skip the import
        return False
    import mlflow

    if mlflow.active_run() is None:
        return False
    mlflow.log_artifact(str(path), "plots")
    return True


def selection_map_png(take: Callable[[np.ndarray], np.ndarray], n: int, selected: Sequence[int],
                      path: str | Path, title: str = "selection map", exclude: Sequence[int] | None = None,
                      max_points: int = 20_000, seed: int = 0) -> Path:
    """Scatter of the pool (grey), already-labelled rows (blue) and selected rows (red, numbered by pick order
    for the first 20) on the pool's first two principal components.

    Args:
        take: rows (m,) -> (m, d) embeddings, e.g. ``EmbeddingShards.take`` or ``x.__getitem__``.
        n: pool size; a uniform sample of at most ``max_points`` rows is drawn (and fits the PCA), so a
            million-row pool plots in seconds.
        selected: picked rows; exclude: labelled rows (optional).
        path: where to save the PNG (parent dirs are created).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = np.asarray(selected, dtype=np.int64)
    if sel.size and (sel.min() < 0 or sel.max() >= n):
        raise ValueError(f"selected rows must be in [0, {n}); got range [{sel.min()}, {sel.max()}]")
    rng = np.random.default_rng(seed)
    pool = np.arange(n) if n <= max_points else np.sort(rng.choice(n, size=max_points, replace=False))
    excl = np.asarray(exclude if exclude is not None else [], dtype=np.int64)
    p_pool, p_sel, p_ex = pca_2d(take(pool), take(sel), take(excl))
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(p_pool[:, 0], p_pool[:, 1], s=3, c="0.75", label=f"pool ({n:,} rows"
               + (f", {pool.size:,} shown)" if pool.size < n else ")"), rasterized=True)
    if p_ex.shape[0]:
        ax.scatter(p_ex[:, 0], p_ex[:, 1], s=10, c="tab:blue", label=f"labelled ({excl.size})")
    ax.scatter(p_sel[:, 0], p_sel[:, 1], s=16, c="tab:red", edgecolors="k", linewidths=0.3,
               label=f"selected ({sel.size})")
    for r, (px, py) in enumerate(p_sel[:20]):
        ax.annotate(str(r + 1), (px, py), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8, markerscale=2)
    return _save(fig, path)


def learning_curve_png(curves: Mapping[str, tuple[Sequence[float], np.ndarray]], path: str | Path,
                       title: str = "accuracy vs labels", target: float | None = None,
                       ylabel: str = "test accuracy") -> Path:
    """Accuracy-vs-labels curves, one line per strategy: mean over seeds with a +-1 std band.

    Args:
        curves: strategy -> (label counts (R,), accuracies (S, R) for S seeds, or (R,) for one run).
        path: where to save the PNG.
        target: draw a dashed horizontal line here (e.g. random's accuracy at its full budget).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (labels, acc) in curves.items():
        acc = np.atleast_2d(np.asarray(acc, dtype=np.float64))
        x = np.asarray(labels, dtype=np.float64)
        if acc.shape[1] != x.size:
            raise ValueError(f"curve {name!r}: {x.size} label counts but accuracies of shape {acc.shape}")
        mean, std = acc.mean(axis=0), acc.std(axis=0)
        (line,) = ax.plot(x, mean, label=f"{name} (n={acc.shape[0]})", lw=1.5)
        if acc.shape[0] > 1:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    if target is not None:
        ax.axhline(target, ls="--", c="k", lw=0.8, label=f"target {target:.3f}")
    ax.set_xlabel("labelled examples")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (parents created), close it, and log it to the active MLflow run if any."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log_png(path)
    return path
