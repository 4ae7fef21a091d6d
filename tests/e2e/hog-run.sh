#!/bin/sh
# The whole e2e suite with one core kept busy by a CPU hog, RUNS times in a row, on
# the guest LEADGEN_E2E_DISTRO names (default bookworm). A timing-dependent test
# fails here first. Prints one line per run; each run's full output stays in LOGDIR.
#
#   sudo tests/e2e/hog-run.sh [RUNS] [LOGDIR]
#
# The hog is a busy shell loop this script starts and kills by its PID.
set -eu
cd "$(dirname "$0")/../.."
runs=${1:-5}
logdir=${2:-$(mktemp -d /tmp/leadgen-hog.XXXXXX)}
mkdir -p "$logdir"
distro=${LEADGEN_E2E_DISTRO:-bookworm}

sh -c 'while :; do :; done' &
hog=$!
trap 'kill "$hog" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM

failed=0
i=1
while [ "$i" -le "$runs" ]; do
    log="$logdir/$distro-$i.log"
    start=$(date +%s)
    if LEADGEN_REQUIRE_E2E=1 LEADGEN_E2E_DISTRO="$distro" python3 -m pytest -p no:cacheprovider tests/e2e >"$log" 2>&1; then
        verdict=pass
    else
        verdict=FAIL
        failed=$((failed + 1))
    fi
    summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$log" | tail -n 1)
    echo "$distro run $i/$runs with a CPU hog (pid $hog): $verdict in $(($(date +%s) - start))s: $summary ($log)"
    i=$((i + 1))
done
[ "$failed" -eq 0 ]
