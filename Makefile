# Everything a fresh machine needs is installed by these targets: the Python
# environment (.venv, through uv), Debian packages (.ci/system-deps.sh: etcd-server,
# util-linux, prometheus, openssl, lua5.1, iproute2, iptables, procps, buildah, mmdebstrap), the Go-built binaries
# (Kubernetes, kwok, helm, Kueue, kstatus-check, the CNI plugins, the Prometheus Operator and
# Prometheus; cached under ~/.cache/lmms-operator, keyed by
# version) and the two images (make images; cached by buildah, keyed by their inputs).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
DEVCLUSTER_DIR ?= $(CURDIR)/.devcluster
export PATH := $(BIN):$(PATH)

.PHONY: all venv lock images system-deps binaries devcluster devcluster-down demo test test-unit chart lint crds catalogue clean

all: test

$(VENV)/.installed: pyproject.toml tests/infra/pyproject.toml requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	# Every package from the lock (pinned, with hashes), then the operator and, apart
	# from it, the development-only devcluster package (tests/infra: never in the wheel
	# or the images), without resolving anything again. Bytecode is compiled once, here,
	# as in the images: where PYTHONDONTWRITEBYTECODE is set, every test's lmms-eval and
	# every devcluster pod would otherwise compile the ~2,500 modules it imports again.
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --require-hashes -r requirements/dev.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e . -e tests/infra
	touch $@

# The operator and runner images, built without a daemon (buildah, vfs, chroot isolation) from a
# base made from Debian packages (mmdebstrap); cached, keyed by a hash of its inputs. The
# inference engines' images (runner-image/engines/: CUDA and torch, many GB) only when asked:
# make images ENGINES=vllm,sglang (ENGINE_BASE: a base whose python3 is 3.12).
ENGINES ?=
comma := ,
images: system-deps
	@bash tests/infra/lmms_devcluster/images.sh all
	@for engine in $(subst $(comma), ,$(ENGINES)); do \
		bash tests/infra/lmms_devcluster/images.sh engine-$$engine || exit 1; done

# Write the lock files (requirements/*.txt) again after a change to pyproject.toml's
# dependencies; tests/unit/test_lock.py fails until then.
lock: venv
	$(BIN)/python -m lmms_devcluster.lock

venv: $(VENV)/.installed

system-deps:
	@bash .ci/system-deps.sh

binaries: system-deps venv
	@bash tests/infra/lmms_devcluster/build-k8s.sh
	@bash tests/infra/lmms_devcluster/build-kueue.sh
	@bash tests/infra/lmms_devcluster/build-netmon.sh
	@$(BIN)/python -c "from lmms_devcluster import devcluster as d; d.find_kstatus_check()"

devcluster: binaries
	@$(BIN)/lmms-devcluster up --dir $(DEVCLUSTER_DIR)

devcluster-down:
	@if [ -x $(BIN)/lmms-devcluster ]; then $(BIN)/lmms-devcluster down --dir $(DEVCLUSTER_DIR); fi

demo: binaries
	@$(BIN)/python -m lmms_devcluster.demo --dir $(DEVCLUSTER_DIR)

lint: venv
	$(BIN)/ruff check operator runner-image tests
	$(BIN)/ruff format --check operator runner-image tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: binaries images
	$(MAKE) lint
	$(BIN)/python -m pytest tests

test-unit: venv
	$(BIN)/python -m pytest tests/unit

# helm lint and helm template over several value sets, promtool rule tests, Lua checks.
chart: binaries
	$(BIN)/python -m pytest tests/chart

clean: devcluster-down
	rm -rf $(VENV) $(DEVCLUSTER_DIR)
