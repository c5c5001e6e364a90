# Two commands on a fresh machine:
#   make demo   - create .venv, install, run the main job (flows/demo.py) on the embedded default
#   make test   - create .venv, install, run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export NO_ALBUMENTATIONS_UPDATE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# MetaCLIP's WordNet: Debian's, or the copy the install unpacks into .venv when not root.
export WORDNET_DIR ?= $(if $(wildcard /usr/share/wordnet/data.noun),/usr/share/wordnet,$(abspath $(VENV))/wordnet/usr/share/wordnet)

.PHONY: install demo test ui server server-stop deploy worker benchmarks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	@# img2dataset depends on the PyPI backport 'dataclasses', which shadows the standard
	@# library and kills Prefect's API server process: remove it.
	$(PY) -m pip uninstall -y dataclasses
	@# WordNet 3.0 (Debian wordnet-base) for MetaCLIP's metadata: from apt as root, else unpacked into .venv.
	test -f /usr/share/wordnet/data.noun || test -f $(VENV)/wordnet/usr/share/wordnet/data.noun || \
		( [ "$$(id -u)" = 0 ] && apt-get install -y -q wordnet-base ) || \
		( cd $(VENV) && apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wordnet )
	@# PostgreSQL for `make server` and its test (skipped without it): from apt as root.
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -q postgresql || ( apt-get update -q && apt-get install -y -q postgresql )
	@# Chromium for the headless UI test (tests/ui, skipped without it): from apt as root.
	test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -q chromium || ( apt-get update -q && apt-get install -y -q chromium )
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m flows.demo

test: install
	$(PY) -m pytest

# The Prefect UI on the runs made so far (the demo's included): http://127.0.0.1:4200
ui: install
	$(VENV)/bin/prefect server start

# A Prefect server on a PostgreSQL that infra/prefect-server.sh creates (data in ~/.prefect/pgdata,
# as root /var/lib/postgresql/prefect):
# http://127.0.0.1:4200; `make server-stop` stops both.
server: install
	infra/prefect-server.sh --postgres

server-stop:
	infra/prefect-server.sh stop

# Register prefect.yaml's deployments with the running server, and run a process worker.
deploy: install
	$(VENV)/bin/prefect work-pool create curation-process --type process --overwrite
	$(VENV)/bin/prefect --no-prompt deploy --all
	$(PY) -m deployments.concurrency
	$(PY) -m deployments.automations

worker: install
	$(VENV)/bin/prefect worker start --pool curation-process

# Each prints one JSON line last; embed.py and train.py use the demo's store (run `make demo` first).
benchmarks: install
	$(PY) benchmarks/download.py
	$(PY) benchmarks/train.py --manifest .demo/store/pools/demo/manifest.json
	$(PY) benchmarks/train_resume.py
	$(PY) benchmarks/embed.py
	$(PY) benchmarks/kmeans.py
	$(PY) benchmarks/kmeans_2d.py
	$(PY) benchmarks/sampling.py
	$(PY) benchmarks/matching.py --repeats 5

clean:
	rm -rf .demo .pytest_cache
