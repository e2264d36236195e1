#!/usr/bin/env python3
"""Regenerate tests/formats/store-v1.json, the golden image of on-disk format version 1.

Run only after a deliberate format change: `.venv/bin/python scripts/make_golden.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.formats.golden import GOLDEN, build_golden_image, encode

GOLDEN.write_text(encode(build_golden_image()) + "\n")
print(f"wrote {GOLDEN}")
