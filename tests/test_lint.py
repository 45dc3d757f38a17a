"""Pyflakes' checks (ruff's F rules) over our code: a name used before it is bound, an undefined
name, an import left behind by a move. A rename that made a local shadow a module once broke
`quax reprocess` while every import-level check passed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_pyflakes_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    out = subprocess.run([str(ruff), "check", "--select", "F", "--no-cache", "--output-format", "concise",
                          "quax_faust", "spark_batch", "dashboard", "bench", "tests"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
