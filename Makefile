# ml-platform: one Pulumi program for an ML train-and-serve platform on Kubernetes.
# `make help` lists the targets. Everything runs from a project-local virtualenv (.venv).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# checkov pins old versions of packaging/networkx that torch and mlflow do not want: it gets its own venv.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
STACKS := dev gpu
OUT    := build/rendered
KIND_CLUSTER ?= ml-platform
IMAGE  ?= ml-platform:dev
SERVICES_IMAGE ?= ml-platform-services:dev
TOOLCHAIN_SH := tests/engine/toolchain.sh
OBS_TOOLCHAIN_SH := tests/observability/toolchain.sh

.PHONY: help install demo test test-fast obs-toolchain lint render bench-infra kind-up image kind-load up-dev preview clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]" --constraint constraints.txt
	touch $@

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet "checkov==$(CHECKOV_VERSION)"
	touch $@

install: $(STAMP) $(CHECKOV_STAMP) ## create .venv (tests, trainer, inference, infra) and .venv-checkov

demo: $(STAMP) ## set up, then run the whole platform locally: MLflow, 2-rank DDP training, inference, a completion
	$(BIN)/python -m demo $(DEMO_ARGS)

test: ## set up (venvs, toolchains from Go modules, Debian packages, images) and run every tier
	@MAKE="$(MAKE)" bash tests/toolchain/setup.sh build/test-env.sh
	@set -a && . build/test-env.sh && set +a && $(BIN)/python -m tests.tiers

test-fast: $(STAMP) ## the tests without the slow ones (real processes, servers, training), the engine and prometheus tiers
	$(BIN)/python -m pytest -m "not slow and not engine and not prometheus"

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy infra
	$(BIN)/mypy rollout

render: $(STAMP) ## render every Kubernetes object of both stacks to build/rendered/, no cluster needed
	@mkdir -p $(OUT)
	@for s in $(STACKS); do $(BIN)/python -m infra.render $$s --out $(OUT)/$$s.yaml || exit $$?; done
	@grep -h '^kind:' $(OUT)/dev.yaml | sort | uniq -c | sed 's/^/  dev: /'
	@echo "open $(OUT)/dev.yaml and $(OUT)/gpu.yaml to read every object each stack creates"

bench-infra: $(STAMP) ## time rendering each stack and the infra test suite; writes docs/benchmarks.md
	$(BIN)/python bench/bench_infra.py

# --- a real kind cluster (needs docker, kind, kubectl and the pulumi CLI) ----------------------------------
kind-up: ## create the kind cluster of the dev stack (host dirs and port mappings from kind/cluster.yaml) and install Traefik
	mkdir -p .state/kind-data && chmod 0777 .state/kind-data
	kind create cluster --name $(KIND_CLUSTER) --config kind/cluster.yaml
	kubectl --context kind-$(KIND_CLUSTER) apply -f kind/traefik.yaml

image: ## build both images: the platform (torch, CPU) and the services (no torch); CUDA: DOCKER_ARGS="--build-arg BASE_IMAGE=..."
	docker build --target services -t $(SERVICES_IMAGE) .
	docker build $(DOCKER_ARGS) -t $(IMAGE) .

kind-load: image ## build both images and load them into the kind cluster
	kind load docker-image $(IMAGE) $(SERVICES_IMAGE) --name $(KIND_CLUSTER)

up-dev: ## pulumi up the dev stack into the kind cluster
	pulumi up --stack dev

preview: ## pulumi preview both stacks (needs a cluster context and, for gpu, the postgresPassword secret)
	@for s in $(STACKS); do pulumi preview --stack $$s || exit $$?; done

clean: ## remove build outputs (not .venv, not .state)
	rm -rf build .pytest_cache

# --- engine tier: a local Kubernetes control plane built from Go modules (docs/engine.md) -------------------
.PHONY: toolchain cluster-local engine-test

obs-toolchain: ## build or reuse promtool, prometheus and the Prometheus Operator CRDs; last line: their directory
	@bash $(OBS_TOOLCHAIN_SH)

toolchain: ## build or reuse etcd, kube-apiserver/-controller-manager/-scheduler, kwok and the Pulumi engine; last line: their directory
	@bash $(TOOLCHAIN_SH)

cluster-local: $(STAMP) ## start the local control plane (kwok CPU + GPU nodes), print the kubeconfig path; Ctrl-C stops it
	@dir="$$(bash $(TOOLCHAIN_SH) | tail -n 1)" && $(BIN)/python -m tests.engine.cluster --toolchain "$$dir"

engine-test: $(STAMP) ## build or reuse the toolchain, then run the engine tests (pytest -m engine) on a fresh control plane
	@dir="$$(bash $(TOOLCHAIN_SH) | tail -n 1)" && ML_PLATFORM_TOOLCHAIN="$$dir" $(BIN)/python -m pytest -m engine tests/engine

# --- cluster tier: a real single-node cluster in a network namespace of its own (docs/cluster.md; needs root) --
.PHONY: cluster-real

cluster-real: $(STAMP) ## build or reuse the toolchains and both images, start a real cluster with them; Ctrl-C stops it
	@cp="$$(TOOLS='etcd kube-apiserver kube-controller-manager kube-scheduler' bash $(TOOLCHAIN_SH) | tail -n 1)" \
	&& node="$$(bash tests/cluster/toolchain.sh | tail -n 1)" \
	&& services="$$($(BIN)/python -m tests.cluster.images services | tail -n 1)" \
	&& ref="$$($(BIN)/python -m tests.cluster.images platform | tail -n 1)" \
	&& $(BIN)/python -m tests.cluster.realcluster --toolchain "$$cp" --node-toolchain "$$node" \
		--image "$$ref=$(IMAGE)" --image "$$services=$(SERVICES_IMAGE)"
