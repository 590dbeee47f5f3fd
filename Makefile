# The two commands a new user needs: `make demo` and `make test`. Both create .venv and install osum first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

EXAMPLE_PLUGIN := plugins/osum_langid
TESTS := tests $(EXAMPLE_PLUGIN)/tests

.PHONY: setup demo demo-all test test-fast bench bench-quick bench-serve browser clean-demo

# osum itself, and the example third-party plugin installed the way its users would install it.
$(INSTALLED): pyproject.toml $(EXAMPLE_PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,serve,tensorboard]'
	$(BIN)/python -m pip install --quiet --no-deps -e $(EXAMPLE_PLUGIN)
	touch $(INSTALLED)

setup: $(INSTALLED)

# Train the embedded default (tiny model, synthetic digit corpus) into runs/demo and print its metrics
# (again from the start when runs/demo holds an earlier demo run: --overwrite).
demo: $(INSTALLED)
	$(BIN)/osum fit --tasks asr,ved --out runs/demo --overwrite

# The eight OSUM tasks (about 1.5 minutes of synthesis once, then 25 minutes of training and the test).
demo-all: $(INSTALLED)
	$(BIN)/osum fit --tasks asr,srwt,ved,ser,ssr,sgc,sap,sttc --config configs/demo_all.yaml --overwrite

# The public plugin API that PLUGINS.md promises to keep stable: type-checked.
PLUGIN_API := osum_core/task osum_core/plugins osum_core/demo/recipe.py osum_core/data/corpus_recipe.py

# The demo page's browser test drives Debian's Chromium through Playwright (never `playwright install`, which
# downloads a browser). Installed here when missing and this runs as root; where it cannot be, the test says so
# and is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "make: Chromium could not be installed: the demo page's browser test will be skipped"

# Test processes side by side (pytest-xdist): one per core of the 2-core CI machine; each computes on one thread.
TEST_WORKERS ?= 2

# Lint, the plugin API's types, then the whole suite, slow end-to-end tests included (CI runs exactly this).
test: $(INSTALLED) browser
	$(BIN)/ruff check osum_core osum_tasks plugins tests bench configs
	$(BIN)/mypy $(PLUGIN_API)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15 $(TESTS)

# Everything but the tests marked slow.
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not slow" $(TESTS)

# osum against Hugging Face Qwen2-Audio on the same work (BENCHMARKS.md); raw figures in bench/results/.
bench: $(INSTALLED)
	$(BIN)/python bench/suite.py --sizes tiny,base --repeats 5

# The same at the tiny size with fewer repetitions: at most 5 minutes on a 2-core machine.
bench-quick: $(INSTALLED)
	$(BIN)/python bench/suite.py --sizes tiny --repeats 3 --new-tokens 12 --loader-utterances 48

clean-demo:
	rm -rf runs/demo runs/demo_all data/demo
