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

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tledge.errors import TledgeError, suggest
from tledge.train import alignment as A
from tledge.train import features as FT
from tledge.train.adapt_report import AdaptLog, plot_feature_maps
from tledge.train.backbones import get_backbone
from tledge.train.data import LabelledImages, image_files, load_batch, stratified_split
from tledge.train.finetune import pick_device, schedule
from tledge.train.losses import LinearHead
from tledge.train.runs import embed_cached, save_checkpoint

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
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    src = LabelledImages.scan(source)
    tgt = _unlabelled(target)
    evl = _eval_set(target_eval, src.classes) if target_eval else None
    train_idx, val_idx = stratified_split(src.labels, config.val_fraction, config.seed)
    backbone, spec, weights_source = get_backbone(config.backbone, weights=config.weights)
    backbone.to(device).eval()
    start = FT.trainable_start(backbone, "partial", config.unfreeze)
    params = FT.set_trainable(backbone, start)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(
        {**asdict(config), "source": str(source), "target": str(target),
         "target_eval": str(target_eval) if target_eval else None, "classes": list(src.classes),
         "weights_source": weights_source, "source_train_images": len(train_idx),
         "source_val_images": len(val_idx), "target_images": len(tgt.files)}, indent=2))
    t0 = time.perf_counter()
    doms = _cache(backbone, start, src.subset(train_idx), src.subset(val_idx), tgt, evl,
                  config, device, cache_dir)
    cache_seconds = time.perf_counter() - t0
    run = _Run(config, backbone, start, len(src.classes), params, device, doms.target_stats)
    log = AdaptLog(run_dir)
    log.add(run.evaluate(doms, epoch=-1, loss={}, seconds=0.0))
    before = run.picture(doms)
    best_row, best = None, None
    for epoch in tqdm(range(config.epochs), desc=f"adapt ({config.method})", disable=None):
        t1 = time.perf_counter()
        losses = run.epoch(doms, epoch)
        row = run.evaluate(doms, epoch, losses, time.perf_counter() - t1)
        if log.add(row, config.select):
            best_row, best = row, run.snapshot()
    run.restore(best)
    run.save(run_dir / "best.pt", src.classes, spec.name, doms)
    plot_feature_maps(before, run.picture(doms), list(src.classes),
                      run_dir / "features.png")
    log.finish()
    summary = {"method": config.method, "selected_epoch": best_row["epoch"],
               "selection": config.select, "cache_seconds": round(cache_seconds, 1),
               "train_seconds": round(sum(r["seconds"] for r in log.rows), 1),
               **{k: best_row[k] for k in ("source_val_accuracy", "target_im",
                                           "target_accuracy", "target_ncm_accuracy")
                  if best_row.get(k) not in (None, "")},
               "baseline": {k: log.rows[0][k] for k in ("target_accuracy", "target_ncm_accuracy")
                            if log.rows[0].get(k) not in (None, "")},
               "run_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


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


def _cache(backbone, start, train, val, tgt, evl, config, device,
           cache_dir: Path | None = None) -> _Domains:
    """Trunk outputs of every part. ``none`` keeps the pretrained BatchNorm statistics for
    both domains (the baseline). Every other method uses domain-specific statistics:
    re-estimated on the source images for source inputs and on the target images for
    target inputs (AdaBN), and the exported model carries the target's.

    With ``cache_dir``, each part is kept on disk and reused by later runs on the same
    images (e.g. every method compared on one source/target pair)."""
    tag = ["pretrained"]

    def cached(key: list, compute) -> dict:
        if cache_dir is None:
            return compute()
        return _disk_cached(Path(cache_dir), json.dumps([config.backbone, config.weights, *key]),
                            compute)

    def cache(part, views, augment, desc):
        def compute():
            return _pack(FT.cache_views(backbone, start, part, views, augment, device,
                                        config.seed, desc))
        return _unpack(cached([start, views, augment, config.seed, tag[0],
                               [str(f) for f in part.files]], compute))

    def stats(files) -> dict:
        return cached(["batchnorm", [str(f) for f in files]],
                      lambda: _estimate_stats(backbone, files, device))

    target_stats = None
    if config.method != "none":
        target_stats = stats(tgt.files)
        # the model's own buffers become the source statistics
        backbone.load_state_dict(stats(train.files), strict=False)
        tag[0] = "dsbn " + _digest(train.files)
    src = [cache(train, config.views, True, "source views"), cache(train, 1, False, "source"),
           cache(val, 1, False, "source val")]
    if target_stats is None:
        target_stats = A.batchnorm_stats(backbone)
    else:
        tag[0] = "dsbn-target " + _digest(tgt.files)
    with A.use_batchnorm_stats(backbone, target_stats):
        doms = _Domains(*src, cache(tgt, config.views, True, "target views"),
                        cache(tgt, 1, False, "target"),
                        cache(evl, 1, False, "target eval") if evl else None)
    doms.target_stats = target_stats
    return doms


def _estimate_stats(backbone, files, device) -> dict:
    """Re-estimate the backbone's BatchNorm statistics on ``files`` (in place); a copy."""
    cfg = FT.backbone_cfg(backbone)
    files = list(files)
    batches = (load_batch(files[i:i + 16], cfg).to(device) for i in range(0, len(files), 16))
    A.adapt_batchnorm(backbone, batches, forward=backbone.forward_features)
    return A.batchnorm_stats(backbone)


def _digest(files) -> str:
    import hashlib

    return hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()[:16]


def _disk_cached(folder: Path, key: str, compute) -> dict[str, torch.Tensor]:
    """``compute()`` (a dict of tensors), kept in ``folder`` under a hash of ``key``."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cache-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            path.unlink(missing_ok=True)  # unreadable: compute it again
    value = compute()
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def _pack(views: FT.CachedViews) -> dict[str, torch.Tensor]:
    return {"x": views.x, "labels": torch.from_numpy(views.labels),
            "image": torch.from_numpy(views.image)}


def _unpack(z: dict[str, torch.Tensor]) -> FT.CachedViews:
    return FT.CachedViews(z["x"], z["labels"].numpy(), z["image"].numpy())


class _Run:
    """The trainable stages, the classifier and (for DANN) the discriminator."""

    def __init__(self, config: AdaptConfig, backbone, start: int, n_classes: int, params,
                 device, target_stats: dict) -> None:
        self.c, self.backbone, self.start, self.device = config, backbone, start, device
        self.target_stats = target_stats
        self.head = LinearHead(backbone.dim, n_classes).to(device)
        self.dann = (A.DomainAdversarialLoss(A.DomainDiscriminator(backbone.dim)).to(device)
                     if config.method == "dann" else None)
        head_params = list(self.head.parameters())
        if self.dann is not None:
            head_params += list(self.dann.parameters())
        self.optim = torch.optim.AdamW(
            [{"params": head_params, "lr": config.lr},
             {"params": params, "lr": config.lr * config.backbone_lr_mult}],
            weight_decay=config.weight_decay)
        self.total = config.epochs * config.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, schedule(self.total, config.steps_per_epoch))
        self.rng = np.random.default_rng(config.seed)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_from(x.to(self.device), self.start)

    def _pooled_target(self, x: torch.Tensor) -> torch.Tensor:
        with A.use_batchnorm_stats(self.backbone, self.target_stats):
            return self._pooled(x)

    def epoch(self, doms: _Domains, epoch: int) -> dict:
        self.backbone.train()
        FT.freeze_batchnorm(self.backbone)  # source statistics stay; AdaBN replaces them
        self.head.train()
        sums: dict[str, list[float]] = {"loss": [], "cls_loss": [], "align_loss": [],
                                        "disc_accuracy": []}
        for step in range(self.c.steps_per_epoch):
            progress = (epoch * self.c.steps_per_epoch + step) / self.total
            s = self.rng.integers(0, len(doms.src_views.x), self.c.batch)
            t = self.rng.integers(0, len(doms.tgt_views.x), self.c.batch)
            f_s = self._pooled(doms.src_views.x[s])
            f_t = self._pooled_target(doms.tgt_views.x[t])
            cls = self.head.loss(f_s, torch.as_tensor(doms.src_views.labels[s], device=self.device))
            align = self._align(f_s, f_t, progress)
            loss = cls + self.c.alignment_weight * align
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            self.optim.step()
            self.sched.step()
            sums["loss"].append(loss.item())
            sums["cls_loss"].append(cls.item())
            sums["align_loss"].append(align.item())
            if self.dann is not None:
                sums["disc_accuracy"].append(self.dann.last_accuracy)
        return {k: float(np.mean(v)) if v else "" for k, v in sums.items()}

    def _align(self, f_s: torch.Tensor, f_t: torch.Tensor, progress: float) -> torch.Tensor:
        method = self.c.method
        if method == "dann":
            return self.dann(f_s, f_t, A.dann_coefficient(progress))
        if method == "coral":
            return A.coral_loss(f_s, f_t)
        if method == "mcc":
            return A.mcc_loss(self.head.logits(f_t))
        return torch.zeros((), device=f_s.device)  # none, adabn: source-only training

    def picture(self, doms: _Domains) -> dict:
        """Features of the last evaluation for the 2-D picture: source validation images and
        the target images (the labelled evaluation ones when given)."""
        f = self._feats
        out = {"source": f["src_val"], "source_labels": doms.src_val.labels,
               "target": f["tgt"]}
        if "tgt_eval" in f:
            out["target"], out["target_labels"] = f["tgt_eval"], doms.tgt_eval.labels
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

    @torch.no_grad()
    def evaluate(self, doms: _Domains, epoch: int, loss: dict, seconds: float) -> dict:
        self.backbone.eval()
        self.head.eval()
        src_val = embed_cached(self._pooled, doms.src_val.x)
        tgt = embed_cached(self._pooled_target, doms.tgt.x)
        self._feats = {"src_val": src_val, "tgt": tgt}
        row = {"epoch": epoch, **loss, "seconds": seconds,
               "source_val_accuracy": self._head_accuracy(src_val, doms.src_val.labels),
               "target_im": A.information_maximisation(
                   torch.softmax(self.head.logits(tgt.to(self.device)), 1).cpu())}
        if doms.tgt_eval is not None:
            ev = embed_cached(self._pooled_target, doms.tgt_eval.x)
            row["target_accuracy"] = self._head_accuracy(ev, doms.tgt_eval.labels)
            src = embed_cached(self._pooled, doms.src_train.x)
            self._feats.update(tgt_eval=ev, src_train=src)
            row["target_ncm_accuracy"] = _ncm_accuracy(src, doms.src_train.labels, ev,
                                                       doms.tgt_eval.labels)
        return row

    def _head_accuracy(self, pooled: torch.Tensor, labels: np.ndarray) -> float:
        pred = self.head.logits(pooled.to(self.device)).argmax(1).cpu().numpy()
        return float((pred == labels).mean())

    def save(self, path: Path, classes, backbone_name: str, doms: _Domains) -> None:
        """The checkpoint, from the features the last evaluation (or snapshot) computed."""
        f = self._feats
        if "src_train" not in f:
            f["src_train"] = embed_cached(self._pooled, doms.src_train.x)
        src, val = (f["src_train"], doms.src_train.labels), (f["src_val"], doms.src_val.labels)
        tgt = f["tgt"]
        # The deployed model sees the target domain: it carries the target's statistics.
        with A.use_batchnorm_stats(self.backbone, self.target_stats):
            save_checkpoint(path, "adapt", asdict(self.c), backbone_name, list(classes),
                            self.backbone, {"classes": (list(classes), self.head.fc)},
                            center=tgt.mean(0), train=src, val=val)


def _ncm_accuracy(src: torch.Tensor, src_y: np.ndarray, tgt: torch.Tensor,
                  tgt_y: np.ndarray) -> float:
    """Nearest source-class-mean accuracy of target features (cosine): the embedding's own
    quality, independent of the classifier."""
    classes = np.unique(src_y)
    protos = F.normalize(torch.stack([F.normalize(src[src_y == c], dim=1).mean(0)
                                      for c in classes]), dim=1)
    pred = classes[(F.normalize(tgt, dim=1) @ protos.T).argmax(1).numpy()]
    return float((pred == tgt_y).mean())
