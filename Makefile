# Two entry points for a newcomer: `make demo` runs the whole flow, `make test` runs the suite.
# Both create .venv idempotently and install torch==2.13.0 (CPU build) first when no torch is present,
# so that the project's looser `torch>=2.3` never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embedx-installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf embedx-demo
	$(VENV)/bin/embedx demo --quick --out embedx-demo

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	bash bench/run

clean:
	rm -rf $(VENV) embedx-demo bench/out .pytest_cache
