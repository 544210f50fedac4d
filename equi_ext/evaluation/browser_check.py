"""Check the visual report's HTML page in a real browser: headless Chromium renders it, saves a screenshot and
reports, for every ``<img>``, whether it decoded (``complete`` and ``naturalWidth`` > 0).

The page is self-contained (images embedded as data URIs), so a page that looks fine in a text editor can still
show broken images; only a browser says. The check runs on a copy of the page with a small script appended that
writes each image's state into the DOM once the page has loaded; Chromium's ``--dump-dom`` returns that DOM.
Not part of CI: Chromium is a system package (Debian: ``apt install chromium``).
"""

from __future__ import annotations

import html as html_module
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.validation import SettingsError

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map((img, i) => ({index: i, alt: img.alt.slice(0, 60),
    complete: img.complete, width: img.naturalWidth, height: img.naturalHeight}));
  const out = document.createElement('pre');
  out.id = 'equi-image-check';
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>"""


def find_browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    raise SettingsError(f"no headless browser found ({', '.join(BROWSERS)}); on Debian: apt install chromium")


def _headless(browser: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=timeout)


def check_page(page: Path, screenshot: Path, *, window: tuple[int, int] = (1600, 1200)) -> dict:
    """Render ``page`` with headless Chromium: ``screenshot`` (PNG) and each image's decode state.

    Returns ``dict(browser, version, images=[{index, alt, complete, width, height}], passed)``; ``passed`` is
    True when the page has at least one image and every one decoded.

    Raises:
        SettingsError: no page, no browser, or a browser that did not report the images.
    """
    page = Path(page).resolve()
    if not page.is_file():
        raise SettingsError(f"page {page} does not exist; write it with tools/visual_report.py")
    browser = find_browser()
    version = _headless(browser, "--version").stdout.strip()
    screenshot = Path(screenshot).resolve()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    _headless(browser, f"--screenshot={screenshot}", f"--window-size={window[0]},{window[1]}", page.as_uri())
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / page.name
        html = page.read_text(encoding="utf-8")
        probed.write_text(html.replace("</body>", _PROBE + "</body>") if "</body>" in html else html + _PROBE,
                          encoding="utf-8")
        dom = _headless(browser, "--dump-dom", "--virtual-time-budget=10000", probed.as_uri()).stdout
    found = re.search(r'<pre id="equi-image-check">(.*?)</pre>', dom, re.S)
    if not found:
        raise SettingsError(f"{browser} did not report the page's images (is JavaScript disabled?)")
    images = json.loads(html_module.unescape(found.group(1)))
    passed = bool(images) and all(img["complete"] and img["width"] > 0 for img in images)
    return dict(page=str(page), screenshot=str(screenshot), browser=browser, version=version, images=images,
                screenshot_written=screenshot.is_file(), passed=passed and screenshot.is_file())
