# Two commands do all set-up on a fresh machine: `make predict` and `make test`.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: setup predict test lint bench eval train train-smoke image container-test

setup: $(STAMP)
$(STAMP): requirements-dev.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check app training harness tests
