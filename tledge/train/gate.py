"""The accuracy gate of a reduced-precision model against its fp32 parent, on real images.

It judges the answers users get. Each model enrolls every other image of each class into a
gallery of its own embeddings and matches the rest as the gallery does (``mode``: class
prototypes, tledge's default, or the nearest sample); the gate needs the same class answered
for ``min_top1_agreement`` of those queries. Also gated: the mean cosine between the two
models' embeddings of every image, and, where the images form at least 5 classes of 6, the
drop in 5-way 1-shot accuracy through real galleries (at most ``max_fewshot_drop``).
Reported without gating: nearest-sample agreement (the answer in the other mode, and the
stricter share given the very same sample), which near-ties between samples of different
classes make far noisier than the prototype answers a default gallery gives. Use images of
classes that calibration and fine-tuning never saw (``--gate-images``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge.errors import TledgeError
from tledge.runtime.batch import class_folders
from tledge.runtime.embedder import Embedder
from tledge.runtime.gallery import MODES


class GateError(TledgeError):
    """A reduced-precision model drifted too far from fp32; nothing was written."""


@dataclass(frozen=True)
class GateOptions:
    images: Path | None = None        # class folders; default: the shipped samples
    min_mean_cosine: float = 0.98
    min_top1_agreement: float = 0.98  # same class answered, in the gallery's matching mode
    max_fewshot_drop: float = 0.01    # 5-way 1-shot accuracy, fp32 minus reduced
    mode: str = "prototype"           # the gallery's matching: "prototype" or "nearest"
    episodes: int = 200
    force: bool = False

    def validate(self) -> None:
        if self.mode not in MODES:
            raise TledgeError(f"gate matching mode {self.mode!r}: choose one of {MODES}")


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
    options.validate()
    classes = gate_images(options.images)
    files = [f for fs in classes.values() for f in fs]
    if len(files) < 4:
        raise TledgeError(f"the accuracy gate needs at least 4 images, found {len(files)}")
    ref, got = reference.embed(files), candidate.embed(files)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    labels = np.concatenate([[i] * len(fs) for i, fs in enumerate(classes.values())])
    nearest, same_sample = nn_agreement(ref, got, labels)
    agreement = nearest if options.mode == "nearest" else prototype_agreement(ref, got, labels)
    report = {"images": len(files), "mean_cosine": round(float(cos.mean()), 5),
              "min_cosine": round(float(cos.min()), 5), "agreement_mode": options.mode,
              "top1_agreement": round(agreement, 4),
              "nearest_sample_agreement": round(nearest, 4),
              "same_nearest_sample": round(same_sample, 4),
              "min_mean_cosine": options.min_mean_cosine,
              "min_top1_agreement": options.min_top1_agreement,
              "max_fewshot_drop": options.max_fewshot_drop}
    report.update(_fewshot_change(reference, candidate, classes, ref, got, options))
    report["failures"] = failures(report, options)
    report["passed"] = not report["failures"]
    return report


def failures(report: dict, options: GateOptions) -> list[str]:
    """Why ``report`` fails the gate's thresholds (empty: it passes)."""
    out = []
    if report["mean_cosine"] < options.min_mean_cosine:
        out.append(f"mean cosine {report['mean_cosine']:.4f} < {options.min_mean_cosine}")
    if report["top1_agreement"] < options.min_top1_agreement:
        out.append(f"{options.mode} agreement {report['top1_agreement']:.2%} < "
                   f"{options.min_top1_agreement:.0%}")
    drop = -report.get("fewshot_change", 0.0)
    if drop > options.max_fewshot_drop + 1e-9:
        out.append(f"5-way 1-shot accuracy drops {drop:.1%} > {options.max_fewshot_drop:.1%}")
    return out


def _gallery_half(labels: np.ndarray) -> np.ndarray:
    """Every other image of each class (in order) is enrolled; the rest are queries."""
    order = np.argsort(labels, kind="stable")
    gallery = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        gallery[order[labels[order] == c][::2]] = True
    return gallery


def prototype_agreement(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> float:
    """The share of queries whose closest class prototype (the normalised mean of that
    class's enrolled embeddings, as a gallery in prototype mode matches) is the same class
    under both embeddings. Split as in ``nn_agreement``."""
    gallery = _gallery_half(labels)
    classes = np.unique(labels)
    answers = []
    for x in (ref, got):
        protos = np.stack([x[gallery & (labels == c)].mean(0) for c in classes])
        protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
        answers.append((x[~gallery] @ protos.T).argmax(1))
    return float((answers[0] == answers[1]).mean())


def nn_agreement(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(label agreement, sample agreement) of nearest-neighbour matching: the share of
    queries that get the same answer (the class of their nearest gallery sample) from both
    embeddings, and the stricter share whose nearest sample itself is the same.

    Gallery: every other image of each class; queries: the rest."""
    gallery = _gallery_half(labels)
    nn_ref = (ref[~gallery] @ ref[gallery].T).argmax(1)
    nn_got = (got[~gallery] @ got[gallery].T).argmax(1)
    g_labels = labels[gallery]
    return (float((g_labels[nn_ref] == g_labels[nn_got]).mean()),
            float((nn_ref == nn_got).mean()))


def _fewshot_change(reference, candidate, classes, ref, got, options: GateOptions) -> dict:
    from tledge.evaluate import Episodes, run_episodes

    counts = {c: len(fs) for c, fs in classes.items()}
    if sum(n >= 6 for n in counts.values()) < 5:
        return {}
    episodes = options.episodes
    plan = Episodes(5, 1, 5, episodes, 0).plan(counts)
    starts = np.cumsum([0] + list(counts.values()))
    split = {name: {c: x[starts[i]:starts[i + 1]] for i, c in enumerate(counts)}
             for name, x in (("ref", ref), ("got", got))}
    acc_ref = run_episodes(reference, split["ref"], plan, mode=options.mode)["per_episode"].mean()
    acc_got = run_episodes(candidate, split["got"], plan, mode=options.mode)["per_episode"].mean()
    return {"fewshot": "5-way 1-shot", "fewshot_episodes": episodes,
            "fewshot_fp32": round(float(acc_ref), 4),
            "fewshot_reduced": round(float(acc_got), 4),
            "fewshot_change": round(float(acc_got - acc_ref), 4)}
