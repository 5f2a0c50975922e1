#!/usr/bin/env bash
# Telemetry overhead (issue 6): the tracing subscriber is global to a process, so `--telemetry on`
# and `off` are compared across processes. Builds release once, then alternates
# off/on/off/on/… (ROUNDS pairs) of the same scenarios, one run each, and prints per scenario
# the median rps and CPU µs/req of each mode and the share of rps lost with telemetry on.
#
#   bench/overhead.sh                      # defaults below
#   ROUNDS=5 DURATION=10s bench/overhead.sh
#   SCENARIOS="web-warm-1u-0ms mobile-warm-1u-0ms" bench/overhead.sh
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
SCENARIOS=${SCENARIOS:-"web-warm-1u-0ms web-off-1u-0ms mobile-warm-1u-0ms"}
TARGET_PCT=${TARGET_PCT:-5}

cd "$(dirname "$0")/.."
cargo build --release -p bff-bench
bin=target/release/bff-bench

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

args=()
for s in $SCENARIOS; do args+=(-s "$s"); done

for round in $(seq 1 "$ROUNDS"); do
    for mode in off on; do
        echo "round $round/$ROUNDS: telemetry $mode" >&2
        "$bin" "${args[@]}" --runs 1 --duration "$DURATION" --telemetry "$mode" \
            >"$out/$mode.$round.md" 2>"$out/$mode.$round.log"
        # Table rows: | name | conc | rps | p50 | p90 | p99 | errors | upstream | hit % | bytes | CPU µs/req | …
        # Only the main table (the cache table that follows has other columns).
        awk -F'|' -v mode="$mode" -v round="$round" '
            /^\| scenario \| conc \| rps/ { in_table = 1; next }
            in_table && !/^\|/ { in_table = 0 }
            in_table && $2 !~ /---/ {
                gsub(/ /, "", $2); gsub(/ /, "", $4); gsub(/ /, "", $12); gsub(/ /, "", $8)
                print $2, mode, round, $4, $12, $8
            }' "$out/$mode.$round.md" >>"$out/rows"
    done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
echo "telemetry overhead: $ROUNDS × (off, on) alternating processes, 1 run × $DURATION each; medians"
echo
echo "| scenario | rps off | rps on | rps lost | CPU µs/req off | CPU µs/req on | CPU added | errors (all runs) | rps off, each | rps on, each | verdict (≤ ${TARGET_PCT}% rps lost) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
for s in $SCENARIOS; do
    col() { awk -v s="$s" -v m="$1" -v c="$2" '$1 == s && $2 == m { print $c }' "$out/rows"; }
    rps_off=$(col off 4 | median); rps_on=$(col on 4 | median)
    cpu_off=$(col off 5 | median); cpu_on=$(col on 5 | median)
    errors=$(awk -v s="$s" '$1 == s { e += $6 } END { print e + 0 }' "$out/rows")
    each_off=$(col off 4 | paste -sd/ -); each_on=$(col on 4 | paste -sd/ -)
    awk -v s="$s" -v ro="$rps_off" -v rn="$rps_on" -v co="$cpu_off" -v cn="$cpu_on" \
        -v e="$errors" -v eo="$each_off" -v en="$each_on" -v t="$TARGET_PCT" 'BEGIN {
        lost = 100 * (ro - rn) / ro; added = 100 * (cn - co) / co
        verdict = lost <= t ? sprintf("met (%.1f points to spare)", t - lost) \
                            : sprintf("MISSED by %.1f points", lost - t)
        printf "| %s | %.0f | %.0f | %.1f%% | %.0f | %.0f | %+.1f%% | %d | %s | %s | %s |\n",
            s, ro, rn, lost, co, cn, added, e, eo, en, verdict
    }'
done
