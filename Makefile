# vmm: top-level entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo

.PHONY: build test unit-test lab-test deps guest guest-kernel guest-initramfs

deps:
	@resources/install-deps.sh build

build:
	$(CARGO) build --release

unit-test:
	$(CARGO) test --workspace

test: unit-test

# The guest: kernel (Debian's 6.12 source, tinyconfig + resources/guest/kernel.config) and
# initramfs (busybox, bash, fio, util-linux, zbd, btrfs-progs, /init). Cached; see README "Guest lab".
guest: guest-kernel guest-initramfs

guest-kernel:
	@resources/guest/build-kernel.sh

guest-initramfs:
	@resources/guest/build-initramfs.sh
