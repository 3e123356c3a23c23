#!/usr/bin/env bash
# The test suite under AddressSanitizer and ThreadSanitizer, each in its own
# build folder (a sanitized build cannot share .build with a plain one).
# Slow (two full rebuilds), so not part of scripts/test.sh; run it before a
# release. Usage: scripts/sanitize.sh [address|thread ...] [-- swift test args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
kinds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do kinds+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#kinds[@]} -gt 0 ] || kinds=(address thread)
# Known leaks of dependencies (see the file); every process the tests start inherits this.
export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0"
# ASan's default 256 MiB quarantine of freed memory would trip the log-flood test's RSS bound.
# Leaks are checked in swarmd and swarmctl (a leak makes them exit non-zero, which the tests
# see), not in the test runner, whose harness threads are alive when it exits.
export ASAN_OPTIONS="detect_leaks=0:quarantine_size_mb=16"
export SWARM_CHILD_ASAN_OPTIONS="detect_leaks=1:quarantine_size_mb=16"
status=0
for kind in "${kinds[@]}"; do
    dir=.build-$kind
    echo "sanitize.sh: building with --sanitize=$kind in $dir"
    swift build --sanitize="$kind" --scratch-path "$dir" 2>&1 | tail -n 2
    swift build --build-tests --sanitize="$kind" --scratch-path "$dir" 2>&1 | tail -n 2
    # The integration tests run the sanitized swarmd/swarmctl of this build folder.
    SWARM_SANITIZER="$kind" SWARM_BIN_DIR="$PWD/$dir/debug" swift test --skip-build --sanitize="$kind" --scratch-path "$dir" "$@" || status=1
done
exit $status
