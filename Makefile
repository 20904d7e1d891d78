# bigmodel: `make demo` runs the whole lifecycle on sample_data/, `make test` runs the test suite.
# The example targets chain the stages through their output folders, so `make` re-runs only what changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
BM     := $(BIN)/bigmodel
OUT    ?= build
# make test's pytest workers (pytest-xdist): both cores of the CI machine
TEST_JOBS ?= 2

.PHONY: demo test fuzz lint install dev bench bench-quality bench-serve bench-startup federated-table federated-skew clean help report-check docs
.DELETE_ON_ERROR:
.SECONDARY:

help:
	@echo "make demo   - create $(VENV), install, run preprocess/train/evaluate/export/predict on sample_data/"
	@echo "make test   - install the dev extras, ruff, mypy, and the whole test suite"
	@echo "make fuzz   - the fuzz tests with new random examples, 300 tables through every stage (~5 min)"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - the benchmarks in benchmarks/ (results in benchmarks/results/)"
	@echo "make bench-quality - bigmodel (no config) vs a plain Keras script, scikit-learn, LightGBM and pytabkit's"
	@echo "                     RealMLP-TD and TabM-D on 21 real tables"
	@echo "                     (BEFORE=REV adds bigmodel at git revision REV, run the same way, as a column;"
	@echo "                     REPEATS=N seeded runs of each model, default 5)"
	@echo "make bench-serve - bigmodel serve (tf / onnx runtime) vs a hand-written Starlette service, under load"
	@echo "make bench-startup - start-up times, and the lifecycle as five commands vs one bigmodel experiment"
	@echo "make federated-table - centralized vs federated training with the defaults on the samples (docs/federated.md)"
	@echo "make federated-skew - server strategies on skewed partitions and against a dishonest client (hours; SKEW=... for a subset)"
	@echo "make docs   - the manual in docs/ as a site in $(OUT)/site/ (mkdocs build --strict; CLI reference regenerated)"
	@echo "make clean  - remove $(OUT)/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,federated]"
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# ---- the lifecycle, one data set at a time: DATA.csv + DATA.yaml -> prep -> run -> metrics, export, predictions
$(OUT)/%/prep/manifest.json: sample_data/%.csv sample_data/%.yaml | $(VENV)/.installed
	$(BM) preprocess $< --config sample_data/$*.yaml --out $(OUT)/$*/prep

$(OUT)/%/run/manifest.json: $(OUT)/%/prep/manifest.json
	$(BM) train $(OUT)/$*/prep --out $(OUT)/$*/run

$(OUT)/%/run/metrics.json: $(OUT)/%/run/manifest.json
	$(BM) evaluate $(OUT)/$*/run --json > /dev/null

$(OUT)/%/export/manifest.json: $(OUT)/%/run/manifest.json
	$(BM) export $(OUT)/$*/run --format savedmodel --out $(OUT)/$*/export

$(OUT)/%/predictions.csv: $(OUT)/%/run/manifest.json sample_data/%.csv
	$(BM) predict $(OUT)/$*/run sample_data/$*.csv --out $@

DEMO_SETS := penguins breast_cancer
demo: $(foreach d,$(DEMO_SETS),$(OUT)/$(d)/run/metrics.json $(OUT)/$(d)/export/manifest.json $(OUT)/$(d)/predictions.csv)
	@for d in $(DEMO_SETS); do $(BM) evaluate $(OUT)/$$d/run || exit $$?; done

# Benchmarks (not part of `make test`): every benchmarks/bench_*.py; each prints a table and writes
# benchmarks/results/<name>.json. About 10 minutes on 2 cores (the first run also generates the data, ~4 more).
bench: $(VENV)/.installed-dev
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit $$?; done

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e ".[dev,federated,bench]"
	@touch $@

# The model-quality table of docs/quality.md (21 tables; ~70 minutes on 2 cores with REPEATS=3 and BEFORE, about twice that
# with the default 5 repeats; REPEATS=1 for one run of each): benchmarks/quality.py.
bench-quality: $(VENV)/.installed-bench
	$(if $(BEFORE),rm -rf $(OUT)/before && mkdir -p $(OUT)/before && git archive $(BEFORE) | tar -x -C $(OUT)/before)
	$(BIN)/python benchmarks/quality.py --cost $(if $(BEFORE),--before $(OUT)/before) $(if $(REPEATS),--repeats $(REPEATS))

# The serving table of docs/deployment.md: bigmodel serve (tf, onnx) vs a hand-written Starlette + Keras service (~2 minutes).
bench-serve: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_serve.py

# Start-up, and the lifecycle as five commands vs one `experiment` (docs/performance.md; ~5 minutes).
bench-startup: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_startup.py

# The federated table of docs/federated.md: centralized vs FedAvg / SecAgg+ / client DP / deployment on penguins (~8 minutes).
federated-table: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/federated_table.py

# Strategies x partitions x clients x seeds against central training (docs/federated.md); SKEW narrows the grid,
# e.g. make federated-skew SKEW="--tables penguins --partitions 0.1 --seeds 1"
federated-skew: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/federated_skew.py $(SKEW)

test: $(VENV)/.installed-dev
	$(BIN)/python -m ruff check bigmodel_cli tests benchmarks docs
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadgroup

# `make test` runs the fuzz tests on fixed examples; this runs ten times as many, new ones each time
fuzz: $(VENV)/.installed-dev
	BIGMODEL_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-300} BIGMODEL_FUZZ_RANDOM=1 $(BIN)/python -m pytest -q tests/test_fuzz.py \
		--hypothesis-show-statistics

$(VENV)/.installed-docs: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e ".[dev,federated,docs]"
	@touch $@

# The manual (docs/) as a site: the CLI reference regenerated from the app, then a strict build (broken links fail).
docs: $(VENV)/.installed-docs
	$(BIN)/python docs/gen_cli_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(OUT)/site

lint: $(VENV)/.installed-dev
	$(BIN)/python -m ruff check bigmodel_cli tests benchmarks docs
	$(BIN)/python -m mypy

clean:
	rm -rf $(OUT)

# Renders an HTML report in headless Chromium (Debian's `chromium` package) and checks the screenshot.
report-check: $(VENV)/.installed-dev
	@command -v chromium >/dev/null || { echo "needs chromium: apt-get install chromium"; exit 2; }
	BIGMODEL_BROWSER_TESTS=1 $(BIN)/python -m pytest -q tests/test_evaluation.py -k chromium -rs
