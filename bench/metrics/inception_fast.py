"""The standard FID Inception-v3 as fast as a CPU runs it: the exact path, and an approximate bf16 one.

torch-fidelity's ``FeatureExtractorInceptionV3`` runs eagerly in float32, contiguous (NCHW), with
each of its 94 convolutions followed by a separate batch norm and a separate ReLU. On a CPU,
``FastInceptionV3`` runs the same graph, with the same weights and torch-fidelity's own
preprocessing (TF-1.x bilinear resize to 299x299, ``(x - 128) / 128``), but:

* every batch norm folded into its convolution (eval mode: ``w * g / sqrt(v + eps)``,
  ``torch.nn.utils.fusion.fuse_conv_bn_eval``), one pass over the activations less per layer;
* channels-last activations and weights, the layout oneDNN's convolutions are fastest in;
* the ReLU fused into the convolution (oneDNN post-op, ``torch.ops.mkldnn._convolution_pointwise``,
  the op torch's own compiler emits for CPU; plain ``conv`` + ``relu_`` where it is missing);
* inference mode (no autograd bookkeeping).

Its pool3 features equal torch-fidelity's to ~1e-5 absolute (folding changes rounding, nothing
else; tested to <= 1e-4), so FIDs agree to float noise. It is registered in torch-fidelity's
registry as ``inception-v3-compat-fast``.

``precision="bf16"`` (registered as ``inception-v3-compat-bf16-approx``) also runs the
convolutions in bfloat16 (AMX / AVX-512-BF16 tiles, float32 accumulation). It is an
*approximation*: features move by ~2 % (relative L2), and FID by the measured amounts in
docs/metrics.md ("Speed"); ``BF16_FID_TOLERANCE`` is the tolerance those measurements support.
Use it for quick looks and curves, never for numbers compared with exact-path or published FIDs.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from bench.errors import BenchError

Precision = Literal["fp32", "bf16"]
EXTRACTOR_NAMES: dict[str, Precision] = {"inception-v3-compat-fast": "fp32", "inception-v3-compat-bf16-approx": "bf16"}
FEATURE_LAYER = "2048"
# |FID(bf16) - FID(exact)| / FID(exact) stayed below this on real MNIST sample sets (500 vs 500 images;
# scripts/bench_inception.py, docs/metrics.md): the bf16 path is approximate to within this share.
BF16_FID_TOLERANCE = 0.02

try:  # oneDNN convolution with a fused ReLU: present in CPU builds with mkldnn (the op torch.compile emits)
    _CONV_RELU = torch.ops.mkldnn._convolution_pointwise
except (AttributeError, RuntimeError):
    _CONV_RELU = None


class _ConvReLU(nn.Module):
    """A ``BasicConv2d`` with its batch norm folded in: relu(conv(x)), one oneDNN op on CPU."""

    def __init__(self, block: BasicConv2d):
        super().__init__()
        self.conv = fuse_conv_bn_eval(block.conv, block.bn)  # eps 0.001, as the TF graph's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if _CONV_RELU is not None and x.device.type == "cpu":
            return _CONV_RELU(x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "relu", [None], None)
        return F.relu(c(x), inplace=True)


def _fold_and_fuse(net: nn.Module) -> None:
    """Replace every BasicConv2d of ``net`` (in place) by its folded, fused ``_ConvReLU``."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BasicConv2d):
                setattr(parent, name, _ConvReLU(child))


def bf16_supported() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AMX tiles or AVX-512-BF16)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


class FastInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 (pool3, ``"2048"``) with folded batch norms, channels-last layout,
    fused ReLUs and inference mode; ``precision="bf16"`` adds bfloat16 convolutions (approximate).

    Same constructor as torch-fidelity's extractor (``feature_extractor_weights_path=`` is
    ``bench.metrics.inception.weights_path()``), plus ``precision``.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 precision: Precision | None = None, **kwargs: Any):
        if list(features_list) != [FEATURE_LAYER]:
            raise ValueError(f"{name} provides only the pool3 features {[FEATURE_LAYER]}, asked for {features_list}")
        precision = precision or EXTRACTOR_NAMES.get(name, "fp32")
        if precision not in ("fp32", "bf16"):
            raise BenchError(f"Inception precision {precision!r} is not one of ['fp32', 'bf16']")
        if precision == "bf16" and not bf16_supported():
            raise BenchError("the bf16 Inception path needs a CPU with AMX or AVX-512-BF16, and this one has "
                             "neither: use precision='fp32' (the exact path)")
        super().__init__(name, features_list, feature_extractor_weights_path=feature_extractor_weights_path, **kwargs)
        self.precision = precision
        _fold_and_fuse(self)
        self.to(memory_format=torch.channels_last)
        if precision == "bf16":
            self.to(torch.bfloat16)
            # torch-fidelity resizes and scales in float32; the trunk then runs in bfloat16 and its
            # pool3 output is cast back to float32 by torch-fidelity's forward
            self.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, args: (args[0].to(torch.bfloat16),))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            return super().forward(x)


for _name in EXTRACTOR_NAMES:
    if _name not in FEATURE_EXTRACTORS_REGISTRY:  # torch-fidelity's registry rejects duplicates
        register_feature_extractor(_name, FastInceptionV3)


def fast_inception(weights_path: str, precision: Precision = "fp32") -> FastInceptionV3:
    """The fast extractor with the converted FID weights (``bench.metrics.inception.weights_path()``)."""
    name = next(n for n, p in EXTRACTOR_NAMES.items() if p == precision) if precision in ("fp32", "bf16") else str(precision)
    return FastInceptionV3(name, [FEATURE_LAYER], feature_extractor_weights_path=weights_path, precision=precision)
