"""Registries resolve code from outside bench: an import path ``package.module:Object`` or a name an installed
distribution declares in an entry-point group; anything that does not fit the interface is a one-line BenchError
naming what is missing, and ``bench validate`` reports it at the suite's file and line."""
from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest

from bench.config import parse_suite
from bench.data import DATASETS
from bench.errors import BenchError
from bench.families import FAMILIES, GenerativeModel
from bench.registry import Registry, check_class
from conftest import run_cli

PLUGIN = '''
import torch
from bench.data import Dataset, DatasetOptions, DatasetSource
from bench.families.base import FamilyOptions, GenerativeModel


class GoodFamily(GenerativeModel):
    """A family that satisfies the interface."""

    family = "good"

    def training_step(self, x, y):
        return {"loss": torch.zeros(())}

    def sample(self, n, generator, y=None):
        return torch.zeros(n, *self.spec.shape)


class NoSample(GenerativeModel):
    family = "nosample"

    def training_step(self, x, y):
        return {}


class Unnamed(GoodFamily):
    family = ""


class BadOptions(GoodFamily):
    Options = dict


class NotAFamily:
    pass


def not_a_class():
    pass


class Ones(DatasetSource):
    """Four images of ones."""

    class Options(DatasetOptions):
        n: int = 4

    def load(self, options, cache_dir):
        x = torch.ones(options.n, 1, 8, 8, dtype=torch.uint8)
        y = torch.zeros(options.n, dtype=torch.long)
        return Dataset("ones", "image", x, y, x, y, num_classes=1)


class NoLoad(DatasetSource):
    pass


class ReturnsDict(DatasetSource):
    def load(self, options, cache_dir):
        return {}
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    """A module ``byo_plugin_<n>`` importable from tmp_path; returns its name."""
    name = f"byo_plugin_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_import_path_resolves_and_is_cached(plugin):
    entry = FAMILIES.get(f"{plugin}:GoodFamily")
    assert entry.cls.__name__ == "GoodFamily" and entry.description == "A family that satisfies the interface."
    assert FAMILIES.get(f"{plugin}:GoodFamily") is entry
    ds = DATASETS.get(f"{plugin}:Ones")
    assert ds.options().n == 4 and ds.description == "Four images of ones."


def test_builtins_satisfy_the_interface_they_impose():
    for name, entry in FAMILIES.items():
        assert check_class(entry.cls, GenerativeModel, name, "family") is entry.cls


@pytest.mark.parametrize("target,message", [
    ("no_such_module_xyz:Thing", "no module named 'no_such_module_xyz'; install the package"),
    ("{p}:Missing", "{p} has no attribute 'Missing'"),
    ("{p}:GoodFamily.nope", "{p}.GoodFamily has no attribute 'nope'"),
    ("{p}:NoSample", "NoSample does not define sample (a family defines: "),
    ("{p}:Unnamed", "Unnamed does not define family"),
    ("{p}:BadOptions", "BadOptions.Options must be a subclass of bench.families.base.FamilyOptions"),
    ("{p}:NotAFamily", "is class NotAFamily, not a subclass of bench.families.base.GenerativeModel"),
    ("{p}:not_a_class", "is a function, not a subclass of bench.families.base.GenerativeModel"),
    ("a:b:c", "is not an import path: write package.module:Object"),
])
def test_family_import_path_errors_name_what_is_missing(plugin, target, message):
    target, message = target.format(p=plugin), message.format(p=plugin)
    with pytest.raises(BenchError) as err:
        FAMILIES.get(target)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_dataset_import_path_errors(plugin):
    from bench.data import load_dataset

    with pytest.raises(BenchError, match="NoLoad does not define load"):
        DATASETS.get(f"{plugin}:NoLoad")
    with pytest.raises(BenchError, match=r"not a subclass of bench.data.DatasetSource"):
        DATASETS.get(f"{plugin}:GoodFamily")
    with pytest.raises(BenchError, match="the loader returned a dict, not a bench.data.Dataset"):
        load_dataset(f"{plugin}:ReturnsDict")
    ds = load_dataset(f"{plugin}:Ones", {"n": 3})
    assert ds.train_x.shape == (3, 1, 8, 8)
    with pytest.raises(BenchError, match=r"dataset .*:Ones: nn: Extra inputs"):
        load_dataset(f"{plugin}:Ones", {"nn": 3})


def test_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "byo_broken_mod.py").write_text("import no_such_dependency_abc\n")
    (tmp_path / "byo_raising_mod.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match=r"importing byo_broken_mod failed: ModuleNotFoundError: No module named 'no_such_dependency_abc'"):
        FAMILIES.get("byo_broken_mod:X")
    with pytest.raises(BenchError, match=r"importing byo_raising_mod failed: RuntimeError: boom$"):
        FAMILIES.get("byo_raising_mod:X")


def _install_dist(site: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution (what pip leaves in site-packages): METADATA and entry_points.txt."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_entry_points_resolve_list_and_conflict(plugin, tmp_path, monkeypatch):
    site = tmp_path / "site"
    _install_dist(site, "byo-one", f"""
        [bench.families]
        good_one = {plugin}:GoodFamily
        broken = {plugin}:NoSample
        gone = byo_missing_module_q:X
        twice = {plugin}:GoodFamily
        [bench.datasets]
        ones = {plugin}:Ones
    """)
    _install_dist(site, "byo-two", f"""
        [bench.families]
        twice = {plugin}:Unnamed
    """)
    monkeypatch.syspath_prepend(str(site))
    assert {"good_one", "broken", "twice", "vae"} <= set(FAMILIES.names())
    assert "good_one" not in FAMILIES  # `in` is about built-ins: it never imports plugins
    assert FAMILIES.get("good_one").cls.__name__ == "GoodFamily"
    assert DATASETS.get("ones").options().n == 4
    with pytest.raises(BenchError, match=r"'broken' \(entry point .*NoSample' in group bench.families of byo-one 1.0\): "
                                         r"NoSample does not define sample"):
        FAMILIES.get("broken")
    with pytest.raises(BenchError, match=r"loading it failed: ModuleNotFoundError.*; reinstall or uninstall byo-one 1.0"):
        FAMILIES.get("gone")
    with pytest.raises(BenchError, match=r"'twice' is declared by more than one installed package .*byo-one 1.0.*byo-two 1.0"):
        FAMILIES.get("twice")
    with pytest.raises(BenchError, match=r"unknown family 'nope'; choose one of: autoencoder, .*broken.*good_one.*"
                                         r"\(or an import path package.module:Object, or a name an installed package "
                                         r"declares in the entry-point group bench.families\)"):
        FAMILIES.get("nope")


def test_registry_without_adapter_resolves_nothing_external():
    r: Registry[int] = Registry("metric")
    r.register("one", 1)
    with pytest.raises(BenchError, match=r"^unknown metric 'os:getcwd'; choose one of: one$"):
        r.get("os:getcwd")


HEAD = "name: a\ndataset: digits\nbudget: {steps: 5}\nmodels:\n"


def test_suite_validation_reports_file_line_and_field(plugin):
    cfg = parse_suite(HEAD + f"  - {{name: m, family: '{plugin}:GoodFamily'}}\n", "s.yaml")
    assert cfg.models[0].family == f"{plugin}:GoodFamily"
    with pytest.raises(BenchError) as err:
        parse_suite(HEAD + "  - name: ok\n    family: vae\n  - name: m\n    family: " + plugin + ":NoSample\n", "s.yaml")
    assert str(err.value).startswith(f"s.yaml:8: models[1].family: family '{plugin}:NoSample': NoSample does not define sample")
    with pytest.raises(BenchError, match=rf"^s.yaml:2: dataset.name: dataset '{plugin}:Nope': {plugin} has no attribute 'Nope'"):
        parse_suite(f"name: a\ndataset: {{name: '{plugin}:Nope'}}\nbudget: {{steps: 5}}\nmodels:\n  - {{name: m, family: vae}}\n", "s.yaml")
    with pytest.raises(BenchError, match=r"^s.yaml:2: dataset.n: Input should be a valid integer"):
        parse_suite(f"name: a\ndataset: {{name: '{plugin}:Ones', n: many}}\nbudget: {{steps: 5}}\nmodels:\n  - {{name: m, family: vae}}\n", "s.yaml")


def test_validate_cli_prints_one_line(plugin, tmp_path, write_suite):
    suite = write_suite(HEAD + f"  - {{name: m, family: '{plugin}:NoSample'}}\n")
    proc = run_cli("validate", str(suite), env={"PYTHONPATH": f"{Path(__file__).resolve().parent.parent}:{tmp_path}"})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and f"{suite}:5: models[0].family:" in proc.stderr, proc.stderr
    assert "does not define sample" in proc.stderr


def test_required_alternatives_and_resolution_order(monkeypatch):
    class Base:
        required = ("name", "loss|training_step")
        name = ""

        def loss(self):
            raise NotImplementedError

        def training_step(self):
            raise NotImplementedError

    class ByLoss(Base):
        name = "a"

        def loss(self):
            return 0

    class ByStep(Base):
        name = "b"

        def training_step(self):
            return 0

    class Neither(Base):
        name = "c"

    assert check_class(ByLoss, Base, "x", "thing") is ByLoss and check_class(ByStep, Base, "x", "thing") is ByStep
    with pytest.raises(BenchError, match=r"Neither does not define loss or training_step \(a thing defines: name, "
                                         r"loss or training_step\)"):
        check_class(Neither, Base, "x", "thing")
    r: Registry[type] = Registry("thing", adapt=lambda obj, where: check_class(obj, Base, where, "thing"))
    r.register("builtin", ByLoss)
    mod = types.ModuleType("byo_order_mod")
    mod.B, mod.A = ByStep, ByLoss
    monkeypatch.setitem(sys.modules, "byo_order_mod", mod)
    r.get("byo_order_mod:B")
    r.get("byo_order_mod:A")
    assert [n for n, _ in r.in_order()] == ["builtin", "byo_order_mod:B", "byo_order_mod:A"]
