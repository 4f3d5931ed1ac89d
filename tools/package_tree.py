"""Lay the installed package out as one source tree, for tools that read sources (mypy, griffe).

`mllm_audit` is one installed package whose subpackages keep their own top-level folders in
the repository (pyproject.toml, [tool.setuptools.package-dir]: mllm_audit.service -> service/,
...). mypy and griffe (mkdocstrings) look for a subpackage inside its parent's folder, so they
would not find `mllm_audit.explainers`. This builds build/package/mllm_audit/ out of symbolic
links that follow the mapping; `mypy_path` (pyproject.toml) and `paths` (mkdocs.yml) point
there. Run as a script (`make lint` does) or as an MkDocs hook (mkdocs.yml), before each build.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

TREE = Path("build") / "package"


def build_tree(root: Path) -> Path:
    """(Re)make root/build/package: the root package's files and each subpackage's folder, linked."""
    package_dir: dict[str, str] = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    tree = root / TREE
    if tree.exists():
        shutil.rmtree(tree)
    for package in sorted(package_dir, key=lambda name: name.count(".")):
        target = tree.joinpath(*package.split("."))
        source = root / package_dir[package]
        if "." not in package:  # the root package: a real folder, so its subpackages can sit inside
            target.mkdir(parents=True)
            for path in source.glob("*.py"):
                (target / path.name).symlink_to(os.path.relpath(path, target))
        else:
            target.symlink_to(os.path.relpath(source, target.parent), target_is_directory=True)
    return tree


def on_config(config: Any) -> Any:
    """MkDocs hook."""
    build_tree(Path(config.config_file_path).resolve().parent)
    return config


if __name__ == "__main__":
    print(build_tree(Path(__file__).resolve().parents[1]))
