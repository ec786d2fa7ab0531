# refbp: two commands do everything on a fresh machine with Python 3.10 to 3.13 on PATH.
#   make report   the main job: writes reports/REPORT.md, report.json, errors.png, bugs.md
#   make test     the whole test suite, across the machine's cores (hypothesis profile "ci"
#                 unless HYPOTHESIS_PROFILE says otherwise)
# Both create $(VENV) and install refbp with the pinned versions of constraints.txt first.

# The first supported Python on PATH; 3.11 first, because the CPU build of torch 2.13.0 lies on
# this project's machines for 3.11 (others download torch from the package index).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3.10 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] < (3, 14))' \
	&& { echo $$p; break; }; done)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORKERS ?= auto
CHECKS_REPORT ?= build/refbp-checks

.PHONY: all report test test-serial test-thorough lint format bench bench-gpt bench-distributed bugs distributed \
	docs false-positives mutation clean

all: lint test

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: no Python 3.10 to 3.13 on PATH; set PYTHON=/path/to/python3" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,plot]'
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/refbp bugs --out reports
	$(BIN)/refbp report --out reports

test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -q -n $(WORKERS) --refbp-report $(CHECKS_REPORT)

test-serial: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -q

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -n $(WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check refbp tests scripts benchmarks
	$(BIN)/ruff format --check refbp tests scripts benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix refbp tests scripts benchmarks
	$(BIN)/ruff format refbp tests scripts benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --out reports

bench-gpt: $(STAMP)
	$(BIN)/python benchmarks/gpt.py --out reports

bench-distributed: $(STAMP)
	$(BIN)/python benchmarks/distributed.py --out reports

bugs: $(STAMP)
	$(BIN)/refbp bugs --out reports

# data-parallel manual backprop on 3 gloo ranks, against one process, autograd and DDP
distributed: $(STAMP)
	$(BIN)/torchrun --standalone --nproc-per-node=3 -m refbp distributed --out reports

docs: $(STAMP)
	$(BIN)/python scripts/make_docs.py

false-positives: $(STAMP)
	$(BIN)/python scripts/false_positive_rate.py --cases 10000 --seed 1 --workers 2 --out reports

mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt mutmut
	$(BIN)/python scripts/mutation.py --max-children 2

clean:
	rm -rf $(VENV) .venv312 .tox .mypy_cache .ruff_cache .pytest_cache .hypothesis mutants
