# The two commands a new user needs: `make demo` and `make test`. Both create .venv and install osum first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test test-fast clean-demo

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,tensorboard]'
	touch $(INSTALLED)

setup: $(INSTALLED)

# Train the embedded default (tiny model, synthetic digit corpus) into runs/demo and print its metrics.
demo: $(INSTALLED)
	$(BIN)/osum fit --tasks asr,ved --out runs/demo

# The whole suite, slow end-to-end tests included (CI runs exactly this).
test: $(INSTALLED)
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow.
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf runs/demo data/demo
