# Two commands for a fresh clone: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean system-deps

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first, pinned: these releases install from local disk (anything else is a large download)
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,ray,study]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vital visualize --class espresso --preset balanced --out out --name demo-espresso --overwrite

# The browser tests drive Debian's chromium (Playwright cannot download browsers here) and the study scores labels
# with Debian's WordNet 3.0; both installed once, as root.
system-deps:
	(command -v chromium >/dev/null && test -f /usr/share/wordnet/data.noun) || (apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium wordnet-base)

test: $(STAMP) system-deps
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf out .pytest_cache
