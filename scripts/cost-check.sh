#!/bin/sh
# What a review runs: the gateway's cost per call, counted by callgrind, against the committed
# reports/bench/cost.json. Instruction counts do not move with machine load, times do.
#
# Builds the release binary (and the counting one, for bytes), runs `switchyard bench cost` into a
# temporary file with the committed report as its baseline, prints each configuration's
# instructions and allocations per call (unary and streaming) old, new and their ratio, and exits
# non-zero when any grew by more than the tolerance (2 % by default).
#
#   scripts/cost-check.sh [--tolerance PERCENT] [other `bench cost` flags]
#
# After a change that moves the figures on purpose, regenerate the baseline and commit it:
#   target/release/switchyard bench cost --runs 3 --json reports/bench/cost.json
set -eu
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1 || ! command -v callgrind_control >/dev/null 2>&1; then
    echo "cost-check: valgrind is missing: run scripts/install-bench-deps.sh" >&2
    exit 2
fi
cargo build --release
cargo build --release --features count-allocations --bin switchyard-count-allocations

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# bench cost prints the comparison and fails when a figure grew past the tolerance.
# Three runs under callgrind, each window the run of the median instructions, as the baseline was
# made: timing (how the calls fall into frames and polls) moves them a little from run to run.
target/release/switchyard bench cost --runs 3 --baseline reports/bench/cost.json --json "$out/cost.json" "$@"
