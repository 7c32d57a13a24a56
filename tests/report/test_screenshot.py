"""The HTML report as a person sees it: opened in headless Chromium, every plot image decoded and drawn."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from scalesim.report.build import run_report
from tests.report.sample import sample_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
COUNT_DECODED_IMAGES = """
<script>
window.addEventListener("load", () => {
  const drawn = [...document.images].filter((img) => img.complete && img.naturalWidth > 100);
  document.body.setAttribute("data-images-drawn", String(drawn.length));
});
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/test installs it as root)")
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    html_path, _ = run_report(sample_results(), tmp_path)
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", COUNT_DECODED_IMAGES + "</body>"))
    profile = tmp_path / "chromium-profile"
    common = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert 'data-images-drawn="3"' in dom.stdout, dom.stderr[-2000:]
    screenshot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1200,2400", html_path.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert screenshot.stat().st_size > 50_000  # a page of plots and tables, not a blank page
