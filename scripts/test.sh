#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test of the workspace.
# Ends with one summary line, "N passed, N failed", over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# The AWS tests run against moto_server and lint template.yaml with cfn-lint (both from PyPI).
if ! command -v moto_server >/dev/null || ! command -v cfn-lint >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]>=5,<6" "cfn-lint>=1,<2"
fi
log=$(mktemp)
deny_log=$(mktemp)
trap 'rm -f "$log" "$deny_log" "$deny_log.apt"' EXIT
# cargo-deny checks licenses, bans and sources (deny.toml). It is not packaged anywhere we can
# install from, so it is built from crates.io when missing, alongside the workspace's build.
deny_pid=
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install --locked --quiet --no-default-features cargo-deny@0.20.2 >"$deny_log" 2>&1 &
  deny_pid=$!
fi
# The browser tests (cli/tests/browser.rs) drive Debian's Chromium through ChromeDriver.
apt_pid=
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "the browser tests need Chromium: sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    >"$deny_log.apt" 2>&1 &
  apt_pid=$!
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  cat "$deny_log.apt"
  exit 1
fi
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
if [ -n "$deny_pid" ] && ! wait "$deny_pid"; then
  cat "$deny_log"
  status=1
fi
# The advisory database needs network access that CI does not have: advisories are left out.
cargo deny --log-level error check licenses bans sources || status=1
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
