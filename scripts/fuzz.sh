#!/usr/bin/env bash
# Fuzz every inbound parser and verifier, and the HTTP surface, with libFuzzer.
#
#   scripts/fuzz.sh [seconds per target] [target...]     (default: 600 s, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain
# (`rustup toolchain install nightly`); without nightly it builds with RUSTC_BOOTSTRAP=1.
# Targets run one after another (FUZZ_JOBS=N runs N at once). New inputs are kept in
# target/fuzz-corpus/<target>; FUZZ_KEEP=1 merges them into fuzz/corpus/ afterwards (the
# seeds the tests replay). A crash leaves its input in fuzz/libfuzzer/artifacts/<target>/;
# copy it to fuzz/regressions/<target>/ so the test suite replays it. The summary (runs,
# peak memory, crashes per target) is written to target/fuzz-report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
# Every target has its binary in fuzz/libfuzzer/fuzz_targets (the test suite checks that).
mapfile -t all < <(basename -s .rs fuzz/libfuzzer/fuzz_targets/*.rs)
targets=("${@:-${all[@]}}")
jobs=${FUZZ_JOBS:-1}

toolchain=()
if rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
# Every target, optimised, with AddressSanitizer (cargo-fuzz's defaults).
cargo "${toolchain[@]}" fuzz build --fuzz-dir fuzz/libfuzzer
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/libfuzzer/target/$triple/release

report=target/fuzz-report.txt
mkdir -p target
: >"$report"
run_one() {
  local t=$1 work=target/fuzz-corpus/$1 log=target/fuzz-$1.log
  mkdir -p "$work" "fuzz/libfuzzer/artifacts/$t"
  local status=0
  "$bin_dir/$t" "$work" "fuzz/corpus/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=60 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="fuzz/libfuzzer/artifacts/$t/" >"$log" 2>&1 || status=$?
  local runs rss
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
  local crashes
  crashes=$(find "fuzz/libfuzzer/artifacts/$t" -type f | wc -l)
  echo "$t: ${seconds} s, ${runs:-?} runs, peak RSS ${rss:-?} MB, exit $status, crash inputs $crashes" | tee -a "$report"
}
export -f run_one
export seconds bin_dir report
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}'

if [ "${FUZZ_KEEP:-0}" = 1 ]; then
  for t in "${targets[@]}"; do
    "$bin_dir/$t" -merge=1 "fuzz/corpus/$t" "target/fuzz-corpus/$t" >/dev/null 2>&1 || true
  done
fi
echo "summary: $report"
