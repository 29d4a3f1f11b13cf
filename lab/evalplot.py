"""The PNG of ``latentguard eval``: ROC curves of every rule and probe, and score histograms per
label, so a reader sees where a threshold sits and how the classes overlap, not only AUROC."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot"]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp, fp = np.cumsum(y == 1), np.cumsum(y == 0)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    n_pos, n_neg = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    return np.r_[0.0, fp[last] / n_neg], np.r_[0.0, tp[last] / n_pos]


def plot(out: str | Path, detectors: Mapping[str, Sequence[float]], labels: Sequence[int],
         aurocs: Mapping[str, float | None]) -> Path:
    """ROC curves (one panel) and a histogram per detector (positives vs negatives)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(labels)
    names = list(detectors)
    cols = 3
    rows = 1 + math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    roc = axes[0][0]
    for name in names:
        s = np.nan_to_num(np.asarray(detectors[name], dtype=np.float64), neginf=-1e300)
        fpr, tpr = roc_curve(s, y)
        a = aurocs.get(name)
        roc.plot(fpr, tpr, label=f"{name} ({a:.3f})" if a is not None else name)
    roc.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    roc.set(xlabel="FPR", ylabel="recall", title="ROC (AUROC)")
    roc.legend(fontsize=7, loc="lower right")
    for ax in axes[0][1:]:
        ax.axis("off")
    for k, name in enumerate(names):
        ax = axes[1 + k // cols][k % cols]
        s = np.asarray(detectors[name], dtype=np.float64)
        s = s[np.isfinite(s)] if np.isfinite(s).any() else np.zeros(1)
        finite = np.isfinite(np.asarray(detectors[name], dtype=np.float64))
        bins = np.histogram_bin_edges(s, bins=30)
        for label, colour in ((0, "tab:blue"), (1, "tab:red")):
            vals = np.asarray(detectors[name], dtype=np.float64)[(y == label) & finite]
            ax.hist(vals, bins=bins, alpha=0.55, color=colour, label=f"label {label}")
        ax.set(title=name, xlabel="max score per text", ylabel="texts")
        ax.legend(fontsize=7)
    for k in range(len(names), (rows - 1) * cols):
        axes[1 + k // cols][k % cols].axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
