# Set-up is part of every target: on a fresh machine `make demo` and
# `make test` are each one command.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.covey-installed
DEV_STAMP := $(VENV)/.covey-dev-installed
FLOWER_VENV := .venv-flower

.PHONY: demo test lint typecheck docs bench bench-flower clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,torch,xgboost,docs,analytics,dashboard,tensorboard,mlflow,ray]'
	touch $(STAMP) $(DEV_STAMP)

# The dashboard's browser tests drive headless Chromium; install it once if missing.
.PHONY: chromium
chromium:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

demo: $(STAMP)
	$(BIN)/covey demo

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(DEV_STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --config-file tests/mypy.ini

# The documentation site; --strict turns a broken link or reference into a failure.
# Not --quiet: it drops the warnings before --strict counts them, so nothing failed.
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Two workers (the CI machine's two cores); each test file runs whole in one of them.
test: lint typecheck docs chromium
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# The wire messages: regenerate covey_pb2.py/.pyi after editing covey.proto
# (tests/test_proto_generated.py fails while they differ). The code names the
# protobuf its grpcio-tools was made for, and protobuf refuses to load it with an
# older one: the test fails too when that is newer than pyproject's protobuf floor.
PROTO_DIR := src/covey/transport/grpc/proto
.PHONY: proto
proto: $(DEV_STAMP)
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) --python_out=$(PROTO_DIR) \
		--pyi_out=$(PROTO_DIR) covey.proto

clean:
	rm -rf $(VENV) $(FLOWER_VENV) build dist site .mypy_cache .pytest_cache .ruff_cache

# Benchmarks. `bench` compares covey with a plain NumPy loop; `bench-flower`
# adds Flower, installed in its own venv (flwr pins its own Ray).
FLOWER_STAMP := $(FLOWER_VENV)/.flwr-installed
BENCH_ARGS ?=

$(FLOWER_STAMP):
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOWER_VENV)/bin/python -m pip install --quiet 'flwr[simulation]==1.42.0' numpy scikit-learn
	touch $(FLOWER_STAMP)

# The covey-ray row needs covey's ray extra in .venv.
RAY_STAMP := $(VENV)/.covey-ray-installed
$(RAY_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[ray]'
	touch $(STAMP) $(RAY_STAMP)

bench-flower: $(RAY_STAMP) $(FLOWER_STAMP)
	$(BIN)/python benchmarks/vs_flower.py --systems covey,covey-process,covey-ray,plain,flower \
		--flower-python $(FLOWER_VENV)/bin/python $(BENCH_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/vs_flower.py --systems covey,covey-process,plain $(BENCH_ARGS)

# Deployed federations: covey server/client processes vs Flower's SuperLink and
# SuperNodes (from the same .venv-flower) vs raw loopback sockets. Takes tens of
# minutes; results go to benchmarks/results/. Extra flags: DEPLOY_ARGS="--n 10 --no-huge".
DEPLOY_ARGS ?=
.PHONY: bench-deploy
bench-deploy: $(STAMP) $(FLOWER_STAMP)
	$(BIN)/python benchmarks/deploy_vs_flower.py --flower-bin $(FLOWER_VENV)/bin $(DEPLOY_ARGS)
