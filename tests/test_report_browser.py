"""A run's index.html in a real browser (headless Chromium): it loads without console errors, the page never
scrolls sideways (wide tables scroll inside their box) and every figure is there and decodes (issue 13 part 6)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from bench.config import load_suite
from bench.runner import run_suite
from test_sweep import SWEEP

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected first in <head>: every uncaught error, failed resource and console.error call is kept.
PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src) || e)), true);
const __ce = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); __ce(...a); };
</script>"""
# Injected last in <body>: once everything has loaded, what the test checks goes into a data attribute.
PROBE_TAIL = """<script>
window.addEventListener("load", () => {
  const d = document.documentElement, imgs = [...document.images];
  document.body.setAttribute("data-probe", JSON.stringify({
    errors: window.__errors, page_width: d.scrollWidth, view_width: d.clientWidth,
    images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    alts: imgs.map(i => i.alt)}));
});
</script>"""


def render_in_browser(html_path, width: int = 1280) -> dict:
    """Load ``html_path`` (with the probes injected into a copy) in headless Chromium; the probe's findings."""
    text = html_path.read_text()
    probed = html_path.with_name("probe.html")
    probed.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1))
    out = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--window-size={width},900", "--virtual-time-budget=10000", "--dump-dom",
                          probed.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-probe="([^"]*)"', out.stdout)
    assert m, f"the probe did not run; chromium said: {out.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium); "
                                             "the report's browser check is skipped")
def test_the_report_renders_in_a_browser_without_errors_or_sideways_scroll(tmp_path, write_suite):
    p = write_suite(SWEEP)
    run_dir = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True)
    probe = render_in_browser(run_dir / "index.html", width=1024)
    assert probe["errors"] == []
    assert probe["page_width"] <= probe["view_width"], "the page scrolls sideways: a table or figure is too wide"
    assert probe["broken"] == []
    alts = probe["alts"]
    assert any(a.startswith("The trilemma:") for a in alts)  # the headline figure
    assert any(a.startswith("Quality vs sampling cost") for a in alts)  # the sweep's quality-NFE curves
    # a sample grid per row: the model and its four sweep points
    assert sum(a.startswith("samples of dm") for a in alts) == 5
