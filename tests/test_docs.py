"""The README is a short front page whose links resolve."""

from __future__ import annotations

import re
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
