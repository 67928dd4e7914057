# Set-up and the project's jobs. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: an unpinned `torch` requirement not yet satisfied pulls a CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,runtimes,executorch,nni,postgres,federated

.PHONY: install demo test lint typecheck pytest notebooks docs bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# torch-pruning declares an unpinned torch: --no-deps keeps the CPU build in place
	$(PY) -m pip install -q --no-deps torch-pruning==1.6.1
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m nas demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy

# a local PostgreSQL (localhost only) for the multi-worker storage tests; see scripts/postgres.sh
pytest: install
	EDGE_NAS_TEST_PG_URL="$$(bash scripts/postgres.sh)" $(PY) -m pytest

# the notebooks, executed headless (a missing run folder makes a small run first)
notebooks: install
	$(PY) -m pytest --nbmake --nbmake-timeout=1500 -q notebooks

# the docs site, every warning an error (its code blocks run in tests/test_docs.py)
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

test: lint typecheck pytest notebooks docs

bench: install
	$(PY) benchmarks/layer_specs.py --out runs/bench/layer_specs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
