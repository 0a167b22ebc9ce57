"""Config fuzzing (issue 11 part 1): whatever bytes a suite file holds, ``validate`` and ``run --dry-run``
end in a valid plan or in the one-line error with exit status 2, within bounded time and memory.

Hypothesis throws raw bytes, generated YAML trees, mutated shipped suites and text-level mutations
(anchors, aliases, tags, control bytes, other encodings, deep nesting) at ``load_suite`` and the
dry-run planner. The default profile is quick (CI); ``HYPOTHESIS_PROFILE=thorough`` runs thousands::

    HYPOTHESIS_PROFILE=thorough python -m pytest -q tests/test_reliability_config.py --hypothesis-show-statistics
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bench.metrics  # noqa: F401  (registers every metric, as the CLI does)
from bench.cli import main
from bench.config import MAX_DEPTH, MAX_NODES, MAX_SUITE_BYTES, SuiteConfig, load_suite
from bench.errors import BenchError
from bench.runner import run_suite
from conftest import ROOT, run_cli

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
EXAMPLES = {"ci": int(os.environ.get("BENCH_FUZZ_CI", 40)), "thorough": 1500}[PROFILE]  # per property; four properties
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
CASE_SECONDS = 60.0  # one case: catches a hang or an exponential blow-up; a case takes milliseconds alone
CASE_PEAK_MB = 64.0  # Python allocations while loading one suite (tracemalloc)

OUTCOMES: collections.Counter[str] = collections.Counter()  # "plan" / "error" per property: the figure
WORST = {"seconds": 0.0, "peak_mb": 0.0}  # the slowest case and the largest allocation peak seen
SHIPPED = sorted((ROOT / "suites").glob("*.yaml"))
WORK = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))

# Words the schema knows, so generated trees reach past the first "unknown key".
KEYS = ["name", "description", "dataset", "device", "seeds", "budget", "budgets", "batch_size", "deterministic",
        "threads", "eval", "compare", "models", "family", "options", "checkpoint", "debug", "steps", "seconds",
        "epochs", "examples", "metrics", "n_samples", "quality", "speed", "feature_spaces", "train_subset",
        "latent_dim", "width", "loss", "mults", "nan_at_step", "default", "abs", "rel", "<<"]
WORDS = ["digits", "toy2d", "mnist", "vae", "gan", "flow", "naive_bayes", "diffusion", "cpu", "auto", "cuda",
         "likelihood", "quality", "domain", "inception", "nonsaturating", "ring8"]
NASTY = ["&a ", "*a", "*b", "<<: *a\n", "!!python/object/apply:os.system ['true']", "!!python/name:os.system",
         "!!binary aGk=", "!!set {a}", "!custom x", "!!timestamp 2020-01-01", "\x00", "\x1b", "\t", "\ufeff",
         "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "[" * 60, "{" * 60, "- " * 60, ": ", "? ",
         "#", "'", '"', "\\", "|\n", ">\n", ".inf", "-.inf", ".nan", "1e400", "1.0e+400", "9" * 50, "-9" * 30,
         "0x" + "f" * 30, "0o777", "1:2:3:4:5", "1_000", "~", "null", "yes", "no", "on", "2001-12-14t21:59:43.10-05:00",
         "\u2028", "\ud7ff", "é", "🙂"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "shift_jis"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, -1, 1e308, -1e-308, 2**63, 2**64]),
    st.text(max_size=30), st.sampled_from(WORDS),
)
trees = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=5),
                           st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), kids, max_size=6)),
    max_leaves=40,
)


@pytest.fixture(scope="module", autouse=True)
def _tally():
    """Print the cases tried (with -s): every one ended in a plan or in the one-line error."""
    yield
    if OUTCOMES:
        print(f"\nconfig fuzzing ({PROFILE}): {sum(OUTCOMES.values())} cases, {OUTCOMES['plan']} valid plans, "
              f"{OUTCOMES['error']} one-line errors, 0 uncaught; slowest case {WORST['seconds']:.2f} s, "
              f"largest peak {WORST['peak_mb']:.1f} MB")


def _check(data: bytes, name: str = "case.yaml") -> str:
    """Load ``data`` as a suite file and plan a dry run: return "plan" or "error"; anything else fails the test."""
    path = WORK / name
    path.write_bytes(data)
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        try:
            cfg = load_suite(path)
            assert isinstance(cfg, SuiteConfig)
            with contextlib.redirect_stdout(io.StringIO()):
                run_suite(cfg, path, dry_run=True, reports_root=WORK / "reports")
            outcome = "plan"
        except BenchError as e:
            msg = str(e)
            assert msg and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
            assert e.exit_code == 2
            outcome = "error"
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - t0
    WORST["seconds"], WORST["peak_mb"] = max(WORST["seconds"], seconds), max(WORST["peak_mb"], peak_mb)
    assert seconds < CASE_SECONDS, f"took {seconds:.1f}s"
    assert peak_mb < CASE_PEAK_MB, f"peak {peak_mb:.0f} MB"
    assert not (WORK / "reports").exists(), "a dry run wrote something"
    OUTCOMES[outcome] += 1
    return outcome


# --- properties ---------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_raw_bytes(data):
    _check(data)


@FUZZ
@given(trees, st.sampled_from(ENCODINGS), st.booleans())
def test_fuzz_generated_yaml_trees(tree, encoding, flow):
    text = yaml.safe_dump(tree, allow_unicode=True, default_flow_style=flow, sort_keys=False)
    _check(text.encode(encoding, errors="replace"))


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple, op: str, value: Any) -> Any:
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "unknown" and isinstance(parent[last], dict):
        parent[last][f"x_{abs(hash(str(value))) % 97}"] = value
    return doc


@FUZZ
@given(st.sampled_from(SHIPPED), st.data())
def test_fuzz_mutated_shipped_suites(suite, data):
    """One to four edits of a real suite: delete a field, give it a wrong/huge/NaN value, wrap it, add a key."""
    doc = yaml.safe_load(suite.read_text())
    for _ in range(data.draw(st.integers(1, 4))):
        path = data.draw(st.sampled_from(_paths(doc)))
        doc = _mutate(doc, path, data.draw(st.sampled_from(["delete", "replace", "wrap", "unknown"])), data.draw(trees))
    _check(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode())


@FUZZ
@given(st.sampled_from(SHIPPED), st.data())
def test_fuzz_text_mutations(suite, data):
    """Edits of the file's text: insert YAML syntax, tags, anchors, control characters; duplicate or cut a line;
    re-encode it."""
    text = suite.read_text()
    for _ in range(data.draw(st.integers(1, 5))):
        op = data.draw(st.sampled_from(["insert", "delete", "duplicate_line", "truncate", "anchor_alias"]))
        i = data.draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:i] + data.draw(st.one_of(st.sampled_from(NASTY), st.text(max_size=10))) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + data.draw(st.integers(1, 40)):]
        elif op == "duplicate_line":
            lines = text.splitlines(keepends=True)
            j = data.draw(st.integers(0, max(len(lines) - 1, 0)))
            text = "".join(lines[: j + 1] + lines[j:j + 1] + lines[j + 1:])
        elif op == "truncate":
            text = text[:i]
        else:  # an anchor on one value and an alias somewhere later
            j = data.draw(st.integers(i, len(text)))
            text = text[:i] + "&a " + text[i:j] + "*a" + text[j:]
    _check(text.encode(data.draw(st.sampled_from(ENCODINGS)), errors="replace"))


@FUZZ
@given(st.integers(0, 120_000), st.sampled_from(["flow-seq", "flow-map", "block-seq", "block-map"]),
       st.integers(1, 12), st.integers(1, 12), st.sampled_from(["description", "eval", "models"]))
def test_fuzz_nesting_and_alias_bombs(depth, style, levels, fanout, where):
    """Nesting of any depth in any style, and alias trees of any fan-out and height, under any key."""
    if style == "flow-seq":
        value = "[" * depth + "x" + "]" * depth
    elif style == "flow-map":
        value = "{a: " * depth + "x" + "}" * depth
    elif style == "block-seq":
        value = "\n" + "".join(" " * i + "-\n" for i in range(min(depth, 700))) + " " * min(depth, 700) + "x"
    else:
        value = "\n" + "".join(" " * i + f"k{i}:\n" for i in range(min(depth, 700))) + " " * min(depth, 700) + "x"
    bomb = "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}' if i else 'lol'] * fanout)}]\n" for i in range(levels))
    outcome = _check((HEAD + f"{where}: {value}\n" + bomb).encode())
    assert outcome == "error"  # b0..: are unknown keys; depth or expansion may be refused before that


@FUZZ
@given(st.sampled_from(SHIPPED), st.data())
def test_fuzz_duplicate_keys_are_refused(suite, data):
    """Any top-level key written twice (same value or not) is an error naming the key, never last-one-wins."""
    text = suite.read_text()
    keys = list(yaml.safe_load(text))
    key = data.draw(st.sampled_from(keys))
    value = data.draw(st.sampled_from(["x", "1", "[a]", "{a: 1}", "null"]))
    with pytest.raises(BenchError, match=f"key '{key}' appears twice"):
        _load_text(text.rstrip("\n") + f"\n{key}: {value}\n")
    OUTCOMES["error"] += 1


def _load_text(text: str) -> SuiteConfig:
    path = WORK / "text.yaml"
    path.write_text(text)
    return load_suite(path)


# --- known adversarial files --------------------------------------------------------------------

HEAD = "name: a\ndataset: digits\nbudget: {steps: 5}\nmodels:\n  - {name: m, family: vae}\n"


def _laughs(levels: int = 9) -> str:
    """The "billion laughs": 9 levels of 9 aliases each expand to 9**9 = 387 million strings."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "description: x\n" + "\n".join(lines) + "\n"


ADVERSARIAL = {
    "alias bomb": (HEAD + _laughs(), f"more than {MAX_NODES:,} values once aliases are expanded"),
    "recursive alias": (HEAD + "description: &a [*a]\n", "recursive alias"),
    "deep flow nesting": (HEAD + "description: " + "[" * 200_000 + "]" * 200_000 + "\n",
                          None),  # over the size limit: refused before parsing
    "deep nesting under the size limit": (HEAD + "description: " + "[" * 100_000 + "\n", f"deeper than {MAX_DEPTH}"),
    "deep block nesting": (HEAD + "description:\n" + "- " * 50_000 + "x\n", f"deeper than {MAX_DEPTH}"),
    "deep mapping nesting": (HEAD + "description: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", f"deeper than {MAX_DEPTH}"),
    "duplicate key": (HEAD + "name: b\n", "key 'name' appears twice (first on line 1)"),
    "duplicate nested key": (HEAD.replace("{steps: 5}", "{steps: 5, steps: 6}"), "key 'steps' appears twice"),
    "python object tag": (HEAD + "description: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
                          "tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    "python name tag": (HEAD + "description: !!python/name:os.system\n", "is not allowed"),
    "local tag": (HEAD + "description: !shell ls\n", "tag '!shell' is not allowed"),
    "binary tag": (HEAD + "description: !!binary /w==\n", "is not allowed"),
    "huge integer": (HEAD.replace("steps: 5", "steps: " + "9" * 5000), "has more than 40 characters"),
    "sexagesimal": (HEAD.replace("steps: 5", "steps: " + ":".join(["1"] * 50_000)), "has more than 40 characters"),
    "infinite budget": (HEAD.replace("steps: 5", "seconds: .inf"), "not a finite number"),
    "infinite budget as text": (HEAD.replace("steps: 5", "seconds: 'inf'"), "budget.seconds: Input should be a finite number"),
    "NaN budget": (HEAD.replace("steps: 5", "seconds: .nan"), "not a finite number"),
    "absurd budget": (HEAD.replace("steps: 5", "steps: 1.0e+20"), "budget.steps: "),
    "negative budget": (HEAD.replace("steps: 5", "steps: -5"), "budget.steps: Input should be greater than 0"),
    "seed out of range": (HEAD + "seeds: [" + "9" * 30 + "]\n", "seeds[0]: seed 9"),
    "control character": (HEAD + "description: a\x00b\n", "not allowed in a YAML file"),
    "two documents": (HEAD + "---\n" + HEAD, "but found another document"),
    "list at top level": ("- a\n- b\n", "a suite is a YAML mapping"),
    "empty file": ("", "a suite is a YAML mapping"),
    "only a comment": ("# nothing\n", "a suite is a YAML mapping"),
    "list as a key": (HEAD + "? [a, b]\n: 1\n", "unhashable key"),
    "non-string dataset key": (HEAD.replace("dataset: digits", "dataset: {name: digits, 1: 2}"), "dataset"),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_suite_is_one_line_error_in_bounded_time_and_memory(name):
    text, expected = ADVERSARIAL[name]
    path = WORK / f"adv-{name.replace(' ', '-')}.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(BenchError) as e:
            load_suite(path)
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg and len(msg) < 400, msg
    if expected is not None:
        assert expected in msg, msg
    assert time.perf_counter() - t0 < CASE_SECONDS and peak_mb < CASE_PEAK_MB, (time.perf_counter() - t0, peak_mb)


def test_alias_bomb_is_not_expanded():
    """The bomb above would be 387 million strings; the limit stops composition after MAX_NODES."""
    assert 9**9 > 1000 * MAX_NODES


@pytest.mark.parametrize("encoding,expected", [
    ("latin-1", "not UTF-8 text (byte 0xe9 at offset"), ("utf-16", "the file is UTF-16; save it as UTF-8"),
    ("cp1252", "not UTF-8 text (byte 0xe9"), ("utf-8-sig", None),
])
def test_encodings(encoding, expected):
    path = WORK / f"enc-{encoding}.yaml"
    path.write_bytes((HEAD + "description: café\n").encode(encoding))
    if expected is None:
        assert load_suite(path).description == "café"
    else:
        with pytest.raises(BenchError, match=expected.replace("(", r"\(")):
            load_suite(path)


def test_non_utf8_error_names_the_line():
    path = WORK / "latin.yaml"
    path.write_bytes(HEAD.encode() + b"description: caf\xe9\n")
    with pytest.raises(BenchError, match=r"latin.yaml:6: not UTF-8 text \(byte 0xe9 at offset \d+\)"):
        load_suite(path)


def test_files_over_the_limit_are_refused_before_parsing(monkeypatch):
    path = WORK / "big.yaml"
    path.write_bytes((HEAD + "# " + "x" * MAX_SUITE_BYTES + "\n").encode())

    def no_parse(*a, **k):
        raise AssertionError("parsed a file over the size limit")

    monkeypatch.setattr("bench.config.parse_suite", no_parse)
    with pytest.raises(BenchError, match=f"larger than {MAX_SUITE_BYTES // 1024} KiB"):
        load_suite(path)


def test_not_a_regular_file(tmp_path):
    with pytest.raises(BenchError, match="not a regular file"):
        load_suite(tmp_path)
    with pytest.raises(BenchError, match="not a regular file"):
        load_suite("/dev/zero")


def test_merge_keys_and_anchors_still_work():
    """Anchors, aliases and ``<<`` merges are ordinary YAML and stay allowed; a merged key may be overridden."""
    text = ("name: a\ndataset: digits\nbudget: {steps: 5}\n"
            "models:\n  - &vae {name: m, family: vae, options: {width: 8}}\n"
            "  - {<<: *vae, name: m2, options: {width: 16}}\n  - {<<: *vae, name: m3}\n")
    path = WORK / "merge.yaml"
    path.write_text(text)
    cfg = load_suite(path)
    assert [(m.name, m.family, m.options) for m in cfg.models] == [
        ("m", "vae", {"width": 8}), ("m2", "vae", {"width": 16}), ("m3", "vae", {"width": 8})]


def test_dates_stay_text():
    path = WORK / "date.yaml"
    path.write_text(HEAD + "description: 2024-05-01\n")
    assert load_suite(path).description == "2024-05-01"


@pytest.mark.parametrize("name", ["alias bomb", "python object tag", "duplicate key", "deep flow nesting"])
def test_cli_in_process_exit_2_and_one_line(name, capsys):
    path = WORK / f"cli-{name.replace(' ', '-')}.yaml"
    path.write_text(ADVERSARIAL[name][0])
    for argv in (["validate", str(path)], ["run", str(path), "--dry-run", "--reports-root", str(WORK / "r")]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"bench: error: {path}") and len(err.strip().splitlines()) == 1


def test_cli_subprocess_non_utf8(tmp_path):
    """Through a real process, as a user meets it: exit 2, one line on stderr, no traceback."""
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(HEAD.encode() + b"description: caf\xe9\n")
    r = run_cli("run", str(latin), "--dry-run", "--reports-root", str(tmp_path / "reports"), timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"bench: error: {latin}:6: not UTF-8 text (byte 0xe9 at offset " \
        f"{len(HEAD) + 16}); save the file as UTF-8", r.stderr
