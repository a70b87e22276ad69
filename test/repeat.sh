#!/usr/bin/env bash
# test/repeat.sh: the reliability check.  Runs each given TAP file (default:
# every one) WX_REPEAT times in a row (default 10) against one build, with
# WX_LOAD busy processes beside it (default: one per core, a loaded
# machine), and prints a table: file, runs passed, slowest and fastest run.
# Exits non-zero if any run failed; the failed runs' logs are kept and
# named.  A test that fails here only under load has a timing assumption:
# fix the test, do not raise its timeout.
#   WX_REPEAT=10 WX_LOAD=2 bash test/repeat.sh test/t/013_queue_faults.pl
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WX_PRIVATE_PG=1

repeat=${WX_REPEAT:-10}
load=${WX_LOAD:-$(nproc)}
files=("$@")
if [ ${#files[@]} = 0 ]; then
    files=()
    for f in "$WX_ROOT"/test/t/*.pl; do files+=("test/t/${f##*/}"); done
fi

wx_prepare
keep=$(mktemp -d /tmp/wxpay-repeat.XXXXXX)

# the load: busy loops at the lowest priority, so they take what the
# tests leave and slow every wait the tests make
load_pids=()
for _ in $(seq "$load"); do
    nice -n 19 bash -c 'while :; do :; done' &
    load_pids+=($!)
done
stop_load() { for p in "${load_pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'stop_load; wx_cleanup' EXIT

status=0
table=""
for f in "${files[@]}"; do
    pass=0 min="" max=0
    for i in $(seq "$repeat"); do
        t0=$(date +%s)
        if WX_MAKE_ARGS="REGRESS= PROVE_TESTS='$f'" wx_run_suite >"$keep/run.log" 2>&1; then
            pass=$((pass + 1))
        else
            status=1
            cp "$keep/run.log" "$keep/$(basename "$f" .pl).$i.log"
            wx_log "$f: run $i FAILED (log $keep/$(basename "$f" .pl).$i.log)"
        fi
        t=$(( $(date +%s) - t0 ))
        [ -z "$min" ] || [ "$t" -lt "$min" ] && min=$t
        [ "$t" -gt "$max" ] && max=$t
    done
    line=$(printf '%-36s %3d/%-3d %5ss %5ss' "$f" "$pass" "$repeat" "$min" "$max")
    wx_log "$line"
    table="$table$line"$'\n'
done
stop_load
rm -f "$keep/run.log"
printf '\n%-36s %-7s %6s %6s   (load: %s busy processes)\n%s' file passed fastest slowest "$load" "$table"
if [ $status = 0 ]; then rm -rf "$keep"; else echo "failed runs' logs: $keep"; fi
exit $status
