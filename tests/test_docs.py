"""The README is a short front page whose links resolve, and the repository stands on its own."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.unit


def test_readme_is_a_front_page_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "the README links to the docs"
    for link in links:
        if link.startswith(("http://", "https://", "#", "mailto:")):
            continue
        target = (REPO / link.split("#")[0]).resolve()
        assert target.exists(), f"README links to {link}, which does not exist"


def test_no_file_cites_notes_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        path = REPO / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".txt"} or not path.exists():
            continue
        text = path.read_text(errors="replace")
        for needle in ("METHODS.md", "DESIGN.md", "../shared"):
            assert needle not in text or path == Path(__file__), f"{name} cites {needle}"
