#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a set time each:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s, every target
#
# Installs cargo-fuzz when missing. The targets build on the pinned stable toolchain with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly flags), with debug assertions and overflow checks,
# without a sanitizer (the project's code forbids `unsafe`). Each run starts from the committed
# corpus (fuzz/corpus/TARGET, read only) and keeps what it finds in fuzz/runs/TARGET, under an RSS
# limit (FUZZ_RSS_MB, default 2048: past it libFuzzer stops with an out-of-memory crash, which is
# how unbounded growth shows) and a per-input time limit (FUZZ_INPUT_TIMEOUT, default 10 s).
# Prints a table (target, seconds, executions, peak RSS, crashes) and, if FUZZ_JSON names a file,
# writes it as JSON; exits non-zero if any target crashed (its input is in fuzz/artifacts/TARGET).
# To keep what a run found: cargo fuzz cmin TARGET fuzz/corpus/TARGET after copying it in.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(gateway_config keys typed_keys orca kserve_request)
fi
rss_mb=${FUZZ_RSS_MB:-2048}
input_timeout=${FUZZ_INPUT_TIMEOUT:-10}

max_len() {
  case "$1" in
    keys) echo 65536 ;;        # a first message split over many frames
    kserve_request | typed_keys) echo 16384 ;;
    gateway_config) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
echo "== cargo fuzz build"
for t in "${targets[@]}"; do
  cargo fuzz build -s none "$t"
done

mkdir -p runs
rows=()
json=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "runs/$t" "artifacts/$t"
  log="runs/$t.log"
  echo "== $t: ${seconds} s (log: fuzz/$log)"
  start=$(date +%s)
  status=0
  cargo fuzz run -s none "$t" "runs/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$rss_mb" \
    -max_len="$(max_len "$t")" -timeout="$input_timeout" -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  elapsed=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  crashes=$(grep -cE '^==[0-9]+== ERROR: libFuzzer' "$log" || true)
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  if [ "$status" -ne 0 ]; then
    failed=1
    grep -E 'panicked|ERROR: libFuzzer|Test unit written' "$log" | head -5 || true
  fi
  rows+=("$(printf '%-16s %8s %12s %10s %8s' "$t" "$elapsed" "${execs:-?}" "${rss:-?}" "$crashes")")
  json+=("{\"target\": \"$t\", \"seconds\": $elapsed, \"executions\": ${execs:-null}, \"peak_rss_mb\": ${rss:-null}, \"crashes\": $crashes, \"exit_status\": $status}")
done

echo
printf '%-16s %8s %12s %10s %8s\n' target seconds executions "peak RSS MB" crashes
printf '%s\n' "${rows[@]}"
if [ -n "${FUZZ_JSON:-}" ]; then
  {
    echo "["
    for i in "${!json[@]}"; do
      sep=","
      [ "$i" -eq $((${#json[@]} - 1)) ] && sep=""
      echo "  ${json[$i]}$sep"
    done
    echo "]"
  } >"$FUZZ_JSON"
fi
exit "$failed"
