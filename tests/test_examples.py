"""The documented example scripts run as a user runs them: a fresh interpreter, the installed
package, the working directory elsewhere (a child process: e2e, not in `make test-fast`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def test_the_documented_example_runs(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python_api.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "'red': visual reliance" in run.stdout and "top region" in run.stdout
    overlay = Image.open(tmp_path / "overlay.png")
    side = Image.open(REPO / "examples" / "images" / "red-circle.png").size
    assert overlay.width > side[0] and overlay.height > side[1]  # the overlay, enlarged, with its colour bar
