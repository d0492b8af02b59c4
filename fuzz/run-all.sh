#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after another, and prints a
# Markdown row per target for FUZZING.md: executions, crashes, coverage, corpus size.
# Crashing inputs are kept in fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
[ -d corpus/nar_reader ] || ./seed.sh
mkdir -p corpus/lua_policy logs
cp -n ../lua/*.lua corpus/lua_policy/ 2>/dev/null || true
cargo +nightly fuzz build -O >/dev/null 2>&1 || { echo "fuzz build failed" >&2; exit 1; }
for t in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$t" "artifacts/$t"
    # -detect_leaks=0: rayon's global pool lives for the process by design.
    cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 -detect_leaks=0 \
        -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*')
    crashes=$(find "artifacts/$t" -type f | wc -l)
    echo "| $t | ${runs:-?} | $crashes | ${cov:-?} | $(ls "corpus/$t" | wc -l) | rc=$rc |"
done
