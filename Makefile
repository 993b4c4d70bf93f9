# One virtual environment (.venv) for everything; every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export QT_QPA_PLATFORM ?= offscreen

.PHONY: install demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[gui,dev]"
	touch $@

install: $(VENV)/.installed

## demo: list devices, build small models in every format, run and benchmark them on each device
demo: install
	$(BIN)/python -m samples.demo

## test: the whole test suite (real runtimes, no network)
test: install
	$(BIN)/python -m pytest

## bench: Model.run overhead against each runtime's fastest direct call path
bench: install
	$(BIN)/python benchmarks/overhead.py

lint: install
	$(BIN)/ruff check edgekit gui converters samples tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache samples/build benchmarks/.models
