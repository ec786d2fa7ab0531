# refbp: two commands do everything on a fresh machine with Python 3.11.
#   make report   the main job: writes reports/REPORT.md, report.json, errors.png, bugs.md
#   make test     the whole test suite (hypothesis profile "ci" unless HYPOTHESIS_PROFILE says otherwise)
# Both create .venv and install refbp with the pinned versions of constraints.txt first.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all report test test-thorough lint format bench bugs docs false-positives mutation clean

all: lint test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,plot]'
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/refbp bugs --out reports
	$(BIN)/refbp report --out reports

test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -q

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check refbp tests scripts benchmarks
	$(BIN)/ruff format --check refbp tests scripts benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix refbp tests scripts benchmarks
	$(BIN)/ruff format refbp tests scripts benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --out reports

bugs: $(STAMP)
	$(BIN)/refbp bugs --out reports

docs: $(STAMP)
	$(BIN)/python scripts/make_docs.py

false-positives: $(STAMP)
	$(BIN)/python scripts/false_positive_rate.py --cases 10000 --seed 1 --out reports

mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt mutmut
	$(BIN)/python scripts/mutation.py --max-children 2

clean:
	rm -rf $(VENV) .tox .mypy_cache .ruff_cache .pytest_cache .hypothesis mutants
