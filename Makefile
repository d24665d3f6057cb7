# stdiff developer entry points. `make test` and `make demo` create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stdiff-installed
OUT ?= outputs/quickstart

.PHONY: test demo toy lint format grib bench bench-imputation bench-weather bench-weather-generators gpu-check clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/stdiff quickstart --out $(OUT)

toy: $(STAMP)
	$(VENV)/bin/stdiff demo --config configs/demo_toy2d.yaml --out outputs/toy

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# GRIB ingest: cfgrib and ecCodes' wheels into the same venv, under the same pins (torch untouched).
grib: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[grib]"

# Side-by-side sampler benchmark against diffusers (its own venv, outside the repo).
bench: $(STAMP)
	bash benchmarks/make_peer_venv.sh diffusers
	$(PY) -m benchmarks.samplers --write BENCHMARKS.md
	$(PY) -m benchmarks.datasets --write BENCHMARKS.md

# CSDI on PhysioNet against PyPOTS 1.5 (its own venv) and the paper; needs ../shared/data.
bench-imputation: $(STAMP)
	bash benchmarks/make_peer_venv.sh pypots
	$(VENV)/bin/stdiff ingest ../shared/data/physionet2012/set-a.tar.gz --kind timeseries --out outputs/physio.zarr
	$(PY) -m benchmarks.imputation peer --epochs 2 --stays 32 --samples 10 --keep outputs/csdi_peer_run --write BENCHMARKS.md
	$(PY) -m benchmarks.imputation speed --checkpoint outputs/csdi_peer_run --stays 16 --samples 10 --write BENCHMARKS.md
	$(PY) -m benchmarks.imputation paper --checkpoint outputs/csdi_peer_run --stays 32 --samples 10 --write BENCHMARKS.md

# Ensemble weather forecasts on NCEP air temperature; needs ../shared/data.
bench-weather: $(STAMP)
	$(VENV)/bin/stdiff ingest ../shared/data/ncep_air_temperature/air_temperature.zarr --kind weather \
		--train-period 2013-01-01:2013-11-30 --test-period 2014-01-01:2014-12-31 --out outputs/ncep.zarr
	$(VENV)/bin/stdiff train --config configs/train_ncep_dit.yaml
	$(VENV)/bin/stdiff train --config configs/train_ncep_det.yaml
	$(PY) -m benchmarks.weather --ensemble outputs/train_ncep_dit --deterministic outputs/train_ncep_det --write BENCHMARKS.md

# After bench-weather: the one-evaluation CRPS generator (block input noise, then 8-step rollouts)
# against the 39-evaluation sampler, about 45 minutes on 2 CPU cores.
bench-weather-generators: $(STAMP)
	$(VENV)/bin/stdiff distill --config configs/distill_ncep_pool.yaml
	$(VENV)/bin/stdiff distill --config configs/distill_ncep_pool_rollout.yaml
	$(PY) -m benchmarks.weather --ensemble outputs/train_ncep_dit --deterministic outputs/train_ncep_det --threads 1 \
		--generator outputs/distill_ncep_pool/crps outputs/distill_ncep_pool_rollout/crps \
		--few-section weather-crps-generators --write BENCHMARKS.md

# On a GPU machine (torch, timm, einops suffice; no venv needed): CUDA checks, DiT/CSDI/forecast
# throughput, written into BENCHMARKS.md. About 6-8 minutes on one H100/H200.
gpu-check:
	$(PYTHON) -m benchmarks.gpu_check --write BENCHMARKS.md

clean-venv:
	rm -rf $(VENV)
