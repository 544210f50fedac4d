"""tools/check_report_in_browser.py: a real browser tells a decoded image from a broken one (skipped where no
Chromium is installed: it is a system package, not a Python one)."""

from __future__ import annotations

import base64
import io
import shutil

import pytest
from PIL import Image

from equi_ext.evaluation.browser_check import BROWSERS, check_page

pytestmark = pytest.mark.skipif(not any(shutil.which(b) for b in BROWSERS), reason="no Chromium (apt install chromium)")


def test_a_broken_image_fails_the_check_and_a_good_one_passes(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 40, 40)).save(buffer, format="PNG")
    good = base64.b64encode(buffer.getvalue()).decode()
    page = tmp_path / "index.html"
    page.write_text(f'<html><body><img src="data:image/png;base64,{good}" alt="good">'
                    f'<img src="data:image/png;base64,{good[:40]}" alt="broken"></body></html>')
    result = check_page(page, tmp_path / "shot.png")
    assert [(i["alt"], i["width"], i["height"]) for i in result["images"]] == [("good", 30, 20), ("broken", 0, 0)]
    assert not result["passed"] and (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"
    page.write_text(f'<html><body><img src="data:image/png;base64,{good}" alt="good"></body></html>')
    assert check_page(page, tmp_path / "shot.png")["passed"]
