# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
# Emulated devices for tests and the demo on a CPU-only machine; harmless on GPU/TPU hosts.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8
# Two pytest workers, a test file each: the tiny programs of the tests spend most of their time
# compiling, which is single-threaded, so two files at once use both cores.
TEST_WORKERS ?= 2

.PHONY: install data demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

data: install
	$(BIN)/python launch/fetch_data.py --dest=$(DATA_DIR)/mnist

demo: data
	$(BIN)/python launch/reproduce.py --config=configs/mnist.py:demo --workdir=runs/demo

test: data
	$(TEST_ENV) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

clean:
	rm -rf $(VENV) runs .pytest_cache
