# mpihub: two commands for a new user, `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# mpihub itself, with MPI (mpi4py + the mpich wheel) and the test tools
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[mpi,test]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m mpihub.demo

# a real one-node Slurm (tests/slurm/setup.sh, as root; stopped again on exit) and a
# headless Chromium for the dashboard (tests/browser/setup.sh), the whole suite, the
# rank-level MPI tests alone (one rank) and as one 2-rank MPI job, and last the
# multi-node tests: their namespaces, bridges and veths (started by their tests, stopped
# here) are then not up while the one-node MPI tests run in the root namespace (MPICH's
# UCX failed intermittently at MPI_Init there, "invalid bandwidth", only in runs where they
# were). Not root: the setups exit 3 and those tests skip (under CI=true they fail instead).
test: $(STAMP)
	@set -e; trap 'bash tests/multinode/teardown.sh; bash tests/slurm/teardown.sh' EXIT; \
	bash tests/slurm/setup.sh || [ $$? -eq 3 ]; \
	bash tests/browser/setup.sh || [ $$? -eq 3 ]; \
	$(PY) -m pytest tests -q -p no:cacheprovider --timeout=300 --ignore=tests/multinode; \
	$(PY) -m pytest tests/ranks -q -p no:cacheprovider --with-mpi --timeout=300; \
	timeout 900 $(VENV)/bin/mpiexec -n 2 $(PY) -m pytest tests/ranks -q -p no:cacheprovider --with-mpi \
		--timeout=300 --timeout-method=thread; \
	$(PY) -m pytest tests/multinode -q -p no:cacheprovider --timeout=300

bench: $(STAMP)
	bash bench/run.sh
	$(PY) bench/bench_mpi.py
	$(PY) bench/bench_lb.py
	$(PY) bench/bench_layout.py
	$(PY) bench/bench_curve.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
