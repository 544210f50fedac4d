#!/usr/bin/env python
"""The embedded default job: generate the synthetic benchmark into data/synthetic_shapes.

Later stages (train → attack → defend → evaluate → report) are added by the MMSeg path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--out", "data/synthetic_shapes", "--overwrite"]))
