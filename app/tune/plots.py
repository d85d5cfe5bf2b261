"""Study figures (matplotlib, Agg): score over iterations per trial with PBT exploits marked, and a
parallel-coordinates plot of trial configs coloured by score."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot_curves(records: Sequence[Mapping[str, Any]], metric: str, out: str | Path) -> Path:
    """One line per trial: `metric` against training_iteration; each PBT exploit is a marker at the
    iteration where the trial took its donor's weights, labelled with the donor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for rec in records:
        pts = [(r["training_iteration"], r[metric]) for r in rec["history"]
               if metric in r and "training_iteration" in r]
        if not pts:
            continue
        xs, ys = zip(*pts)
        label = rec["trial_id"] + (" (errored)" if rec["status"] == "errored" else "")
        (line,) = ax.plot(xs, ys, marker=".", label=label)
        for e in rec.get("exploits", []):
            y = next((v for x, v in pts if x >= e["iteration"]), ys[-1])
            ax.scatter([e["iteration"]], [y], marker="*", s=140, color=line.get_color(), edgecolor="black", zorder=3)
            ax.annotate(f"<- {e['donor']}", (e["iteration"], y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (* = PBT exploit, copied from the named donor)")
    if len(records) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _axis(values: list[Any]) -> tuple[list[float], list[str]]:
    """Values of one key on [0, 1] (numbers min-max scaled, log-scaled when they span > 100x; categories
    evenly spaced) and tick labels for the bottom / top."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == len(values) and nums:
        use_log = min(nums) > 0 and max(nums) / min(nums) > 100
        t = [math.log(v) if use_log else float(v) for v in nums]
        lo, hi = min(t), max(t)
        scaled = [(x - lo) / (hi - lo) if hi > lo else 0.5 for x in t]
        return scaled, [f"{min(nums):.3g}", f"{max(nums):.3g}"]
    cats = sorted({str(v) for v in values})
    pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return [pos[str(v)] for v in values], [cats[0], cats[-1]]


def plot_parallel(trials: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Parallel coordinates: one polyline per scored trial over its config keys and the score, coloured by
    score (absent conditional keys are drawn as gaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [t for t in trials if t["score"] is not None]
    keys = sorted({k for t in scored for k in t["config"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * (len(keys) + 1)), 4))
    if scored:
        cols = {k: _axis([t["config"].get(k, "<absent>") for t in scored]) for k in keys}
        cols["score"] = _axis([t["score"] for t in scored])
        names = keys + ["score"]
        s_lo, s_hi = min(t["score"] for t in scored), max(t["score"] for t in scored)
        cmap = plt.get_cmap("viridis")
        for i, t in enumerate(scored):
            ys = [cols[k][0][i] if (k == "score" or k in t["config"]) else math.nan for k in names]
            c = cmap((t["score"] - s_lo) / (s_hi - s_lo) if s_hi > s_lo else 0.5)
            ax.plot(range(len(names)), ys, color=c, alpha=0.8)
        ax.set_xticks(range(len(names)), [f"{k}\n{cols[k][1][0]} .. {cols[k][1][1]}" for k in names], fontsize=7)
    ax.set_yticks([])
    ax.set_title("trial configs against score (colour = score)")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
