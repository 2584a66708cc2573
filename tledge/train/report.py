"""A run's record: the one metrics writer (``metrics.csv`` rewritten after every epoch,
``curves.png`` at the end) and the pictures some runs add (confusion, feature maps)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class MetricsLog:
    """Rows of one run. ``fields``: the CSV columns in order (default: every key seen);
    ``losses`` and ``accuracies``: the columns plotted in the two panels of ``curves.png``.
    Only the main process writes (``write``)."""

    def __init__(self, run_dir: Path, fields: tuple[str, ...] = (),
                 losses: tuple[str, ...] = (), accuracies: tuple[str, ...] = (),
                 write: bool = True) -> None:
        self.run_dir, self.fields, self.write = run_dir, fields, write
        self.losses, self.accuracies = losses, accuracies
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append({k: row.get(k, "") for k in self.fields} if self.fields else row)
        if self.write:
            self._write_csv()

    def _write_csv(self) -> None:
        fields = self.fields or list(dict.fromkeys(k for r in self.rows for k in r))
        with open(self.run_dir / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows(self.rows)

    def finish(self, labels: dict[str, str] | None = None) -> None:
        if self.write and self.rows:
            plot_curves(self.rows, self.run_dir / "curves.png", self.losses, self.accuracies,
                        labels or {})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["epoch"] + 1, r[key]) for r in rows if r.get(key, "") != ""]


def plot_curves(rows: list[dict], path: Path, losses: tuple[str, ...],
                accuracies: tuple[str, ...], labels: dict[str, str]) -> None:
    """Losses (left) and accuracies (right) by epoch (0: before training)."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys in ((ax1, losses), (ax2, accuracies)):
        for key in keys:
            pts = _points(rows, key)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=labels.get(key, key.replace("_", " ")))
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    ax1.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax2.set(xlabel="epoch (0: before training)", ylabel="accuracy", ylim=(0, 1),
            title=labels.get("title", "Validation"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    plt = _pyplot()
    norm = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(5, min(16, 0.3 * len(classes) + 3))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 60:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Validation confusion (best epoch)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pca2(x: np.ndarray) -> np.ndarray:
    """(n, dim) -> (n, 2) on the two main axes of ``x``."""
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_feature_maps(before: dict, after: dict, classes: list[str], path: Path) -> None:
    """Source and target features on their first two principal axes, before and after.

    Each dict has ``source`` (n, dim), ``source_labels`` and ``target`` (m, dim), and
    ``target_labels`` when the target's labels were given for evaluation.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    cmap = plt.get_cmap("tab10")
    for ax, feats, title in ((axes[0], before, "before adaptation"),
                             (axes[1], after, "after adaptation")):
        xs = [feats["source"].numpy(), feats["target"].numpy()]
        xs = [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in xs]
        pts = _pca2(np.concatenate(xs))
        ps, pt = pts[:len(xs[0])], pts[len(xs[0]):]
        tl = feats.get("target_labels")
        ax.scatter(*pt.T, s=10, marker="x", alpha=0.6,
                   c=[cmap(i % 10) for i in tl] if tl is not None else "0.4")
        ax.scatter(*ps.T, s=14, marker="o", alpha=0.7, edgecolors="none",
                   c=[cmap(i % 10) for i in feats["source_labels"]])
        ax.set(title=f"{title}: ● source, × target", xticks=[], yticks=[])
    handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i % 10), label=c)
               for i, c in enumerate(classes[:10])]
    fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=8)
    fig.suptitle("Pooled features, first two principal components (colour: class)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
