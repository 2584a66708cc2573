"""``tledge adapt``: fit a model trained on labelled source images to an unlabelled target
domain (another camera, sketches, cartoons).

Methods: ``none`` (source-only, the baseline: the same recipe without adaptation), ``dann``
(domain-adversarial: a discriminator on the pooled features behind a gradient reversal layer
with the usual ramp), ``coral`` (covariance alignment), ``mcc`` (minimum class confusion on
target predictions) and ``adabn`` (source-only training; only the BatchNorm statistics
adapt). Every method but ``none`` runs source and target inputs through their own BatchNorm
statistics (re-estimated on each domain's images) and exports the target's.

The frozen first stages are cached once per augmented view; the last ``unfreeze`` stages,
the classifier and the discriminator train. Target labels are never used for training or
selection: the checkpoint kept is chosen by ``select``: ``last`` (the fixed schedule's end),
``source`` (accuracy on held-out source images) or ``im`` (information maximisation of the
head's target predictions). ``--target-eval`` only reports.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tledge.errors import TledgeError, suggest
from tledge.train import alignment as A
from tledge.train import features as FT
from tledge.train.backbones import get_backbone
from tledge.train.checkpoint import Checkpoint, make_checkpoint
from tledge.train.data import LabelledImages, image_files, load_batch, stratified_split
from tledge.train.distributed import Dist
from tledge.train.engine import Algorithm, Plan, Run, fit
from tledge.train.features import embed_cached
from tledge.train.losses import LinearHead
from tledge.train.protos import ncm_accuracy
from tledge.train.report import MetricsLog, plot_feature_maps

SELECTIONS = ("last", "source", "im")


@dataclass(frozen=True)
class AdaptConfig:
    backbone: str = "mobilenet_v2"
    method: str = "dann"
    unfreeze: int = 4                 # final stages trained; the trunk before them is cached
    epochs: int = 10
    steps_per_epoch: int = 40
    batch: int = 32                   # source images per step (and as many target images)
    lr: float = 1e-3                  # classifier and discriminator
    backbone_lr_mult: float = 0.1     # the unfrozen pretrained stages learn 10x slower
    weight_decay: float = 5e-4
    trade_off: float | None = None    # weight of the alignment loss; None: the method's own
    views: int = 2                    # augmented views cached per image
    val_fraction: float = 0.2         # held-out source images
    select: str = "last"
    seed: int = 0
    device: str = "auto"
    weights: str | None = None

    @property
    def alignment_weight(self) -> float:
        if self.trade_off is not None:
            return self.trade_off
        return A.DEFAULT_WEIGHT.get(self.method, 0.0)

    def validate(self) -> None:
        if self.method not in A.METHODS:
            raise TledgeError(f"unknown method {self.method!r}." + suggest(self.method, A.METHODS))
        if self.select not in SELECTIONS:
            raise TledgeError(f"unknown selection {self.select!r}; use one of {SELECTIONS}")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch < 2 or self.views < 1:
            raise TledgeError("epochs, steps-per-epoch and views must be >= 1, batch >= 2")


FIELDS = ("epoch", "loss", "cls_loss", "align_loss", "disc_accuracy", "source_val_accuracy",
          "target_im", "target_accuracy", "target_ncm_accuracy", "seconds")
_SCORE = {"im": "target_im", "source": "source_val_accuracy"}


@dataclass
class _Domains:
    """Cached trunk outputs of every part the run needs."""

    src_views: FT.CachedViews
    src_train: FT.CachedViews
    src_val: FT.CachedViews
    tgt_views: FT.CachedViews
    tgt: FT.CachedViews
    tgt_eval: FT.CachedViews | None
    target_stats: dict | None = None   # BatchNorm statistics for target inputs (AdaBN)


def adapt(source: Path, target: Path, run_dir: Path, config: AdaptConfig,
          target_eval: Path | None = None, cache_dir: Path | None = None) -> dict:
    """Train on ``source`` (class folders) while aligning to ``target`` (images, labels
    ignored); keep the checkpoint chosen by ``config.select``; write the run directory."""
    config.validate()
    src = LabelledImages.scan(source)
    tgt = _unlabelled(target)
    evl = _eval_set(target_eval, src.classes) if target_eval else None
    run = Run.start(run_dir, config.device, config.seed)
    try:
        algo = Adapt(config, src, tgt, evl, run)
        run.write_json("config.json", {
            **asdict(config), "source": str(source), "target": str(target),
            "target_eval": str(target_eval) if target_eval else None, **algo.info})
        t0 = time.perf_counter()
        algo.prepare(run.feature_dir(cache_dir))
        cache_seconds = time.perf_counter() - t0
        log = MetricsLog(run_dir, FIELDS, ("cls_loss", "align_loss"),
                         ("source_val_accuracy", "target_accuracy", "target_ncm_accuracy",
                          "disc_accuracy"), write=run.dist.is_main)
        plan = Plan(config.epochs, config.steps_per_epoch, baseline=True, best_in_memory=True,
                    desc=f"adapt ({config.method})")
        best = fit(algo, run, plan, log)
        if run.dist.is_main:
            plot_feature_maps(algo.before, algo.picture(), list(src.classes),
                              run_dir / "features.png")
        log.finish({"title": "Accuracy (target figures are reported, never used)"})
        summary = _summary(config, best, log.rows, cache_seconds, run_dir)
        run.write_json("summary.json", summary)
        return summary
    finally:
        run.close()


def _summary(config: AdaptConfig, best: dict, rows: list[dict], cache_seconds: float,
             run_dir: Path) -> dict:
    return {"method": config.method, "selected_epoch": best["epoch"],
            "selection": config.select, "cache_seconds": round(cache_seconds, 1),
            "train_seconds": round(sum(r["seconds"] for r in rows), 1),
            **{k: best[k] for k in ("source_val_accuracy", "target_im", "target_accuracy",
                                    "target_ncm_accuracy") if best.get(k) not in (None, "")},
            "baseline": {k: rows[0][k] for k in ("target_accuracy", "target_ncm_accuracy")
                         if rows[0].get(k) not in (None, "")},
            "run_dir": str(run_dir)}


def _unlabelled(folder: Path) -> LabelledImages:
    files = image_files(Path(folder))
    if not files:
        raise TledgeError(f"no images found under target folder {folder}")
    return LabelledImages(("?",), tuple(files), np.full(len(files), -1, np.int64))


def _eval_set(folder: Path, classes: tuple[str, ...]) -> LabelledImages:
    data = LabelledImages.scan(folder)
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise TledgeError(f"--target-eval classes {unknown} are not source classes "
                          f"({', '.join(classes)})")
    remap = np.array([classes.index(c) for c in data.classes])
    return LabelledImages(classes, data.files, remap[data.labels])


def _estimate_stats(backbone, files, device) -> dict:
    """Re-estimate the backbone's BatchNorm statistics on ``files`` (in place); a copy."""
    cfg = backbone.preprocess
    files = list(files)
    batches = (load_batch(files[i:i + 16], cfg).to(device) for i in range(0, len(files), 16))
    A.adapt_batchnorm(backbone, batches, forward=backbone.forward_features)
    return A.batchnorm_stats(backbone)


def _digest(files) -> str:
    return hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()[:16]


class Adapt(Algorithm):
    """Source batches through the classifier, target batches through the alignment loss;
    the trainable stages, the classifier and (for DANN) the discriminator learn."""

    def __init__(self, config: AdaptConfig, src: LabelledImages, tgt: LabelledImages,
                 evl: LabelledImages | None, run: Run) -> None:
        self.c, self.run, self.device = config, run, run.device
        self.src, self.tgt, self.evl = src, tgt, evl
        train_idx, val_idx = stratified_split(src.labels, config.val_fraction, config.seed)
        self.train, self.val = src.subset(train_idx), src.subset(val_idx)
        self.backbone, self.spec, weights_source = get_backbone(config.backbone, training=True,
                                                                weights=config.weights)
        self.backbone.to(self.device).eval()
        self.start = FT.trainable_start(self.backbone, "partial", config.unfreeze)
        self.params = FT.set_trainable(self.backbone, self.start)
        self.warmup_steps, self.weight_decay = config.steps_per_epoch, config.weight_decay
        self.total = config.epochs * config.steps_per_epoch
        self.info = {"classes": list(src.classes), "weights_source": weights_source,
                     "source_train_images": len(train_idx), "source_val_images": len(val_idx),
                     "target_images": len(tgt.files)}

    def prepare(self, cache_dir: Path | None) -> None:
        """Cache every part, then build the classifier and discriminator (after the caches,
        as the seeded initialisation always was)."""
        self.doms = self._cache(cache_dir)
        self.target_stats = self.doms.target_stats
        self.head = LinearHead(self.backbone.dim, len(self.src.classes)).to(self.device)
        self.dann = (A.DomainAdversarialLoss(A.DomainDiscriminator(self.backbone.dim))
                     .to(self.device) if self.c.method == "dann" else None)
        self.rng = np.random.default_rng(self.c.seed)

    def _cache(self, cache_dir: Path | None) -> _Domains:
        """Trunk outputs of every part. ``none`` keeps the pretrained BatchNorm statistics
        for both domains (the baseline). Every other method uses domain-specific statistics:
        re-estimated on the source images for source inputs and on the target images for
        target inputs (AdaBN), and the exported model carries the target's."""
        c, bb, tag = self.c, self.backbone, ["pretrained"]
        dist = self.run.dist

        def cache(part, views, augment, desc):
            key = [c.backbone, c.weights, self.start, views, augment, c.seed, tag[0],
                   [str(f) for f in part.files]]
            return FT.shared_views(dist, cache_dir, key, lambda: FT.cache_views(
                bb, self.start, part, views, augment, self.device, c.seed, desc))

        def stats(files) -> dict:
            key = [c.backbone, c.weights, "batchnorm", [str(f) for f in files]]
            return FT.shared_tensors(dist, cache_dir, key,
                                     lambda: _estimate_stats(bb, files, self.device))

        target_stats = None
        if c.method != "none":
            target_stats = stats(self.tgt.files)
            bb.load_state_dict(stats(self.train.files), strict=False)  # source statistics
            tag[0] = "dsbn " + _digest(self.train.files)
        src = [cache(self.train, c.views, True, "source views"),
               cache(self.train, 1, False, "source"), cache(self.val, 1, False, "source val")]
        if target_stats is None:
            target_stats = A.batchnorm_stats(bb)
        else:
            tag[0] = "dsbn-target " + _digest(self.tgt.files)
        with A.use_batchnorm_stats(bb, target_stats):
            doms = _Domains(*src, cache(self.tgt, c.views, True, "target views"),
                            cache(self.tgt, 1, False, "target"),
                            cache(self.evl, 1, False, "target eval") if self.evl else None)
        doms.target_stats = target_stats
        return doms

    def modules(self) -> dict[str, torch.nn.Module]:
        mods = {"model": self.backbone, "head": self.head}
        return {**mods, "dann": self.dann} if self.dann is not None else mods

    def param_groups(self) -> list[dict]:
        head_params = list(self.head.parameters())
        if self.dann is not None:
            head_params += list(self.dann.parameters())
        return [{"params": head_params, "lr": self.c.lr},
                {"params": self.params, "lr": self.c.lr * self.c.backbone_lr_mult}]

    def train_mode(self) -> None:
        self.backbone.train()
        FT.freeze_batchnorm(self.backbone)  # source statistics stay; AdaBN replaces them
        self.head.train()

    def batches(self, epoch: int, dist: Dist):
        """Random source and target items; each step's global batch drawn alike on every
        rank (one seeded generator), each rank taking its part."""
        d, steps = self.doms, self.c.steps_per_epoch
        for step in range(steps):
            s = dist.shard(self.rng.integers(0, len(d.src_views.x), self.c.batch))
            t = dist.shard(self.rng.integers(0, len(d.tgt_views.x), self.c.batch))
            yield (d.src_views.x[s], torch.as_tensor(d.src_views.labels[s]), d.tgt_views.x[t],
                   (epoch * steps + step) / self.total)

    def loss(self, batch) -> tuple[torch.Tensor, dict[str, float]]:
        xs, ys, xt, progress = batch
        f_s = self._pooled(xs)
        f_t = self._pooled_target(xt)
        cls = self.head.loss(f_s, ys.to(self.device))
        align = self._align(f_s, f_t, progress)
        loss = cls + self.c.alignment_weight * align
        logs = {"loss": loss.item(), "cls_loss": cls.item(), "align_loss": align.item()}
        if self.dann is not None:
            logs["disc_accuracy"] = self.dann.last_accuracy
        return loss, logs

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from(x.to(self.device), self.start)

    def _pooled_target(self, x: torch.Tensor) -> torch.Tensor:
        with A.use_batchnorm_stats(self.backbone, self.target_stats):
            return self._pooled(x)

    def _align(self, f_s: torch.Tensor, f_t: torch.Tensor, progress: float) -> torch.Tensor:
        method = self.c.method
        if method == "dann":
            return self.dann(f_s, f_t, A.dann_coefficient(progress))
        if method == "coral":
            return A.coral_loss(f_s, f_t)
        if method == "mcc":
            return A.mcc_loss(self.head.logits(f_t))
        return torch.zeros((), device=f_s.device)  # none, adabn: source-only training

    def score(self, row: dict) -> float | None:
        return None if self.c.select == "last" else row[_SCORE[self.c.select]]

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict:
        self.backbone.eval()
        self.head.eval()
        d = self.doms
        src_val = embed_cached(self._pooled, d.src_val.x)
        tgt = embed_cached(self._pooled_target, d.tgt.x)
        self._feats = {"src_val": src_val, "tgt": tgt}
        row = {"source_val_accuracy": self._head_accuracy(src_val, d.src_val.labels),
               "target_im": A.information_maximisation(
                   torch.softmax(self.head.logits(tgt.to(self.device)), 1).cpu())}
        if d.tgt_eval is not None:
            ev = embed_cached(self._pooled_target, d.tgt_eval.x)
            row["target_accuracy"] = self._head_accuracy(ev, d.tgt_eval.labels)
            src = embed_cached(self._pooled, d.src_train.x)
            self._feats.update(tgt_eval=ev, src_train=src)
            row["target_ncm_accuracy"] = ncm_accuracy((src, d.src_train.labels),
                                                      (ev, d.tgt_eval.labels))
        if epoch < 0:
            self.before = self.picture()
        return row

    def _head_accuracy(self, pooled: torch.Tensor, labels: np.ndarray) -> float:
        pred = self.head.logits(pooled.to(self.device)).argmax(1).cpu().numpy()
        return float((pred == labels).mean())

    def picture(self) -> dict:
        """Features of the last evaluation for the 2-D picture: source validation images and
        the target images (the labelled evaluation ones when given)."""
        f = self._feats
        out = {"source": f["src_val"], "source_labels": self.doms.src_val.labels,
               "target": f["tgt"]}
        if "tgt_eval" in f:
            out["target"], out["target_labels"] = f["tgt_eval"], self.doms.tgt_eval.labels
        return out

    def snapshot(self) -> dict:
        """The trainable state and the features it gave, kept in memory (no file per epoch)."""
        return {"model": {k: v.detach().clone() for k, v in self.backbone.state_dict().items()},
                "head": {k: v.detach().clone() for k, v in self.head.state_dict().items()},
                "feats": dict(self._feats)}

    def restore(self, snap: dict) -> None:
        self.backbone.load_state_dict(snap["model"])
        self.head.load_state_dict(snap["head"])
        self._feats = dict(snap["feats"])

    def checkpoint(self) -> Checkpoint:
        """From the features the last evaluation (or snapshot) computed."""
        f, d = self._feats, self.doms
        if "src_train" not in f:
            f["src_train"] = embed_cached(self._pooled, d.src_train.x)
        src, val = (f["src_train"], d.src_train.labels), (f["src_val"], d.src_val.labels)
        # The deployed model sees the target domain: it carries the target's statistics.
        with A.use_batchnorm_stats(self.backbone, self.target_stats):
            return make_checkpoint("adapt", asdict(self.c), self.spec.name,
                                   list(self.src.classes), self.backbone,
                                   {"classes": (list(self.src.classes), self.head.fc)},
                                   center=f["tgt"].mean(0), train=src, val=val)
