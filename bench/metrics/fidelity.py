"""torch-fidelity adapters: bench's feature extractors as torch-fidelity extractors, and one feature pass.

Two feature spaces (DESIGN.md, "Metrics"):

* ``domain``: the domain classifier of ``bench.metrics.domain`` (``bench-domain``); for
  ``toy2d`` points the identity (``bench-identity``: the points are their own features);
* ``inception``: torch-fidelity's ``inception-v3-compat`` graph with the offline weights of
  ``bench.metrics.inception``, run as ``bench.metrics.inception_fast.FastInceptionV3`` (the same
  features to ~1e-5; ``inception_extractor``).

Both bench extractors are ``FeatureExtractorBase`` subclasses registered in torch-fidelity's
registry when this module is imported (the only way to reach them), so
``torch_fidelity.calculate_metrics(..., feature_extractor="bench-domain",
feature_extractor_weights_path=<net file>)`` computes the same FID/KID/PR as bench does.
bench itself runs each extractor once per sample set (``Extractor.extract``) and feeds
torch-fidelity's metric functions from the features.

Importing this module imports torch-fidelity, which imports torchvision (~2.5 s): the
evaluators import it where metrics are computed, so ``bench list`` and ``validate`` stay fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from bench.data import Dataset
from bench.errors import BenchError
from bench.metrics import inception
from bench.metrics.caches import clear_references
from bench.metrics.domain import DOMAIN_VERSION, ensure_domain_net, load_domain_net, to_unit
from bench.metrics.inception_fast import EXTRACTOR_NAMES, FastInceptionV3

if TYPE_CHECKING:
    from bench.metrics.quality import InceptionPrecision  # "fp32" | "bf16-approx": the suite's option

DOMAIN_EXTRACTOR = "bench-domain"  # torch-fidelity registry names
IDENTITY_EXTRACTOR = "bench-identity"


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of the domain net: uint8 (B, C, H, W) -> ``features`` and/or ``logits``.

    Pass the cached net file as ``feature_extractor_weights_path`` (``ensure_domain_net``).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path= (bench.metrics.domain.ensure_domain_net)")
        self.net = load_domain_net(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected uint8 (B, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
        feats, logits = self.net(to_unit(x))
        out = {"features": feats, "logits": logits}
        return tuple(out[k] for k in self.features_list)


class IdentityFeatureExtractor(FeatureExtractorBase):
    """Points are their own features (toy2d's domain space; also the analytic-Gaussian tests)."""

    def __init__(self, name: str, features_list: list[str], **kwargs: Any):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x.flatten(1).float(),)  # (B, D)


def register_extractors() -> None:
    """Make ``bench-domain`` and ``bench-identity`` known to torch-fidelity by name (idempotent:
    torch-fidelity's registry rejects duplicates)."""
    for name, cls in ((DOMAIN_EXTRACTOR, DomainFeatureExtractor), (IDENTITY_EXTRACTOR, IdentityFeatureExtractor)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)


register_extractors()


# ---------------------------------------------------------------------------------------------
# One feature pass


@dataclass
class Extractor:
    """A ready feature extractor of one space plus what identifies it in cache keys."""

    space: str  # "domain" | "inception"
    module: FeatureExtractorBase
    key: str  # extractor name + version + weights digest
    channels: int | None = None  # inception wants 3 channels: grayscale is repeated
    rename: dict[str, str] = field(default_factory=dict)  # torch-fidelity layer name -> ours ("2048" -> "features")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and x.dim() == 4 and x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise BenchError(f"the {self.space} feature space needs 1 or {self.channels} channels, got {x.shape[1]}")
            x = x.expand(-1, self.channels, -1, -1)  # grayscale -> RGB, (B, 3, H, W)
        return x

    def extract(self, x: torch.Tensor, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """One pass over ``x`` in batches; float32 CPU features by name: {"features": (N, F), ...}."""
        names = [self.rename.get(k, k) for k in self.module.get_requested_features_list()]
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in names}
        with torch.no_grad():
            for b in x.split(batch_size):
                out = self.module(self.prepare(b).to(device))
                for k, v in zip(names, out):
                    parts[k].append(v.float().cpu())
        return {k: torch.cat(v) for k, v in parts.items()}


_EXTRACTORS: dict[tuple[str, str, str], Extractor] = {}  # loaded instruments, reused within a process


def domain_extractor(ds: Dataset, device: torch.device, min_accuracy: float | None = None) -> Extractor:
    """The domain extractor for ``ds`` (building and caching its net on first use)."""
    if ds.kind == "points":
        key = (IDENTITY_EXTRACTOR, "", str(device))
        if key not in _EXTRACTORS:
            module = IdentityFeatureExtractor(IDENTITY_EXTRACTOR, ["features"])
            _EXTRACTORS[key] = Extractor("domain", module, f"{IDENTITY_EXTRACTOR}-v{DOMAIN_VERSION}")
        return _EXTRACTORS[key]
    path = ensure_domain_net(ds, min_accuracy)
    key = (DOMAIN_EXTRACTOR, str(path), str(device))
    if key not in _EXTRACTORS:
        module = DomainFeatureExtractor(DOMAIN_EXTRACTOR, ["features", "logits"], feature_extractor_weights_path=str(path))
        _EXTRACTORS[key] = Extractor("domain", module.to(device), f"{DOMAIN_EXTRACTOR}-{path.stem}")
    return _EXTRACTORS[key]


def inception_extractor(device: torch.device, precision: InceptionPrecision = "fp32") -> Extractor:
    """The FID Inception-v3 (torch-fidelity's graph, the offline weights) as ``FastInceptionV3``: pool3 (2048-d).

    ``"fp32"`` is the exact path: torch-fidelity's ``inception-v3-compat`` features to ~1e-5 (folded batch
    norms change the rounding only; tests/test_fast_metrics.py). ``"bf16-approx"`` runs the trunk in
    bfloat16: features move by ~2 %, FID by up to ``inception_fast.BF16_FID_TOLERANCE`` (relative). The
    extractor's name is in its cache key, so features of the two paths, and of torch-fidelity's own
    extractor (cached by earlier versions), never mix.
    """
    internal = "bf16" if precision == "bf16-approx" else "fp32"
    name = next(n for n, p in EXTRACTOR_NAMES.items() if p == internal)
    path = inception.weights_path()
    key = (name, str(path), str(device))
    if key not in _EXTRACTORS:
        module = FastInceptionV3(name, [inception.FEATURE_LAYER], feature_extractor_weights_path=str(path), precision=internal)
        tag = f"{name}-{inception.weights_sha256(path)[:12]}"
        _EXTRACTORS[key] = Extractor("inception", module.to(device), tag, channels=3,
                                     rename={inception.FEATURE_LAYER: "features"})
    return _EXTRACTORS[key]


def clear_memory_caches() -> None:
    """Forget loaded extractors and references (tests that point BENCH_CACHE elsewhere)."""
    _EXTRACTORS.clear()
    clear_references()


def cache_files_in_use() -> list[Path]:
    """The files behind the extractors and references this process has loaded (net weights, reference
    features): what a worker on another machine needs to evaluate without rebuilding them (executors)."""
    from bench.metrics.caches import _REFERENCES

    paths = {Path(key[1]) for key in _EXTRACTORS if key[1]}
    paths |= {Path(ref["_path"]) for ref in _REFERENCES.values() if "_path" in ref}
    return sorted(p for p in paths if p.is_file())
