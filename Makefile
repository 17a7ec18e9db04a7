# vmm: top-level entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo

.PHONY: build test unit-test deps

deps:
	@resources/install-deps.sh build

build:
	$(CARGO) build --release

unit-test:
	$(CARGO) test --workspace

test: unit-test
