"""A training run's record: metrics.csv, best-epoch tracking and PNG plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FIELDS = ("epoch", "train_loss", "val_accuracy", "val_head_accuracy", "lr", "seconds")


def _selection(row: dict) -> float:
    """The model-selection score: the classifier head's accuracy when there is one."""
    return row["val_head_accuracy"] if row["val_head_accuracy"] != "" else row["val_accuracy"]


class RunLog:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.rows: list[dict] = []
        self.best_confusion: np.ndarray | None = None

    def add(self, epoch: int, loss: float, acc: float, head_acc: float | None, lr: float,
            seconds: float, confusion: np.ndarray) -> bool:
        """Record an epoch; True when its selection score is the best so far."""
        row = {"epoch": epoch, "train_loss": loss, "val_accuracy": acc,
               "val_head_accuracy": head_acc if head_acc is not None else "",
               "lr": lr, "seconds": seconds}
        improved = not self.rows or _selection(row) > max(map(_selection, self.rows)) + 1e-9
        self.rows.append(row)
        if improved:
            self.best_confusion = confusion
        self._write_csv()
        return improved

    def stale_epochs(self) -> int:
        accs = [_selection(r) for r in self.rows]
        return len(accs) - 1 - int(np.argmax(accs)) if accs else 0

    def summary(self) -> dict:
        best = max(self.rows, key=_selection)
        return {"best_epoch": best["epoch"], "best_val_accuracy": _selection(best),
                "epochs_run": len(self.rows),
                "train_seconds": float(sum(r["seconds"] for r in self.rows)),
                "run_dir": str(self.run_dir)}

    def _write_csv(self) -> None:
        with open(self.run_dir / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

    def finish(self, classes) -> None:
        plot_curves(self.rows, self.run_dir / "curves.png")
        if self.best_confusion is not None and self.best_confusion.size:
            plot_confusion(self.best_confusion, list(classes), self.run_dir / "confusion.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    epochs = [r["epoch"] + 1 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax2.plot(epochs, [r["val_accuracy"] for r in rows], marker="o", label="nearest class mean")
    heads = [r["val_head_accuracy"] for r in rows]
    if all(h != "" for h in heads):
        ax2.plot(epochs, heads, marker="s", label="classifier head")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", title="Validation", ylim=(0, 1))
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
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
