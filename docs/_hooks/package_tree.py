"""MkDocs hook: lay the installed package out as one source tree for mkdocstrings.

`mllm_audit` is one installed package whose subpackages keep their own top-level folders in
the repository (pyproject.toml, [tool.setuptools.package-dir]: mllm_audit.service -> service/,
...). Griffe, which reads the sources for mkdocstrings, looks for a subpackage inside its
parent's folder only, so it would not find `mllm_audit.explainers`. Before every build this
hook copies the Python sources into build/docs-src/mllm_audit/ following that mapping
(`paths: [build/docs-src]` in mkdocs.yml points griffe there). Only *.py files are copied,
never the model weights.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

TREE = Path("build") / "docs-src"


def _copy_sources(src: Path, dst: Path) -> None:
    for path in src.rglob("*.py"):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def build_tree(root: Path) -> Path:
    """Copy the package's sources under root/build/docs-src, as the installed package lays them out."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    tree = root / TREE
    if tree.exists():
        shutil.rmtree(tree)
    # parents before children, so a subpackage's folder lands inside its parent's copy
    for package in sorted(package_dir, key=lambda name: name.count(".")):
        _copy_sources(root / package_dir[package], tree.joinpath(*package.split(".")))
    return tree


def on_config(config):
    build_tree(Path(config.config_file_path).resolve().parent)
    return config
