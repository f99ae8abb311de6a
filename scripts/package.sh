#!/usr/bin/env bash
# Build every Lambda function for arm64 (Graviton) as AWS deploys it and print each zipped
# package's size. Not part of CI (a release build with LTO takes a while). Installs
# cargo-lambda and zig from PyPI and the Rust target if they are missing.
#   scripts/package.sh            # all functions
#   scripts/package.sh widget-api # one
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-lambda >/dev/null || python3 -m pip install --quiet cargo-lambda ziglang
rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/lambda-build}"
functions=("$@")
[ ${#functions[@]} -gt 0 ] || functions=($(ls functions | grep -v README))
args=()
for f in "${functions[@]}"; do args+=(--bin "$f"); done
cargo lambda build --release --arm64 --output-format zip "${args[@]}"
printf '%-22s %12s %12s\n' function "zip bytes" "bootstrap"
for f in "${functions[@]}"; do
  zip="$CARGO_TARGET_DIR/lambda/$f/bootstrap.zip"
  bin_size=$(unzip -l "$zip" | awk '/bootstrap$/ {print $1}')
  printf '%-22s %12s %12s\n' "$f" "$(stat -c %s "$zip")" "$bin_size"
done
