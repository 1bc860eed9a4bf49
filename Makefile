# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: demo test check install bench clean

$(STAMP): pyproject.toml deploy/install-system.sh
	bash deploy/install-system.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch and torchvision are pinned as a pair in one install (see pyproject.toml).
	$(VENV)/bin/pip install -q "torch==2.13.0" "torchvision==0.28.0" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deepbrainprint demo

# Two processes (pytest-xdist): each test module runs whole in one of them, so its fixtures are built once. Safe in
# parallel because every test that touches a shared server keeps to its own Redis queue prefix, PostgreSQL schema,
# free ports and temporary folders (tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The quick tier for the edit-test loop: unit tests and one end-to-end series (tests/conftest.py, QUICK_MODULES).
check: $(STAMP)
	$(PY) -m pytest -q -m quick tests

# Speed and memory figures: each script writes bench/results/<name>.json and .md (long: the index bench builds 1M).
bench: $(STAMP)
	for script in bench/bench_*.py; do nice -n 10 $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
