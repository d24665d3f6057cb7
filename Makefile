# stdiff developer entry points. `make test` and `make demo` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stdiff-installed
OUT ?= outputs/demo

.PHONY: test demo lint format bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/stdiff demo --config configs/demo_toy2d.yaml --out $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Side-by-side sampler benchmark against diffusers (its own venv, outside the repo).
bench: $(STAMP)
	bash benchmarks/make_peer_venv.sh diffusers
	$(PY) -m benchmarks.samplers --write BENCHMARKS.md
	$(PY) -m benchmarks.datasets --write BENCHMARKS.md

clean-venv:
	rm -rf $(VENV)
