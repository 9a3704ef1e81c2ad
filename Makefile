# Two entry points for a fresh machine (see README):
#   make demo   installs into .venv (created when missing) and runs the demo campaign: the
#               energy-structure-function loop of examples/esf.toml (720 CPU s: about 6-9 min on
#               2 idle cores, ~12 min on shared ones; the molecule-only campaign is examples/demo.toml)
#   make test   installs into .venv (created when missing) and runs the test suite
#   make test-fast  the same without the slow real-physics tests (pytest -m "not slow"), in
#                   TEST_WORKERS parallel pytest-xdist processes (default 2), whole test files
#                   per process so a module's fixtures are built once
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 1

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/crystal-agent run examples/esf.toml --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(VENV)/.installed
	$(PY) -m pytest -q

TEST_WORKERS ?= 2
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

.PHONY: install demo test test-fast
