"""Feature spaces for sample-quality metrics, and the on-disk caches that make them cheap.

Two feature spaces (DESIGN.md, "Metrics"):

* ``domain``: a small CNN classifier that bench trains itself on the dataset's train split,
  deterministically, once; cached under ``cache_dir()/features``. Its penultimate layer
  (``DomainNet.feat_dim`` values after a ReLU, like Inception's pool3) is the feature vector
  and its softmax gives class predictions (class coverage, classifier score). For ``toy2d``
  points the domain space is the identity: the points are their own features.
* ``inception``: torch-fidelity's ``inception-v3-compat`` with the offline weights of
  ``bench.metrics.inception``.

Both extractors are torch-fidelity ``FeatureExtractorBase`` subclasses registered in its
registry (``bench-domain``, ``bench-identity``), so ``torch_fidelity.calculate_metrics(...,
feature_extractor="bench-domain", feature_extractor_weights_path=<net file>)`` computes the
same FID/KID/PR as bench does. bench itself runs each extractor once per sample set
(``extract``) and feeds torch-fidelity's metric functions from the features.

Reference (real test-split) features are cached on disk keyed by dataset (name and a
fingerprint of its data), split, extractor (name, version, weights digest), sample count
and subset seed (``reference_features``).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from bench.data import Dataset, cache_dir
from bench.errors import BenchError
from bench.io import atomic_torch_save
from bench.families.nets import downsample_plan

# ---------------------------------------------------------------------------------------------
# The domain classifier

# Bump when the architecture or the training recipe changes: it is part of every cache key.
DOMAIN_VERSION = "1"
DOMAIN_EXTRACTOR = "bench-domain"  # torch-fidelity registry names
IDENTITY_EXTRACTOR = "bench-identity"
DOMAIN_SEED = 0

# Test accuracy a freshly built domain net must reach, per dataset. MNIST: the 99%
# (measured 99.28%). fashion_mnist: small CNNs trained for a few epochs reach ~90-92%, so 89%
# catches a broken build without failing a healthy one (measured 91.06%). digits (scikit-learn
# 8x8, 297 test images, one error = 0.34%): 95% (measured 99.33%). Other image datasets: 90%
# unless the suite sets eval.quality.domain_min_accuracy.
MIN_TEST_ACCURACY: dict[str, float] = {"mnist": 0.99, "fashion_mnist": 0.89, "digits": 0.95}
DEFAULT_MIN_TEST_ACCURACY = 0.90


@dataclass(frozen=True)
class DomainRecipe:
    """Architecture and training recipe of the domain net; ``tag`` goes into cache keys."""

    width: int = 32  # channels of the first conv; doubled at each downsampling
    feat_dim: int = 128  # penultimate (feature) dimension
    epochs: int = 3  # passes over the train split ...
    min_examples: int = 60_000  # ... but at least this many examples (small datasets train longer)
    batch_size: int = 128
    lr: float = 3e-3  # peak of the one-cycle schedule (Adam)
    shift: int = 1  # random translation by up to this many pixels (seeded augmentation), 0 = none

    @property
    def tag(self) -> str:
        return f"cnn-w{self.width}-f{self.feat_dim}-e{self.epochs}-s{self.shift}-v{DOMAIN_VERSION}"


def random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image (B, C, H, W) by its own random offset in [-shift, shift]^2, zero fill."""
    if shift == 0:
        return x
    b, _, h, w = x.shape
    xp = F.pad(x, (shift, shift, shift, shift))  # (B, C, H + 2s, W + 2s)
    off = torch.randint(0, 2 * shift + 1, (b, 2), generator=gen)  # (B, 2) crop corners
    rows = off[:, :1] + torch.arange(h)  # (B, H)
    cols = off[:, 1:] + torch.arange(w)  # (B, W)
    out = xp[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


class DomainNet(nn.Module):
    """Small CNN classifier: (B, C, H, W) in [0, 1] -> (features (B, feat_dim), logits (B, K)).

    Stride-2 convolutions halve the resolution while it stays even and above 7 (the shared
    ``downsample_plan``: 28 -> 14 -> 7, 8 -> 4); no dropout, so every random draw is the seeded
    init and data order.
    """

    def __init__(self, in_channels: int, size: int, num_classes: int, width: int, feat_dim: int):
        super().__init__()
        sizes = downsample_plan(size) or [size]  # 28 -> [14, 7]; 8 -> [4]; odd sizes: no downsampling
        layers: list[nn.Module] = []
        ch = in_channels
        for i, s in enumerate(sizes):
            k, stride, out = (5 if i == 0 else 3), (2 if s < size else 1), width * 2**i
            # a 5x5 first conv sees a whole stroke; stride-2 convs are much cheaper on CPU than conv + pool
            layers += [nn.Conv2d(ch, out, k, stride, k // 2), nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        self.conv = nn.Sequential(*layers)  # (B, C, H, W) -> (B, ch, s, s)
        self.fc = nn.Linear(ch * sizes[-1] ** 2, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc(self.conv(x).flatten(1)))  # (B, feat_dim)
        return h, self.head(h)  # (B, feat_dim), (B, K)


def _seeded_init_(net: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default Conv/Linear init, but drawn from ``gen`` instead of the global RNG."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
            bound = 1 / math.sqrt(m.weight[0].numel())
            m.bias.data.uniform_(-bound, bound, generator=gen)


@contextlib.contextmanager
def _deterministic_cpu(threads: int = 1) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the build (restored afterwards).

    One thread: CPU reductions then do not depend on how many cores a machine has, and on
    this 2-core machine small convolutions run faster single-threaded anyway (no spinning).
    """
    prev_det, prev_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0  # uint8 -> [0, 1], the family convention (base.py)


def _classify(net: DomainNet, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(_to_unit(b))[1] for b in x.split(batch_size)])  # (N, K) logits


def min_accuracy_for(name: str, override: float | None = None) -> float:
    return override if override is not None else MIN_TEST_ACCURACY.get(name, DEFAULT_MIN_TEST_ACCURACY)


def train_domain_net(ds: Dataset, recipe: DomainRecipe = DomainRecipe(), seed: int = DOMAIN_SEED) -> tuple[DomainNet, dict[str, Any]]:
    """Train the domain classifier on ``ds``'s train split on CPU, deterministically.

    Seeded init and data order (one ``torch.Generator``), Adam with a one-cycle schedule,
    deterministic kernels, one thread. Returns the net (eval mode) and what the build spent.
    """
    c, h, w = ds.shape
    if h != w:
        raise BenchError(f"dataset {ds.name!r}: the domain feature net needs square images, got {h}x{w}")
    gen = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    with _deterministic_cpu():
        net = DomainNet(c, h, ds.num_classes, recipe.width, recipe.feat_dim)
        _seeded_init_(net, gen)
        n = len(ds.train_x)
        bs = min(recipe.batch_size, n)
        steps = math.ceil(max(recipe.epochs * n, recipe.min_examples) / bs)
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps, pct_start=0.2)
        net.train()
        step = 0
        while step < steps:
            order = torch.randperm(n, generator=gen)  # fixed data order
            for i in range(0, n - bs + 1, bs):  # drop the last partial batch
                if step == steps:
                    break
                idx = order[i : i + bs]
                x = random_shift(_to_unit(ds.train_x[idx]), recipe.shift, gen)  # (B, C, H, W)
                loss = F.cross_entropy(net(x)[1], ds.train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
        net.eval()
        acc = (_classify(net, ds.test_x).argmax(1) == ds.test_y).double().mean().item()
    info = {
        "test_accuracy": acc,
        "build_seconds": time.perf_counter() - t0,
        "build_cpu_seconds": time.process_time() - c0,  # = wall time on an idle machine (one thread)
        "steps": steps,
        "train_examples": n,
        "seed": seed,
        "torch": str(torch.__version__),
    }
    return net, info


# ---------------------------------------------------------------------------------------------
# Dataset fingerprints and cache files

_FINGERPRINTS: dict[int, str] = {}


def _tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes, memoised per tensor object (datasets are not mutated in place)."""
    key = id(t)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
        _FINGERPRINTS[key] = h.hexdigest()
        weakref.finalize(t, _FINGERPRINTS.pop, key, None)
    return _FINGERPRINTS[key]


def split_fingerprint(ds: Dataset, split: str) -> str:
    """12 hex digits identifying the exact content of one split (images and labels)."""
    x, y = (ds.train_x, ds.train_y) if split == "train" else (ds.test_x, ds.test_y)
    return hashlib.sha256((_tensor_digest(x) + _tensor_digest(y)).encode()).hexdigest()[:12]


def features_dir() -> Path:
    return cache_dir() / "features"


def domain_net_path(ds: Dataset, recipe: DomainRecipe = DomainRecipe()) -> Path:
    """Cache file of the domain net: dataset name, architecture/recipe tag and train+test fingerprints."""
    key = f"{split_fingerprint(ds, 'train')}{split_fingerprint(ds, 'test')}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return features_dir() / f"domain-{ds.name}-{recipe.tag}-{digest}.pt"


def ensure_domain_net(
    ds: Dataset, min_accuracy: float | None = None, recipe: DomainRecipe = DomainRecipe()
) -> Path:
    """Path of the cached domain net for ``ds``; trains, checks and saves it on first use.

    The test-accuracy check runs when the net is built and fails loudly (BenchError); a
    cached net is one that passed it. The file holds only tensors and plain values, so it
    loads with ``torch.load(weights_only=True)``.
    """
    if ds.kind != "image":
        raise BenchError(f"dataset {ds.name!r} has {ds.kind}, not images: it has no domain net (its features are the points)")
    path = domain_net_path(ds, recipe)
    if path.exists():
        return path
    net, info = train_domain_net(ds, recipe)
    need = min_accuracy_for(ds.name, min_accuracy)
    if info["test_accuracy"] < need:
        raise BenchError(
            f"domain feature net for {ds.name!r} reached {info['test_accuracy']:.2%} test accuracy < the required "
            f"{need:.2%} (trained on {info['train_examples']} images in {info['build_seconds']:.0f} s); evaluate "
            f"against the full train split (no train_subset) or set eval.quality.domain_min_accuracy"
        )
    c, h, _ = ds.shape
    arch = {"in_channels": c, "size": h, "num_classes": ds.num_classes, "width": recipe.width, "feat_dim": recipe.feat_dim}
    atomic_torch_save({"arch": arch, "state_dict": net.state_dict(), "info": info, "dataset": ds.name, "tag": recipe.tag}, path)
    return path


def load_domain_payload(path: Path | str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_domain_net(path: Path | str) -> DomainNet:
    payload = load_domain_payload(path)
    net = DomainNet(**payload["arch"])
    net.load_state_dict(payload["state_dict"])
    return net.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# torch-fidelity extractors


class DomainFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of the domain net: uint8 (B, C, H, W) -> ``features`` and/or ``logits``.

    Pass the cached net file as ``feature_extractor_weights_path`` (``ensure_domain_net``).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path= (bench.metrics.features.ensure_domain_net)")
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
        feats, logits = self.net(_to_unit(x))
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


for _name, _cls in ((DOMAIN_EXTRACTOR, DomainFeatureExtractor), (IDENTITY_EXTRACTOR, IdentityFeatureExtractor)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:  # torch-fidelity's registry rejects duplicates
        register_feature_extractor(_name, _cls)


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


def inception_extractor(device: torch.device) -> Extractor:
    """torch-fidelity's Inception-v3 (FID graph) with the offline weights; pool3 (2048-d) features."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.metrics import inception

    path = inception.weights_path()
    key = (inception.EXTRACTOR_NAME, str(path), str(device))
    if key not in _EXTRACTORS:
        module = FeatureExtractorInceptionV3(
            inception.EXTRACTOR_NAME, [inception.FEATURE_LAYER], feature_extractor_weights_path=str(path)
        )
        tag = f"{inception.EXTRACTOR_NAME}-{inception.weights_sha256(path)[:12]}"
        _EXTRACTORS[key] = Extractor("inception", module.to(device), tag, channels=3,
                                     rename={inception.FEATURE_LAYER: "features"})
    return _EXTRACTORS[key]


def extract(ext: Extractor, x: torch.Tensor, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One pass of ``ext`` over ``x`` in batches; float32 CPU features by name: {"features": (N, F), ...}."""
    names = [ext.rename.get(k, k) for k in ext.module.get_requested_features_list()]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    with torch.no_grad():
        for b in x.split(batch_size):
            out = ext.module(ext.prepare(b).to(device))
            for k, v in zip(names, out):
                parts[k].append(v.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def reference_subset(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of the reference images: all of the split in order, or a seeded random subset of ``n``."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


REFERENCE_FORMAT = "2"  # bump when the content of reference files changes


def reference_path(ds: Dataset, ext: Extractor, n: int, split: str = "test", seed: int = 0) -> Path:
    name = f"ref{REFERENCE_FORMAT}-{ds.name}-{split}-{split_fingerprint(ds, split)}-{ext.key}-n{n}-s{seed}.pt"
    return features_dir() / name


_REFERENCES: dict[str, dict[str, Any]] = {}  # loaded reference caches, keyed by path


def reference_features(
    ds: Dataset, ext: Extractor, n: int, batch_size: int, device: torch.device, split: str = "test", seed: int = 0
) -> dict[str, Any]:
    """Cached features of ``n`` real images of ``split`` (capped at the split size).

    Returns ``{"features": (n, F), ["logits": (n, K)], "n": n, "labels": (n,)}``; callers may add
    derived statistics with ``update_reference`` (FID mean/covariance, k-NN radii) so they
    too are computed once.
    """
    x = ds.test_x if split == "test" else ds.train_x
    y = ds.test_y if split == "test" else ds.train_y
    n = min(n, len(x))
    path = reference_path(ds, ext, n, split, seed)
    if str(path) in _REFERENCES:
        return _REFERENCES[str(path)]
    if path.exists():
        ref = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    else:
        idx = reference_subset(len(x), n, seed)
        ref = extract(ext, x[idx], batch_size, device)
        ref.update({"n": n, "labels": y[idx], "seed": seed, "split": split, "device": str(device)})
        atomic_torch_save(ref, path)
    ref["_path"] = str(path)
    _REFERENCES[str(path)] = ref
    return ref


def update_reference(ref: dict[str, Any], **items: Any) -> None:
    """Add derived statistics to a reference cache and rewrite it atomically."""
    ref.update(items)
    if "_path" in ref:  # an in-memory reference (tests, ad-hoc use) has no file
        atomic_torch_save({k: v for k, v in ref.items() if k != "_path"}, Path(ref["_path"]))


def clear_memory_caches() -> None:
    """Forget loaded extractors and references (tests that point BENCH_CACHE elsewhere)."""
    _EXTRACTORS.clear()
    _REFERENCES.clear()


def cache_files_in_use() -> list[Path]:
    """The files behind the extractors and references this process has loaded (net weights, reference
    features): what a worker on another machine needs to evaluate without rebuilding them (executors)."""
    paths = {Path(key[1]) for key in _EXTRACTORS if key[1]}
    paths |= {Path(ref["_path"]) for ref in _REFERENCES.values() if "_path" in ref}
    return sorted(p for p in paths if p.is_file())
