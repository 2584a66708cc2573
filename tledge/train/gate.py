"""The accuracy gate of a reduced-precision model against its fp32 parent, on real images.

Reported: mean and minimum cosine between the two models' embeddings of every image; top-1
agreement of nearest-neighbour matching (each model searches a gallery of its own
embeddings of half the images with the other half: the share of queries given the same
class, and the stricter share given the very same sample); and, where the images form at least 5
classes of 6, the 5-way 1-shot accuracy of both through real galleries. The gate fails below
``min_mean_cosine`` or ``min_top1_agreement``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.errors import TledgeError
from tledge.runtime.batch import class_folders
from tledge.runtime.embedder import Embedder


class GateError(TledgeError):
    """A reduced-precision model drifted too far from fp32; nothing was written."""


@dataclass(frozen=True)
class GateOptions:
    images: Path | None = None        # class folders; default: the shipped samples
    min_mean_cosine: float = 0.98
    min_top1_agreement: float = 0.98
    episodes: int = 200
    force: bool = False


def gate_images(folder: Path | None) -> dict[str, list[Path]]:
    """``{class: files}``; the shipped samples' enroll/ and query/ shots merged by class."""
    from tledge.samples import enroll_dir, query_dir

    if folder is not None:
        return class_folders(Path(folder))
    merged: dict[str, list[Path]] = {}
    for root in (enroll_dir(), query_dir()):
        for label, files in class_folders(root).items():
            merged.setdefault(label, []).extend(files)
    return merged


def gate(reference: Embedder, candidate: Embedder, options: GateOptions = GateOptions()) -> dict:
    """Compare ``candidate`` with ``reference`` on the gate images; see the module doc."""
    classes = gate_images(options.images)
    files = [f for fs in classes.values() for f in fs]
    if len(files) < 4:
        raise TledgeError(f"the accuracy gate needs at least 4 images, found {len(files)}")
    ref, got = reference.embed(files), candidate.embed(files)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    labels = np.concatenate([[i] * len(fs) for i, fs in enumerate(classes.values())])
    agreement, same_sample = nn_agreement(ref, got, labels)
    report = {"images": len(files), "mean_cosine": round(float(cos.mean()), 5),
              "min_cosine": round(float(cos.min()), 5), "top1_agreement": round(agreement, 4),
              "same_nearest_sample": round(same_sample, 4),
              "min_mean_cosine": options.min_mean_cosine,
              "min_top1_agreement": options.min_top1_agreement}
    report.update(_fewshot_change(reference, candidate, classes, ref, got, options.episodes))
    failures = []
    if report["mean_cosine"] < options.min_mean_cosine:
        failures.append(f"mean cosine {report['mean_cosine']:.4f} < {options.min_mean_cosine}")
    if agreement < options.min_top1_agreement:
        failures.append(f"top-1 agreement {agreement:.2%} < {options.min_top1_agreement:.0%}")
    report["passed"], report["failures"] = not failures, failures
    return report


def nn_agreement(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(label agreement, sample agreement) of nearest-neighbour matching: the share of
    queries that get the same answer (the class of their nearest gallery sample) from both
    embeddings, and the stricter share whose nearest sample itself is the same.

    Gallery: every other image of each class; queries: the rest."""
    order = np.argsort(labels, kind="stable")
    gallery = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        gallery[order[labels[order] == c][::2]] = True
    nn_ref = (ref[~gallery] @ ref[gallery].T).argmax(1)
    nn_got = (got[~gallery] @ got[gallery].T).argmax(1)
    g_labels = labels[gallery]
    return (float((g_labels[nn_ref] == g_labels[nn_got]).mean()),
            float((nn_ref == nn_got).mean()))


def _fewshot_change(reference, candidate, classes, ref, got, episodes: int) -> dict:
    from tledge.evaluate import Episodes, run_episodes

    counts = {c: len(fs) for c, fs in classes.items()}
    if sum(n >= 6 for n in counts.values()) < 5:
        return {}
    plan = Episodes(5, 1, 5, episodes, 0).plan(counts)
    starts = np.cumsum([0] + list(counts.values()))
    split = {name: {c: x[starts[i]:starts[i + 1]] for i, c in enumerate(counts)}
             for name, x in (("ref", ref), ("got", got))}
    acc_ref = run_episodes(reference, split["ref"], plan)["per_episode"].mean()
    acc_got = run_episodes(candidate, split["got"], plan)["per_episode"].mean()
    return {"fewshot": "5-way 1-shot", "fewshot_episodes": episodes,
            "fewshot_fp32": round(float(acc_ref), 4),
            "fewshot_reduced": round(float(acc_got), 4),
            "fewshot_change": round(float(acc_got - acc_ref), 4)}
