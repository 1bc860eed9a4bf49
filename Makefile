# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: demo test install bench clean

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

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info
