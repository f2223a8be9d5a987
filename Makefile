# Two entry points (README quick start): `make demo` and `make test`. Each sets itself up.
VENV ?= .venv
PY   := $(VENV)/bin/python
PIP  := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test bench gpu-check clean

# setup.py compiles the engine's event loop (simhete/engine/_compiled.pyx): rebuilt when it changes
$(VENV)/.core: pyproject.toml setup.py simhete/engine/_compiled.pyx
	python3 -m venv $(VENV)
	$(PIP) -e .
	touch $@

# Tests need torch (calibration, replay) and ray (distributed sweeps). Without a GPU pick the
# CPU build of torch, which installs from a local wheel in seconds instead of ~5 GB of CUDA.
$(VENV)/.full: $(VENV)/.core
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) torch; else $(PIP) torch==2.13.0; fi
	$(PIP) -e '.[test,torch,ray]'
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
