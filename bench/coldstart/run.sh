#!/usr/bin/env bash
# Cold start of the Baton Lambda functions, side by side with a Rust hello-world Lambda and a
# Node.js 20 handler doing the widget ingress job with the AWS SDK v3, in one run.
#
#   bench/coldstart/run.sh            # RUNS=10 INVOKES=5 PROFILE=perf by default
#   RUNS=20 PROFILE=release bench/coldstart/run.sh
#   SKIP_BUILD=1 bench/coldstart/run.sh
#   PROFILES="release release-z" bench/coldstart/run.sh   # several profiles side by side
#
# Each binary runs under /work/shared/tools/lambda_runtime_bench.py's fake Runtime API (HARNESS
# to override), with DynamoDB and SQS served by a moto_server on loopback. Binaries are native
# (x86_64) builds, not the arm64 deployment artefacts.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RUNS="${RUNS:-10}"
INVOKES="${INVOKES:-5}"
PROFILE="${PROFILE:-perf}"
# Several profiles side by side: each function once per profile; the hello-world is built
# with the first one.
read -r -a PROFILE_LIST <<<"${PROFILES:-$PROFILE}"
PROFILE="${PROFILE_LIST[0]}"
HARNESS="${HARNESS:-/work/shared/tools/lambda_runtime_bench.py}"
EVENT="${EVENT:-$(dirname "$HARNESS")/httpapi_event.json}"
FUNCTIONS=(widget-api agent-api desk-webhook channel-webhook conversation-worker timeout-check timeout-sweeper widget-socket)
HELLO_TARGET="$HERE/hello-lambda/target"

if [[ -z "${SKIP_BUILD:-}" ]]; then
    # One cargo build at a time; cargo waits for the target directory's lock if another build holds it.
    pkgs=()
    for f in "${FUNCTIONS[@]}"; do pkgs+=(-p "$f"); done
    for p in "${PROFILE_LIST[@]}"; do
        (cd "$ROOT" && nice -n 10 cargo build --profile "$p" "${pkgs[@]}")
    done
    nice -n 10 cargo build --profile "$PROFILE" --manifest-path "$HERE/hello-lambda/Cargo.toml" \
        --target-dir "$HELLO_TARGET"
    (cd "$HERE/node" && nice -n 10 npm ci --no-audit --no-fund --loglevel=error) >&2
fi
echo "node $(node --version); $(rustc --version)" >&2

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/moto-api/" && break
    sleep 0.1
done

export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true
BASE_EVENT="$EVENT" python3 "$HERE/setup_moto.py" "$WORK"
# The env file is passed to every child (the harness adds the Lambda variables and credentials).
{
    echo "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
    echo "AWS_EC2_METADATA_DISABLED=true"
    if [[ -n "${RUST_LOG:-}" ]]; then echo "RUST_LOG=$RUST_LOG"; fi
} >>"$WORK/env"

cases=()
for p in "${PROFILE_LIST[@]}"; do
    for f in "${FUNCTIONS[@]}"; do
        label="$f"
        if [[ ${#PROFILE_LIST[@]} -gt 1 ]]; then label="$f [$p]"; fi
        cases+=(--case "$label" "$WORK/event-$f.json" "$ROOT/target/$p/$f")
    done
done
cases+=(--case hello-lambda "$WORK/event-hello-lambda.json" "$HELLO_TARGET/$PROFILE/hello-lambda")
cases+=(--case node "$WORK/event-node.json" "$HERE/node/bootstrap")

echo "Command: RUNS=$RUNS INVOKES=$INVOKES PROFILES=\"${PROFILE_LIST[*]}\" bench/coldstart/run.sh" >&2
python3 "$HERE/measure.py" --harness "$HARNESS" --runs "$RUNS" --invokes "$INVOKES" --env-file "$WORK/env" \
    ${JSON_OUT:+--json-out "$JSON_OUT"} "${cases[@]}"
