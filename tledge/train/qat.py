"""Quantisation-aware distillation: nudge a model's float weights so that its int8 copy
gives the fp32 model's embeddings.

Post-training int8 of MobileNetV2 loses too much here (mean embedding cosine ~0.97 to fp32:
the error of ~50 quantised layers adds up). This fine-tunes a copy of the model through a
PyTorch simulation of exactly what ONNX Runtime's static QDQ quantisation will do to it
(``tledge.train.quantize``: per-channel symmetric weights on the 7-bit ``reduce_range``
grid, per-tensor asymmetric uint8 activations with min-max ranges over the calibration
images, first/last convolutions in float), with the fp32 model's own embeddings as the only
target (unlabelled images suffice). The result is an fp32 model whose weights sit well on
the int8 grid; ONNX Runtime then quantises it as usual and the gate compares that int8 file
with the *original* fp32 model.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.transforms import v2

from tledge.artifact import Preprocess
from tledge.errors import TledgeError
from tledge.runtime.images import load_image
from tledge.train.data import eval_transform
from tledge.train.distributed import Dist
from tledge.train.engine import Algorithm, Run, Trainer
from tledge.train.model import EmbeddingModel
from tledge.train.torch_private import learnable_fake_quant

WEIGHT_QMAX = 64      # onnxruntime: QInt8 with reduce_range -> [-64, 64], symmetric
WEIGHT_QMAX_8BIT = 127  # without reduce_range: [-127, 127]
# Activations ONNX exports as Clip or Relu, which onnxruntime folds into the conv's output
# range: modules (MobileNetV2) and functions (EfficientNet-Lite calls F.relu6). Others (SiLU,
# Hardswish) stay separate nodes there, so the conv's own output is what gets quantised.
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_ACTIVATION_FUNCTIONS = (F.relu, F.relu6, F.hardtanh, torch.relu, torch.clamp, torch.clip)


@dataclass(frozen=True)
class QATOptions:
    steps: int = 200
    batch: int = 16
    images: int = 1000              # training images drawn from the calibration folder
    lr: float = 2e-5
    calib_images: int = 64          # images for the starting (min-max) activation ranges
    float_first: int = 1            # as QuantizeOptions: convolutions left in float
    float_last: int = 1
    seed: int = 0
    weight_qmax: int = WEIGHT_QMAX  # as QuantizeOptions.reduce_range: 64 (7-bit) or 127


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric fake quantisation on ``[-qmax, qmax]`` (STE)."""

    def __init__(self, qmax: int = WEIGHT_QMAX) -> None:
        super().__init__()
        self.qmax = qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        absmax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (absmax / self.qmax).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax,
                                                      self.qmax)


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric uint8 fake quantisation (the range always holds 0, as in
    onnxruntime). ``observing``: pass through and widen the min-max range; after
    ``learn()`` the step size and zero point are trained (LSQ, Esser et al. 2020), which
    lets distillation clip rare outliers instead of spreading 256 levels over them."""

    def __init__(self, kind: str = "") -> None:
        super().__init__()
        self.kind = kind                          # "input", "conv" or "add": for mapping
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.observing = False
        self.scale: nn.Parameter | None = None
        self.zero_point: torch.Tensor | None = None

    def reset(self) -> None:
        self.lo.zero_()
        self.hi.zero_()

    def _minmax_qparams(self) -> tuple[float, int]:
        scale = float(max(self.hi - self.lo, 1e-8)) / 255.0
        return scale, int(round(-float(self.lo) / scale))

    def learn(self) -> None:
        """Start training the step size from the current min-max range (zero stays put)."""
        scale, zero = self._minmax_qparams()
        self.scale = nn.Parameter(torch.tensor([scale], device=self.lo.device))
        self.zero_point = torch.tensor([float(zero)], device=self.lo.device)

    def range(self) -> tuple[float, float]:
        """(rmin, rmax) that onnxruntime turns back into the learned scale and zero point."""
        scale = float(self.scale.detach().abs().clamp_min(1e-8))
        zero = float(torch.clamp(torch.round(self.zero_point), 0, 255))
        return -zero * scale, (255.0 - zero) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.lo.copy_(torch.minimum(self.lo, x.detach().min()))
            self.hi.copy_(torch.maximum(self.hi, x.detach().max()))
            return x
        if self.scale is not None:
            grad_factor = 1.0 / math.sqrt(x[0].numel() * 255)
            return learnable_fake_quant(x, self.scale, self.zero_point, 0, 255, grad_factor)
        scale, zero = self._minmax_qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def fold_batchnorm(model: EmbeddingModel) -> int:
    """Fold every BatchNorm2d fed by a Conv2d alone into that conv, in place (the BN becomes
    Identity), found on the traced embedding path, whatever the module layout. Returns how
    many were folded; raises if a BatchNorm2d is left that onnxruntime would not fold."""
    root = _Features(model)
    modules = dict(root.named_modules())
    folded = left = 0
    for node in _Tracer().trace(root).nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
                and len(src.users) == 1):
            _fold(modules[src.target], modules[node.target])
            parent, _, name = node.target.rpartition(".")
            setattr(modules[parent], name, nn.Identity())
            folded += 1
        else:
            left += 1
    if left:
        raise TledgeError(f"{left} BatchNorm layer(s) do not follow a convolution; int8-aware "
                          "distillation cannot simulate them (use --qat-steps 0)")
    return folded


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                  bn.running_var, bn.eps, bn.weight, bn.bias)


class _Features(nn.Module):
    """``model.embed`` with the centring decided up front (FX cannot trace that branch)."""

    def __init__(self, model: EmbeddingModel) -> None:
        super().__init__()
        self.model, self.centred = model, bool(model.center.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.model.backbone.forward_features(x)
        return F.normalize(pooled - self.model.center if self.centred else pooled, dim=1)


class _Tracer(fx.Tracer):
    """Keeps convolutions and activations as modules (leaves), traces through the rest."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Identity, *_ACTIVATIONS)) or \
            super().is_leaf_module(m, qualname)


def simulate_int8(model: EmbeddingModel, float_first: int = 1, float_last: int = 1,
                  weight_qmax: int = WEIGHT_QMAX,
                  ) -> tuple[fx.GraphModule, list[ActivationFakeQuant]]:
    """A traced view of ``model.embed`` (BN already folded) with fake quantisation where
    ONNX Runtime's QDQ model quantises: every quantised conv's weights, and the tensors its
    integer kernels read or write (each conv's output after its activation, each residual
    sum). Shares parameters with ``model``."""
    root = _Features(model)
    graph = _Tracer().trace(root)
    gm = fx.GraphModule(root, graph)
    modules = dict(gm.named_modules())
    convs = [n for n in gm.graph.nodes
             if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)]
    if len(convs) < float_first + float_last + 1:
        raise TledgeError("the model has too few convolutions to quantise")
    quantised = convs[float_first:len(convs) - float_last]
    for node in quantised:
        parametrize.register_parametrization(modules[node.target], "weight",
                                             WeightFakeQuant(weight_qmax))
    # The image is quantised only when the first conv is.
    points = {n: "input" for n in gm.graph.nodes if n.op == "placeholder"} \
        if float_first == 0 else {}
    # A conv's output is quantised after its activation (onnxruntime folds Clip/Relu into
    # the range); the last float conv's output stays float.
    for node in convs[:len(convs) - float_last]:
        points[_after_activation(node, modules)] = "conv"
    points.update({n: "add" for n in gm.graph.nodes if n.op == "call_function"
                   and n.target in (operator.add, torch.add) and _is_tensor_sum(n)})
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    observers = []  # in execution order, as onnxruntime's quantised tensors are listed
    for i, node in enumerate(sorted(points, key=order.__getitem__)):
        name = f"act_fq_{i}"
        fq = ActivationFakeQuant(points[node])
        gm.add_submodule(name, fq)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
        observers.append(fq)
    gm.graph.lint()
    gm.recompile()
    return gm, observers


def _after_activation(node: fx.Node, modules: dict) -> fx.Node:
    """Follow conv -> (BN/Identity) -> activation while each has a single user."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if _is_activation(user, modules):
            return user
        if user.op != "call_module" or not isinstance(modules[user.target],
                                                      (nn.BatchNorm2d, nn.Identity)):
            break
        node = user
    return node


def _is_activation(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _ACTIVATIONS)
    return node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS


def _is_tensor_sum(node: fx.Node) -> bool:
    """A sum of two computed tensors (onnxruntime quantises those); adding a constant
    (a buffer, e.g. an ensemble member's input shift) is not one."""
    return all(isinstance(a, fx.Node) and a.op != "get_attr" for a in node.args[:2])


class _Views:
    """The images decoded and resized once (uint8, eval resize), then cropped per step:
    random crops and flips for training, centre crops for calibration, normalised as
    ``tledge.train.data.eval_transform`` does."""

    def __init__(self, files: list[Path], cfg: Preprocess, seed: int) -> None:
        from PIL import Image

        resize = eval_transform(cfg).transforms[0]
        self.images = []
        for path in files:
            rgb = load_image(path)
            if cfg.color_order == "BGR":
                rgb = rgb[:, :, ::-1].copy()
            self.images.append(v2.functional.pil_to_tensor(resize(Image.fromarray(rgb))))
        tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
        self.train = v2.Compose([v2.RandomCrop(cfg.crop_size), v2.RandomHorizontalFlip(), *tail])
        self.eval = v2.Compose([v2.CenterCrop(cfg.crop_size), *tail])
        self.rng = np.random.default_rng(seed)

    def center(self, n: int) -> torch.Tensor:
        return torch.stack([self.eval(img) for img in self.images[:n]])

    def random(self, n: int) -> torch.Tensor:
        return torch.stack([self.train(self.images[i])
                            for i in self.rng.integers(0, len(self.images), n)])


def distill_for_int8(model: EmbeddingModel, files: list[Path], cfg: Preprocess,
                     options: QATOptions = QATOptions(),
                     progress: Callable[[int, float], None] | None = None,
                     ) -> tuple[EmbeddingModel, list[tuple[str, float, float]]]:
    """A copy of ``model`` (BatchNorm folded, same fp32 function) fine-tuned so that its
    simulated int8 embedding matches ``model``'s fp32 embedding on ``files``, and the
    activation ranges it was tuned with: ``(kind, rmin, rmax)`` per quantised tensor in
    execution order (``quantize.activation_overrides`` hands them to onnxruntime).

    ``progress(step, mean cosine of the simulated int8 to fp32 over the last steps)``."""
    if not files:
        raise TledgeError("quantisation-aware distillation needs images")
    run = Run(None, Dist(), torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(options.seed)
    algo = _Distil(model, files, cfg, options, run.device)
    recent: list[float] = []

    def on_step(step: int, logs: dict) -> None:
        recent[:] = (recent + [logs["cosine"]])[-10:]
        if progress:
            progress(step, float(np.mean(recent)))

    Trainer(algo, run, options.steps).epoch(0, on_step)
    return algo.result()


class _Distil(Algorithm):
    """The student's simulated int8 embedding against the teacher's fp32 one (1 - cosine)
    on random crops of unlabelled images; weights and activation step sizes learn."""

    amp = False           # the simulation is exact fp32 arithmetic on the int8 grid

    def __init__(self, model: EmbeddingModel, files: list[Path], cfg: Preprocess,
                 options: QATOptions, device: torch.device) -> None:
        self.o, self.device = options, device
        self.teacher = copy.deepcopy(model).to(device).eval()
        self.student = copy.deepcopy(model).to(device).eval()
        fold_batchnorm(self.student)
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.sim, self.observers = simulate_int8(self.student, options.float_first,
                                                 options.float_last, options.weight_qmax)
        self.views = _Views(files, cfg, options.seed)
        self.weights = list(self.student.parameters())
        _calibrate(self.sim, self.observers, self.views.center(options.calib_images).to(device))
        for fq in self.observers:
            fq.learn()

    def modules(self) -> dict[str, nn.Module]:
        return {"sim": self.sim}

    def param_groups(self) -> list[dict]:
        return [{"params": self.weights, "lr": self.o.lr},
                {"params": [fq.scale for fq in self.observers], "lr": 10 * self.o.lr}]

    def batches(self, epoch: int, dist: Dist):
        for _ in range(self.o.steps):
            yield self.views.random(self.o.batch).to(self.device)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            target = self.teacher.embed(x)
        cos = F.cosine_similarity(self.sim(x), target, dim=1)
        return (1.0 - cos).mean(), {"cosine": float(cos.detach().mean())}

    def result(self) -> tuple[EmbeddingModel, list[tuple[str, float, float]]]:
        """The student with plain (tuned) weights, and the learned activation ranges."""
        ranges = [(fq.kind, *fq.range()) for fq in self.observers]
        for module in self.student.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for p in self.student.parameters():
            p.requires_grad_(False)
        return self.student.cpu().eval(), ranges


def _calibrate(sim: fx.GraphModule, observers: list[ActivationFakeQuant],
               images: torch.Tensor, chunk: int = 16) -> None:
    for fq in observers:
        fq.reset()
        fq.observing = True
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            sim(images[i:i + chunk])
    for fq in observers:
        fq.observing = False


def simulated_cosine(model: EmbeddingModel, student: EmbeddingModel, images: torch.Tensor,
                     calib: torch.Tensor | None = None,
                     ranges: list[tuple[str, float, float]] | None = None,
                     options: QATOptions = QATOptions()) -> np.ndarray:
    """Per-image cosine between ``model``'s fp32 embedding and ``student``'s simulated int8
    one, with min-max ranges from ``calib`` or the given ``ranges``: a quick check without
    ONNX Runtime."""
    student = copy.deepcopy(student)
    if any(isinstance(m, nn.BatchNorm2d) for m in student.modules()):
        fold_batchnorm(student)
    sim, observers = simulate_int8(student, options.float_first, options.float_last,
                                   options.weight_qmax)
    if ranges is None:
        _calibrate(sim, observers, calib)
    else:
        for fq, (_, lo, hi) in zip(observers, ranges, strict=True):
            fq.lo.fill_(lo)
            fq.hi.fill_(hi)
    with torch.no_grad():
        return F.cosine_similarity(sim(images), model.embed(images), dim=1).numpy()


def simulated_kinds(model: EmbeddingModel, options: QATOptions = QATOptions()) -> list[str]:
    """The kinds of the simulation's quantisation points, in execution order."""
    student = copy.deepcopy(model).eval()
    fold_batchnorm(student)
    return [fq.kind for fq in simulate_int8(student, options.float_first, options.float_last,
                                            options.weight_qmax)[1]]


def export_int8(model: EmbeddingModel, info, reference: Path, output: Path, quant,
                options: QATOptions = QATOptions(), export_options=None,
                progress: Callable[[int, float], None] | None = None) -> dict:
    """Distil ``model`` for int8 on ``quant``'s calibration folder, export that stand-in
    (fp32, parity-checked) and quantise it with ONNX Runtime as ``quant`` says; the gate
    compares the int8 file with ``reference``, the fp32 export of ``model``. Returns the
    gate report; nothing is written at ``output`` unless it passes (or ``--force``)."""
    import dataclasses
    import tempfile

    from tledge.train.export import ExportOptions, export_embedding_model
    from tledge.train.quantize import (
        calibration_files,
        check_lines_up,
        reduce_precision,
        resolve_reduce_range,
    )

    # the simulation trains on the grid onnxruntime will use (None resolves the same way
    # in reduce_precision, which records the option as given)
    reduce_range = resolve_reduce_range(quant.reduce_range)
    options = dataclasses.replace(options, float_first=quant.float_first,
                                  float_last=quant.float_last,
                                  weight_qmax=WEIGHT_QMAX if reduce_range else WEIGHT_QMAX_8BIT)
    check_lines_up(reference, simulated_kinds(model, options), quant.float_first,
                   quant.float_last)  # before minutes of distillation, not after
    files = calibration_files(quant, options.images)
    student, ranges = distill_for_int8(model, files, info.preprocess, options, progress)
    # The export stamps the stand-in's own fingerprint from its graph.
    stand_in_info = dataclasses.replace(
        info, weights=f"{info.weights}; distilled for int8 ({options.steps} steps)")
    recipe = {"qat": {"steps": options.steps, "batch": options.batch, "lr": options.lr,
                      "weight_qmax": options.weight_qmax,
                      "activation_ranges": "learned",
                      "images": len(files), "loss": "1 - cosine to the fp32 embedding"}}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".qat-") as tmp:
        stand_in = Path(tmp) / "int8-ready.fp32.onnx"
        export_embedding_model(student, stand_in_info, stand_in, export_options or ExportOptions())
        return reduce_precision(stand_in, output, quant, reference=reference, recipe=recipe,
                                ranges=ranges)
