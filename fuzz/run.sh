#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target (or those in FUZZ_TARGETS) for FUZZ_SECONDS each, one at
# a time, and prints executions, coverage and crashes per target. Corpora live under
# build/fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET), crashes under
# build/fuzz/artifacts/TARGET. Exits 1 if a target crashed, 2 if fuzzing cannot run here.
#
# Toolchain: cargo-fuzz is installed with `cargo install cargo-fuzz --locked` when missing.
# With a nightly toolchain it runs `cargo +nightly fuzz` (AddressSanitizer on); with stable
# only, `RUSTC_BOOTSTRAP=1 cargo fuzz --sanitizer none` (libFuzzer's coverage guidance still
# works; memory errors in unsafe code are then not caught). FUZZ_TOOLCHAIN=stable forces that.
set -euo pipefail

cd "$(dirname "$0")"
root=$(cd .. && pwd)
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-virtio_blk_chain zoned_requests mmio_registers image_header}
work=$root/build/fuzz

die() { echo "make fuzz: $*" >&2; exit 2; }

# Before anything logs there: a fresh clone has no build/ yet.
mkdir -p "$work"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "make fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked >"$work/install.log" 2>&1 \
        || die "cannot install cargo-fuzz (see $work/install.log)"
fi

if [[ ${FUZZ_TOOLCHAIN:-} != stable ]] && cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    sanitizer=()
    toolchain="nightly, AddressSanitizer"
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    sanitizer=(--sanitizer none)
    toolchain="stable with RUSTC_BOOTSTRAP=1, no sanitizer"
fi

echo "make fuzz: building the targets ($toolchain)"
"${fuzz[@]}" build -O "${sanitizer[@]}" >"$work/build.log" 2>&1 \
    || die "building the fuzz targets failed ($toolchain): see $work/build.log"

status=0
summary=()
for target in $targets; do
    [[ -d seeds/$target ]] || die "unknown target $target (no fuzz/seeds/$target)"
    corpus=$work/corpus/$target
    artifacts=$work/artifacts/$target
    log=$work/$target.log
    mkdir -p "$corpus" "$artifacts"
    touch "$work/$target.start"
    echo "make fuzz: $target for ${seconds}s (log: $log)"
    # -timeout: one input running 10 s is a hang (an unbounded guest-driven loop), a failure.
    set +e
    "${fuzz[@]}" run -O "${sanitizer[@]}" "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1
    rc=$?
    set -e
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    rate=$(sed -n 's/.* exec\/s: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(find "$artifacts" -type f -newer "$work/$target.start" | wc -l)
    line="$target: ${execs:-?} executions (${rate:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus $(find "$corpus" -type f | wc -l) inputs, $crashes crash files"
    if [[ $rc -ne 0 || $crashes -ne 0 ]]; then
        line="$line, FAILED (exit $rc): see $log"
        status=1
    fi
    summary+=("$line")
done

echo
printf '%s\n' "${summary[@]}"
exit $status
