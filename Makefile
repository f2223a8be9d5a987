# Two entry points (README quick start): `make demo` and `make test`. Each sets itself up.
VENV ?= .venv
PY   := $(VENV)/bin/python
PIP  := $(PY) -m pip install -q --disable-pip-version-check
# A package index can answer with a truncated page (pip then fails with a JSONDecodeError, not a
# network error, so its own --retries does not cover it): try each install up to three times.
RETRY := for try in 1 2 3; do
DONE  := && break; [ $$try = 3 ] && exit 1; echo "pip install failed (try $$try of 3); retrying in 15 s"; sleep 15; done

.PHONY: demo test bench gpu-check clean

# setup.py compiles the engine's event loop (simhete/engine/_compiled.pyx): rebuilt when it changes
$(VENV)/.core: pyproject.toml setup.py simhete/engine/_compiled.pyx
	python3 -m venv $(VENV)
	$(RETRY) $(PIP) -e . $(DONE)
	touch $@

# Tests need torch (calibration, replay) and ray (distributed sweeps). Without a GPU pick the
# CPU build of torch, which installs from a local wheel in seconds instead of ~5 GB of CUDA.
$(VENV)/.full: $(VENV)/.core
	if command -v nvidia-smi >/dev/null 2>&1; then T=torch; else T=torch==2.13.0; fi; \
	  $(RETRY) $(PIP) $$T $(DONE)
	$(RETRY) $(PIP) -e '.[test,torch,ray]' $(DONE)
	touch $@

demo: $(VENV)/.core
	$(VENV)/bin/simhete demo

# the tests compare the compiled loop with the reference: refuse to run them without it
test: $(VENV)/.full
	$(PY) -c "import simhete.engine._compiled" || { echo "the compiled event loop did not build (needs a C compiler)"; exit 1; }
	$(PY) -m pytest -n 2 --dist loadgroup

bench: $(VENV)/.full
	for f in benchmarks/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# On a CUDA machine: calibrate the GPU on three shipped scenarios' shapes and validate them
# (hwprofiles/measured/gpu-check-cuda.*, and a generated section of docs/validation.md).
# Without CUDA it says so and exits 2; `$(PY) scripts/gpu_check.py --device cpu` runs it on the CPU.
gpu-check: $(VENV)/.full
	$(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) out results .pytest_cache .hypothesis
