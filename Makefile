# `make test` sets up a virtual environment (pinned packages, nothing by hand) and runs the test suite.
# `make chat` sets up the same and answers a spoken question offline with the embedded default model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test chat bench

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all]"
	@if $(PY) -m pip show torchaudio >/dev/null 2>&1; then echo "torchaudio must not be installed" >&2; exit 1; fi
	touch $@

test: setup
	$(PY) -m pytest -q tests

chat: setup
	$(VENV)/bin/concept-talker chat --say "What does brave mean?" --out reply.wav --stream

bench: setup
	$(VENV)/bin/concept-talker bench --json benchmarks/results/bench.json --plot benchmarks/results/bench.png
