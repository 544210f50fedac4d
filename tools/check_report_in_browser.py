#!/usr/bin/env python
"""Check the visual report's page in headless Chromium: a screenshot, and every image decoded.

Renders ``index.html`` (from tools/visual_report.py), saves a screenshot beside it and prints, for each
``<img>``, whether the browser decoded it (natural width > 0); exits 1 if one did not. Needs Chromium
(Debian: ``apt install chromium``); not part of CI (``equi_ext.evaluation.browser_check``).

Example::

    python tools/visual_report.py --num-images 4 && python tools/check_report_in_browser.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from equi_ext.core.validation import SettingsError
from equi_ext.evaluation.browser_check import check_page
from equi_ext.evaluation.demo import WORKSPACE
from equi_ext.tooling import start_tool


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", default=str(WORKSPACE / "work_dirs/visual_report/index.html"))
    parser.add_argument("--screenshot", default=None, help="PNG to write (default: browser_check.png beside the page)")
    args = parser.parse_args(argv)
    try:
        result = check_page(Path(args.page), Path(args.screenshot or Path(args.page).with_name("browser_check.png")))
    except SettingsError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(result, indent=2))
    if not result["passed"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    start_tool()
    main()
