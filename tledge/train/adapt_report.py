"""An adaptation run's record: metrics.csv, curves.png and the 2-D feature picture."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tledge.train.report import _pyplot

FIELDS = ("epoch", "loss", "cls_loss", "align_loss", "disc_accuracy", "source_val_accuracy",
          "target_im", "target_accuracy", "target_ncm_accuracy", "seconds")
_SCORE = {"im": "target_im", "source": "source_val_accuracy"}


class AdaptLog:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.rows: list[dict] = []

    def add(self, row: dict, select: str | None = None) -> bool:
        """Record an epoch; True when ``select`` ('im', 'source', 'last') prefers it."""
        row = {k: row.get(k, "") for k in FIELDS}
        trained = [r for r in self.rows if r["epoch"] >= 0]
        if select is None:
            better = False
        elif select == "last" or not trained:
            better = True
        else:
            key = _SCORE[select]
            better = row[key] > max(r[key] for r in trained) + 1e-9
        self.rows.append(row)
        with open(self.run_dir / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        return better

    def finish(self) -> None:
        plt = _pyplot()
        rows = self.rows
        trained = [r for r in rows if r["loss"] != ""]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for key in ("cls_loss", "align_loss"):
            ax1.plot([r["epoch"] + 1 for r in trained], [r[key] for r in trained], marker="o",
                     label=key.replace("_", " "))
        ax1.set(xlabel="epoch", ylabel="loss", title="Training losses")
        ax1.legend()
        for key in ("source_val_accuracy", "target_accuracy", "target_ncm_accuracy",
                    "disc_accuracy"):
            pts = [(r["epoch"] + 1, r[key]) for r in rows if r[key] != ""]
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=key.replace("_", " "))
        ax2.set(xlabel="epoch (0: before training)", ylabel="accuracy", ylim=(0, 1),
                title="Accuracy (target figures are reported, never used)")
        ax2.legend(loc="lower right", fontsize=8)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.run_dir / "curves.png", dpi=100)
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
