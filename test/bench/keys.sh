#!/usr/bin/env bash
# test/bench/keys.sh: the cost of keys at rest (issue 20).  Sequential
# wxpay_stop_sign_plan calls (test/bench/session.sql, one backend, after a
# warm-up that fills the config cache) with the config's keys stored in
# plaintext beside the same calls with the keys sealed under a root key
# (wxpay.root_key_command), alternating in rounds on one cluster so that
# the machine's load falls on both alike.  Each round stores the keys anew
# in the form it measures and checks that they are in that form.  Opened
# keys are cached like parsed keys, so the two should be within noise; the
# first call of a session pays the root key command and one AES-GCM open.
# Not a test: figures depend on the machine and its load.
#
#   bash test/bench/keys.sh            # 5 rounds of 1000 calls each way
#   bash test/bench/keys.sh --smoke    # tiny N, checks that it still works
# Environment: WX_BENCH_N (calls per round, 1000), WX_BENCH_WARM (20),
# WX_BENCH_KEY_ROUNDS (5); WX_KEEP=1 as for run.sh.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
WX_PRIVATE_PG=1

N=${WX_BENCH_N:-1000}
WARM=${WX_BENCH_WARM:-20}
ROUNDS=${WX_BENCH_KEY_ROUNDS:-5}
if [ "${1:-}" = --smoke ]; then N=12; WARM=2; ROUNDS=1; fi

WX_PG_CONF="shared_preload_libraries = 'wxpay_signplan'"
wx_prepare >&2
BENCH="$WX_ROOT/test/bench"
psql_su() { wx_as_pg psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }

wx_setup_config
KEYFILE="$WX_WORK/root.key"
openssl rand -hex 32 >"$KEYFILE"
chmod 0644 "$KEYFILE"

# set the root key command ('' = none) and wait until new sessions see it
root_key() {
    psql_su -c "ALTER SYSTEM SET wxpay.root_key_command = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
    for _ in $(seq 1 200); do
        [ "$(psql_su -At -c "SHOW wxpay.root_key_command")" = "$1" ] && return 0
        sleep 0.05   # waiting for the postmaster to reload, not synchronising a test
    done
    echo "the setting did not arrive" >&2
    exit 1
}

store() {   # plain | sealed
    if [ "$1" = sealed ]; then
        root_key "cat $KEYFILE"
    else
        root_key ''
    fi
    psql_su -c "UPDATE wxpay_config SET private_key = pg_read_file('$WXPAY_PKI/merchant.key') WHERE name = 'default'"
    local form
    form=$(psql_su -At -c "SELECT CASE WHEN private_key LIKE 'wxsealed:v1:%' THEN 'sealed' ELSE 'plain' END FROM wxpay_config")
    [ "$form" = "$1" ] || { echo "stored $form, wanted $1" >&2; exit 1; }
}

declare -A CALLS WALL CPU FIRST
for m in plain sealed; do CALLS[$m]=0; WALL[$m]=0; CPU[$m]=0; FIRST[$m]=0; done
run=0
wx_log "keys at rest: $ROUNDS rounds of $N sequential stops, plaintext then sealed"
for r in $(seq 1 "$ROUNDS"); do
    for m in plain sealed; do
        store "$m"
        run=$((run + 1))
        # the first call of a new session: config load, key open (sealed), parse
        t=$(psql_su -At -c "SELECT extract(epoch FROM clock_timestamp()) * 1000" \
            -c "SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('bench-k$run-first', 'bench')" \
            -c "SELECT extract(epoch FROM clock_timestamp()) * 1000" | awk 'NR == 1 { a = $1 } NR == 3 { printf "%d", ($1 - a) * 1000 }')
        FIRST[$m]=$((FIRST[$m] + t))
        out=$(psql_su -v batch=false -v conc=1 -v n="$N" -v warm="$WARM" \
            -v prefix="bench-k$run" -f "$BENCH/session.sql")
        IFS='|' read -r n stopped wall cpu _ <<<"$out"
        [ "$n" = "$stopped" ] || { echo "round $r $m: $stopped of $n stopped" >&2; exit 1; }
        CALLS[$m]=$((CALLS[$m] + n))
        WALL[$m]=$((WALL[$m] + $(awk -v w="$wall" 'BEGIN { printf "%d", w * 1000000 }')))
        CPU[$m]=$((CPU[$m] + cpu))
    done
done

TICK_US=$((1000000 / $(getconf CLK_TCK)))
printf '\n%-22s %7s %10s %12s %14s %16s\n' "keys stored" calls "calls/s" "wall us/call" "CPU us/call" "first call us"
for m in plain sealed; do
    awk -v m="$m" -v n="${CALLS[$m]}" -v w="${WALL[$m]}" -v c="${CPU[$m]}" -v tick="$TICK_US" \
        -v f="${FIRST[$m]}" -v r="$ROUNDS" 'BEGIN {
        printf "%-22s %7d %10.1f %12.1f %14.1f %16.0f\n", m, n, n / (w / 1e6), w / n, c * tick / n, f / r
    }'
done
echo "(each round measured in a new session after $WARM warm-up calls; first call: a new session's first stop, averaged over $ROUNDS rounds)"
