# `make serve` and `make test` create .venv on first use; `make install` only does that.
VENV ?= .venv
PY := $(VENV)/bin/python
# the project needs Python 3.11 (requires-python): python3.11 where it is installed, else python3
PYTHON ?= $(shell command -v python3.11 || command -v python3)

.PHONY: install serve test test-fast lint eval train openapi load reference-model docs browser

install: $(VENV)/.installed

# torch first, pinned to the CPU build (+cpu: from local wheels where pip has them, else from
# PyTorch's CPU index), so no dependency can pull a CUDA build. --no-deps: only torch itself is
# looked up on that index (where it is out of reach pip warns and retries a few seconds); its
# dependencies come from PyPI with the project's.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "make install: $(PYTHON) is Python %d.%d; this project needs 3.11 (make PYTHON=/path/to/python3.11)" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps --extra-index-url $(TORCH_INDEX) torch==2.13.0+cpu
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

serve: install
	$(VENV)/bin/mllm-audit serve

# Every test (what CI runs: .ci/run). Each test is of one kind: unit, integration, e2e or deploy
# (markers in pyproject.toml, checked by tests/conftest.py); slow ones are marked slow as well.
test: install browser
	$(PY) -m pytest

# The viewer's browser tests (tests/test_ui.py) drive Debian's chromium through Playwright; no
# browser is ever downloaded by Playwright itself. Installed here when missing (CI runs as root).
browser:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium)

# unit and integration tests, not the slow ones: nothing runs the product in a child process
# (server, CLI, example scripts) and no deploy tooling. About 45 s of CPU on one core; the e2e tests
# take minutes: run `make test` before pushing.
test-fast: install
	$(PY) -m pytest -m "not e2e and not deploy and not slow"

# ruff (pyproject's [tool.ruff]) and mypy (its [tool.mypy]: strict for mllm_audit.explainers and
# mllm_audit.models). mypy cannot read the package-dir mapping (mllm_audit.service is service/, ...),
# so tools/package_tree.py lays the installed layout out as symbolic links in build/package, where
# pyproject points mypy; after one `make lint` a plain `.venv/bin/mypy` works too.
LINT_PINS := ruff==0.17.5 mypy==2.4.1 types-pyyaml==6.0.12.20261122

lint: install
	$(PY) -m pip install --quiet $(LINT_PINS)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/package_tree.py
	$(VENV)/bin/mypy

eval: install
	$(PY) -m mllm_audit.models.reference.evaluate

train: install
	$(PY) -m mllm_audit.models.reference.train

# openapi.yaml is the contract: regenerate it after changing service/schemas.py or the routes.
openapi: install
	$(PY) -m mllm_audit.service.openapi > openapi.yaml

# Load test over loopback: dynamic batching on vs off (bench/load.py --help for the knobs).
load: install
	$(PY) bench/load.py

# The committed reference weights: two runs, 39.9 minutes of training on 2 CPU cores (see models/reference/train.py).
reference-model: install
	$(PY) -m mllm_audit.models.reference.train --out /tmp/ref-base --minutes 36 --no-patch-words
	$(PY) -m mllm_audit.models.reference.train --init /tmp/ref-base --out models/reference/weights --minutes 3.9 \
		--vision-fraction 0 --lr 5e-4 --aux-weight 0 --seed 2 --kind-weights colour=5,existence=1.5

# The same recipe and budget without the patch-word loss in either run: the realistic test bed for
# white-box maps and grounding (docs/reference-model.md). One torch thread by default: on a shared
# machine two threads stall each other (NPW_THREADS=0 takes every core of an idle one).
NPW_THREADS ?= 1
.PHONY: reference-model-no-patch-words
reference-model-no-patch-words: install
	$(PY) -m mllm_audit.models.reference.train --out /tmp/ref-base-npw --minutes 36 --no-patch-words \
		--threads $(NPW_THREADS)
	$(PY) -m mllm_audit.models.reference.train --init /tmp/ref-base-npw --out models/reference/weights-no-patch-words \
		--minutes 3.9 --vision-fraction 0 --lr 5e-4 --aux-weight 0 --seed 2 --kind-weights colour=5,existence=1.5 \
		--no-patch-words --threads $(NPW_THREADS)

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on any warning or broken link.
docs: install
	$(PY) -m pip install --quiet -e ".[test,docs]"
	$(PY) -m mkdocs build --strict --site-dir site
