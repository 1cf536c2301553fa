# Two entry points: `make up` (install everything, then run the local stack) and
# `make test` (install everything, then lint and run the whole test suite).
# Installation is idempotent and quick when already done.

SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(CURDIR)/.venv/bin:$(HOME)/.local/bin:$(PATH)
export UV_LINK_MODE ?= copy
export GX_ANALYTICS_ENABLED := false
export DAGSTER_DISABLE_TELEMETRY := 1

APT_PACKAGES := openjdk-17-jdk-headless postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install install-system install-python install-flink up test faults lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: install-system install-python install-flink  ## install everything (system packages, uv, locked venv, Flink env)

install-system:  ## Debian packages: a JDK (Flink), PostgreSQL (ledger tests); checks the image's tools
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jdk-headless"; \
	{ command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@command -v terraform >/dev/null || echo "note: terraform not found; the deploy tests need it for 'terraform fmt -check'"

install-python:  ## uv and the locked environment (.venv)
	@command -v uv >/dev/null || python3 -m pip install --quiet --user uv
	uv sync --frozen --quiet
	@# Two wheels ship stigg/__init__.py: Stigg's REST SDK (`stigg`, dev: compatibility tests)
	@# and stigg-api-client-v2 (the one stigg-sidecar-sdk imports). uv installs in parallel,
	@# so either may end up on disk; the GraphQL client's must (the images install no REST SDK).
	@.venv/bin/python -c 'from stigg import AsyncStiggClient' 2>/dev/null \
	  || uv sync --frozen --quiet --reinstall-package stigg-api-client-v2

install-flink: install-python  ## PyFlink's own environment (streaming/flink/.venv; pins pyarrow<17)
	@if [ -x streaming/flink/setup_env.sh ]; then streaming/flink/setup_env.sh; fi

up: install  ## install, then run the whole local stack in the foreground (Ctrl-C stops it)
	.venv/bin/byoc up

lint:  ## ruff lint and format check
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format:  ## apply ruff fixes and formatting
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

test: install lint  ## install, lint, then run the whole test suite
	.venv/bin/pytest

# Also run by `make test` (tests/faults is collected with the rest); here alone, with its output.
faults: install  ## the fault test: SIGKILL every component 3x under load, exact reconciliation
	.venv/bin/pytest -s tests/faults/test_kill_components_under_load.py

clean:  ## remove the local stack's data directory (.byoc) — all local data!
	rm -rf .byoc
