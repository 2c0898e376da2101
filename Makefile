# `make test` sets up a virtual environment (pinned packages, nothing by hand) and runs the test suite.
# `make chat` sets up the same and answers a spoken question offline with the embedded default model.
# `make demo` sets up the same and serves the tutor page at http://127.0.0.1:7860.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup browser test chat demo bench

setup: $(VENV)/.installed browser

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all]"
	@if $(PY) -m pip show torchaudio >/dev/null 2>&1; then echo "torchaudio must not be installed" >&2; exit 1; fi
	touch $@

# The demo page (the `demo` extra, part of `all`) streams its reply through ffmpeg, and its test drives Debian's
# chromium headless: both are installed here when missing, where this runs as root with apt-get (as on CI).
# Elsewhere the page plays each reply when it is complete, and the browser test is skipped, saying why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v ffmpeg >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium and ffmpeg (the demo page and its browser test)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium ffmpeg >/dev/null 2>&1 \
		|| { apt-get update -q >/dev/null && apt-get install -y -q chromium ffmpeg >/dev/null; } \
		|| echo "Could not install chromium and ffmpeg: the demo's browser test will be skipped" >&2; \
	else \
		echo "Note: no chromium or ffmpeg (run 'sudo apt-get install chromium ffmpeg'): the demo's browser test will be skipped" >&2; \
	fi

test: setup
	$(PY) -m pytest -q tests

chat: setup
	$(VENV)/bin/concept-talker chat --say "What does brave mean?" --out reply.wav --stream

demo: setup
	$(VENV)/bin/concept-talker demo

bench: setup
	$(VENV)/bin/concept-talker bench --json benchmarks/results/bench.json --plot benchmarks/results/bench.png
