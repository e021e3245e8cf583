# unisup: `make demo` runs the pipeline end to end, `make test` runs the suite.
# Both set up .venv first (torch CPU wheel pinned before anything else can pull a CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }  # the inspector's browser test
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

DEMO_ARGS ?=
demo: setup
	$(BIN)/unisup demo $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -q --durations=20

# Every script runs even if one fails; make fails if any did. BENCH_ARGS=--quick: a smoke run of
# each on tiny data, JSON to $TMPDIR/unisup-bench-quick/ (benchmarks/results/ keeps the committed figures).
BENCH_ARGS ?=
bench: setup
	@status=0; for script in bench_materialize bench_sqlite bench_dataset bench_online bench_encoder bench_ray_data serve_bench; do \
	  echo "== benchmarks/$$script.py $(BENCH_ARGS)"; \
	  $(BIN)/python benchmarks/$$script.py $(BENCH_ARGS) || status=1; \
	done; exit $$status

lint: setup
	$(BIN)/ruff check pipelines serving tests benchmarks feature_repo examples
	$(BIN)/lint-imports

clean:
	rm -rf workspace .pytest_cache .hypothesis
