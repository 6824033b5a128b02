"""A real headless browser (Debian's chromium) for tests of generated HTML pages.

Tests that need it call :func:`require_chromium`, which skips them where
``/usr/bin/chromium`` is absent (tests never install it). Every run gets its own profile
directory and no network chatter of its own (no component updates, sync, QUIC), so a
page that needs the network shows up broken instead of quietly fetching.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip
TIMEOUT_S = 120

# Appended to a copy of a page: once everything has loaded, it writes what the page
# looks like into the DOM, where --dump-dom shows it (the page itself has no script).
PROBE_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const report = {
    images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    svgs: document.querySelectorAll("svg").length,
    figures: document.querySelectorAll("figure").length,
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(report);
  document.body.appendChild(pre);
});
</script>"""
_PROBE = re.compile(r'<pre id="probe">(.*?)</pre>', re.S)


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"no headless browser: {CHROMIUM} is absent (apt-get install chromium)")
    return CHROMIUM


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    command = [str(require_chromium()), *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def screenshot(page: Path, png: Path, profile: Path, size: tuple[int, int] = (1280, 2000)) -> Path:
    """Render ``page`` (a local file) into ``png`` at the window size ``size``."""
    done = _run([f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
                 page.resolve().as_uri()], profile)  # fmt: skip
    assert png.is_file() and png.stat().st_size > 1000, done.stderr[-2000:]
    return png


def probe(page: Path, profile: Path, width: int = 1280) -> dict:
    """Load a copy of ``page`` beside it (so its relative links hold) with
    :data:`PROBE_SCRIPT` added; return what the script saw once the page had loaded."""
    copy = page.with_name(f"probe-{page.name}")
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE_SCRIPT + "</body>"),
                    encoding="utf-8")  # fmt: skip
    try:
        done = _run(["--dump-dom", "--virtual-time-budget=10000", f"--window-size={width},1000",
                     copy.as_uri()], profile)  # fmt: skip
    finally:
        copy.unlink()
    found = _PROBE.search(done.stdout)
    assert found, f"the probe did not run: {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))
