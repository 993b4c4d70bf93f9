# One virtual environment (.venv) for everything; every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export QT_QPA_PLATFORM ?= offscreen
# The sample packages live in the checkout (git-ignored), shared by demo and tests.
export EDGEKIT_SAMPLES_DIR ?= $(CURDIR)/samples/build

.PHONY: install demo gui test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml samples/sources.txt converters/onnx2tf.txt | $(BIN)/python
	$(BIN)/pip install -q -e ".[gui,dev,samples,convert,serve]"
	$(BIN)/pip install -q --no-deps -r samples/sources.txt -r converters/onnx2tf.txt
	touch $@

install: $(VENV)/.installed

## demo: build the sample packages, then classify images, compare sentences and find speech
demo: install
	$(BIN)/edgekit devices
	$(BIN)/edgekit demo

## gui: the desktop app, on the real display (the offscreen platform above is for the tests)
gui: install
	env -u QT_QPA_PLATFORM $(BIN)/edgekit-gui

## test: the whole test suite (real runtimes, no network)
test: install
	$(BIN)/python -m pytest

## bench: Model.run overhead against each runtime's direct call path; task pre/post-processing cost; conversion;
##        edgekit serve's added latency, throughput and a 20,000-request soak
bench: install
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/tasks.py
	$(BIN)/python benchmarks/convert.py
	$(BIN)/python benchmarks/serve.py

lint: install
	$(BIN)/ruff check edgekit gui converters samples tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache samples/build benchmarks/.models
