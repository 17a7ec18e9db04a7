# vmm: top-level entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo

# The README's main job: boot the guest with a fresh zoned disk and show what it sees.
run: guest build
	@resources/run-demo.sh

.PHONY: run build test lint unit-test lab-test blktests torture powercut deps host-deps guest guest-kernel guest-initramfs bench bench-smoke fuzz

deps:
	@resources/install-deps.sh build

build:
	$(CARGO) build --release

# What `vmm --share`/`--host-root` need on the host: a virtiofsd, and the programs blktests' zbd
# group runs from the host root (resources/install-deps.sh virtiofsd host-tools).
host-deps:
	@resources/install-deps.sh virtiofsd host-tools

# Formatting and clippy (warnings are errors), before the unit tests: part of `make test`.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test: lint
	$(CARGO) test --workspace

# End-to-end tests that boot guests in the lab (resources/lab/run-in-lab): #[ignore]d in plain
# `cargo test`, run here. One at a time: each boots a VM on this small machine.
lab-test: guest build host-deps
	$(CARGO) test -p vmm-tests --tests -- --ignored --test-threads=1

# blktests' zbd group from a host checkout (a copy of ../shared/blktests under build/blktests)
# through `vmm --host-root`, in two geometries (tests/tests/blktests.rs), alone: part of
# lab-test, about 17 minutes of it. Verdicts and runtimes in build/blktests-*.txt.
blktests: guest build host-deps
	$(CARGO) test -p vmm-tests --test blktests -- --ignored --test-threads=1 --nocapture

test: unit-test lab-test

# The SIGKILL crash-consistency torture (tests/tests/torture.rs) at full length: 50 kills in one
# lab boot (about 15-60 minutes, depending on how busy the host is); `make lab-test` runs it 3
# times. VMM_TORTURE_SEED=N replays a run.
VMM_TORTURE_ITERATIONS ?= 50
torture: guest build
	VMM_TORTURE_ITERATIONS=$(VMM_TORTURE_ITERATIONS) $(CARGO) test -p vmm-tests --test torture -- --ignored --nocapture

# Crash recovery of btrfs and f2fs under random power cuts (tests/tests/crash_recovery.rs,
# resources/powercut/crash-loop): VMM_POWERCUT_ITERATIONS of each (about 25 s an iteration in
# the lab), random seeds; `make lab-test` runs 3 of btrfs with seed 5 and the broken device.
# VMM_POWERCUT_SEED=N replays a run.
VMM_POWERCUT_ITERATIONS ?= 50
powercut: guest build host-deps
	VMM_POWERCUT_ITERATIONS=$(VMM_POWERCUT_ITERATIONS) $(CARGO) test -p vmm-tests --test crash_recovery -- --ignored --nocapture --test-threads=1

# The guest: kernel (Debian's 6.12 source, tinyconfig + resources/guest/kernel.config) and
# initramfs (busybox, bash, fio, util-linux, zbd, btrfs-progs, /init). Cached; see README "Guest lab".
guest: guest-kernel guest-initramfs

guest-kernel:
	@resources/guest/build-kernel.sh

guest-initramfs:
	@resources/guest/build-initramfs.sh

# Benchmarks (README "Benchmarks"): startup and footprint, the device model against raw file I/O,
# and, in the lab, boot and guest I/O against QEMU microvm. Writes build/bench/report.md.
# bench-smoke is a quick pass (few repetitions, small sizes); neither is part of `make test`.
bench: guest build
	@resources/bench/run

bench-smoke: guest build
	@resources/bench/run --quick

# Coverage-guided fuzzing of everything a guest controls (fuzz/, cargo-fuzz): each target for
# FUZZ_SECONDS (default 60), one after the other; corpora and crashes under build/fuzz/.
fuzz:
	@fuzz/run.sh
