# Two commands matter: `make demo` (the whole thing on a local cluster) and `make test`.
# Everything else here is a step they call. Caches live outside the repo:
# ~/.cache/uv (Python wheels, torch included), ~/.cache/coxswain (Go builds and binaries).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= operator,trainer,server,dev
PYTEST_ARGS ?=

.PHONY: venv tools images generate check-generated lint test test-unit cluster cluster-down demo bench clean

$(VENV)/.stamp: pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install --quiet uv
	uv venv $(VENV) --python 3.11 --allow-existing --quiet
	uv pip install --python $(PY) --quiet --compile-bytecode -e '.[$(EXTRAS)]'
	@touch $@

venv: $(VENV)/.stamp

tools:
	@bash dev/build-tools.sh >/dev/null

# The operator, trainer and server images, built with buildah (docs/images.md); an unchanged
# tree rebuilds nothing.
images: venv
	@bash dev/install-system-deps.sh
	$(PY) -m coxswain dev images build

generate: venv
	$(PY) -m coxswain generate crds

lint: venv
	$(VENV)/bin/ruff check operator trainer_image server_image tests bench build_without_dev.py
	$(VENV)/bin/ruff format --check operator trainer_image server_image tests bench build_without_dev.py
	$(VENV)/bin/mypy operator/coxswain trainer_image/coxswain_trainer server_image/coxswain_server

# pytest exits 5 when it collects nothing; that is not a failure of the project.
test: venv tools
	@bash dev/install-system-deps.sh
	$(VENV)/bin/ruff check operator trainer_image server_image tests bench build_without_dev.py
	$(VENV)/bin/mypy operator/coxswain trainer_image/coxswain_trainer server_image/coxswain_server
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; exit $$rc

test-unit: venv
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

cluster: venv tools
	$(PY) -m coxswain dev cluster up

cluster-down: venv
	$(PY) -m coxswain dev cluster down

demo: venv tools
	@bash dev/install-system-deps.sh
	$(PY) -m coxswain dev demo

bench: venv
	@bash dev/install-system-deps.sh
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
