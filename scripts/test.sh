#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace.
# Ends with one summary line, "N passed, N failed", over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# The AWS tests run against moto_server and lint template.yaml with cfn-lint (both from PyPI).
if ! command -v moto_server >/dev/null || ! command -v cfn-lint >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]>=5,<6" "cfn-lint>=1,<2"
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
