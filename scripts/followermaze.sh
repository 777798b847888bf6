#!/usr/bin/env bash
# Runs the maze-sim verifier against a running server, like the classic followermaze.sh:
# configure it with the same environment variables (eventListenerPort, clientListenerPort,
# totalEvents, concurrencyLevel, numberOfUsers, randomSeed, timeout,
# maxEventSourceBatchSize, logInterval, logLevel) plus `scenario`; extra arguments go to
# maze-sim (e.g. --server-pid PID). Builds the release binary first if needed.
# Prints the verifier's progress, the classic banner on success, and a key=value summary;
# exits 0 on success, 1 on a failed verification.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin maze-sim
exec ./target/release/maze-sim "$@"
