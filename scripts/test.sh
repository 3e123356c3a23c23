#!/usr/bin/env bash
# The whole test suite: unit tests of the pure core, config and protocol,
# seeded fuzzing, and integration tests that start real swarmd processes.
# Usage: scripts/test.sh [extra swift test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
start=$(date +%s)
# The integration tests run the built binaries: build them first.
swift build 2>&1 | tail -n 3
swift build --build-tests 2>&1 | tail -n 3
echo "test.sh: build took $(( $(date +%s) - start ))s"
systemd/verify.sh .build/debug/swarmd
status=0
swift test --skip-build "$@" || status=$?
echo "test.sh: total $(( $(date +%s) - start ))s"
exit "$status"
