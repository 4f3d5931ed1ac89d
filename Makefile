# `make serve` and `make test` create .venv on first use; `make install` only does that.
VENV ?= .venv
PY := $(VENV)/bin/python
# the project needs Python 3.11 (requires-python): python3.11 where it is installed, else python3
PYTHON ?= $(shell command -v python3.11 || command -v python3)

.PHONY: install serve test eval train openapi load reference-model docs

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

test: install
	$(PY) -m pytest

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

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on any warning or broken link.
docs: install
	$(PY) -m pip install --quiet -e ".[test,docs]"
	$(PY) -m mkdocs build --strict --site-dir site
