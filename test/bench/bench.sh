#!/usr/bin/env bash
# test/bench/bench.sh: how fast wxpay_signplan is, against the floor.
#
# Builds and installs the extension into a private server copy, starts a
# cluster and the simulator (test/lib.sh), compiles test/bench/floor.c (a
# minimal C client: OpenSSL signing, one kept-alive libcurl handle, answer
# verification, no database) and prints, side by side:
#   - the floor, wxpay_stop_sign_plan called sequentially in one statement,
#     and wxpay_stop_sign_plans at concurrency 1, 4, 8, 16: calls/s, ratio
#     to the floor, CPU per call (the backend's, or the floor process's,
#     utime + stime from /proc) and its ratio, and the TLS connections the
#     simulator saw for that session (warm-up included);
#   - all of it again with a fixed latency added by the simulator to every
#     answer (like a real network path);
#   - the backend's RSS before and after 10,000 sequential calls, and before
#     and after a first and a second 10,000-element batch;
#   - the targets, each PASS or MISS.
# Every measured session warms up first (config cache, TLS handshakes).
# Not a test: figures depend on the machine and its load.  CPU time is the
# steadier figure on a shared machine.
#
#   bash test/bench/bench.sh            # the full run (a few minutes)
#   bash test/bench/bench.sh --smoke    # tiny N, checks that it still works
# Environment: WX_BENCH_N (calls per row at 0 ms, default 1000),
# WX_BENCH_NLAT (with latency, 200), WX_BENCH_NMEM (memory run, 10000),
# WX_BENCH_LATENCY_MS (20), WX_BENCH_WARM (20); WX_KEEP=1 as for run.sh.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
WX_PRIVATE_PG=1

N=${WX_BENCH_N:-1000}
NLAT=${WX_BENCH_NLAT:-200}
NMEM=${WX_BENCH_NMEM:-10000}
LAT=${WX_BENCH_LATENCY_MS:-20}
WARM=${WX_BENCH_WARM:-20}
if [ "${1:-}" = --smoke ]; then N=12; NLAT=16; NMEM=40; WARM=2; fi

wx_prepare >&2
BENCH="$WX_ROOT/test/bench"
gcc -O2 -Wall -o "$WX_WORK/floor" "$BENCH/floor.c" $(pkg-config --cflags --libs libcurl openssl)

psql_su() { wx_as_pg psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }

wx_setup_config

sim_tls() { node "$WX_ROOT/test/sim/ctl.js" tls; }
sim_latency() {
    curl -sf -X POST -H 'Content-Type: application/json' \
        -d "{\"latency_ms\":$1}" "$WXPAY_SIM_CONTROL/settings" >/dev/null
}

# Result rows: label|latency|calls|stopped|wall|cpu ticks|tls
ROWS=()
run=0

floor() {   # latency n
    local t0 t1 out
    run=$((run + 1))
    t0=$(sim_tls)
    out=$("$WX_WORK/floor" "$WXPAY_SIM_URL" "$WXPAY_PKI/ca.crt" "$WXPAY_PKI/merchant.key" \
        1900000001 "$(cat "$WXPAY_PKI/merchant_serial.txt")" "$WXPAY_PKI/platform_pub.pem" \
        "$(cat "$WXPAY_PKI/pub_key_id.txt")" "bench-f$run" "$WARM" "$2")
    t1=$(sim_tls)
    ROWS+=("floor (C: OpenSSL + libcurl)|$1|$(echo "$out" | cut -d'|' -f2-5)|$((t1 - t0))")
}

session() {   # label latency batch conc n [warm] -> also sets LAST (the raw line)
    local t0 t1 warm=${6:-$WARM}
    run=$((run + 1))
    [ "$3" = true ] && [ "$warm" -lt $((2 * $4)) ] && warm=$((2 * $4))
    t0=$(sim_tls)
    LAST=$(psql_su -v batch="$3" -v conc="$4" -v n="$5" -v warm="$warm" \
        -v prefix="bench-s$run" -f "$BENCH/session.sql")
    t1=$(sim_tls)
    ROWS+=("$1|$2|$(echo "$LAST" | cut -d'|' -f1-4)|$((t1 - t0))")
}

measure() {   # latency n
    sim_latency "$1"
    floor "$1" "$2"
    session "wxpay_stop_sign_plan, sequential" "$1" false 1 "$2"
    for c in 1 4 8 16; do
        session "wxpay_stop_sign_plans, c=$c" "$1" true "$c" "$2"
    done
}

wx_log "measuring at 0 ms added latency, $N calls per row"
measure 0 "$N"
wx_log "measuring at $LAT ms added latency, $NLAT calls per row"
measure "$LAT" "$NLAT"
sim_latency 0
wx_log "memory: $NMEM sequential calls, then two batches of $NMEM"
session "memory, sequential" 0 false 1 "$NMEM"
MEM_SEQ=$LAST
session "memory, batch c=8 (2nd batch)" 0 true 8 "$NMEM" "$NMEM"
MEM_BATCH=$LAST

# ---- the report ----
TICK_US=$((1000000 / $(getconf CLK_TCK)))
printf '%s\n' "${ROWS[@]}" | awk -F'|' -v tick="$TICK_US" -v lat="$LAT" \
    -v memseq="$MEM_SEQ" -v membatch="$MEM_BATCH" -v cores="$(nproc)" '
function ratio(a, b) { return b > 0 ? sprintf("%7.2fx", a / b) : "      -" }
function row(i,   cps, cpu) {
    cps = lab_wall[i] > 0 ? lab_n[i] / lab_wall[i] : 0
    cpu = lab_cpu[i] * tick / lab_n[i]
    printf "%-36s %5s %6d %7d %8.2f %9.1f %s %9.0f %s %5d\n", lab[i], lab_lat[i] " ms",
        lab_n[i], lab_ok[i], lab_wall[i], cps, ratio(cps, floor_cps[lab_lat[i]]),
        cpu, ratio(cpu, floor_cpu[lab_lat[i]]), lab_tls[i]
}
{
    lab[NR] = $1; lab_lat[NR] = $2; lab_n[NR] = $3; lab_ok[NR] = $4
    lab_wall[NR] = $5; lab_cpu[NR] = $6; lab_tls[NR] = $7
    if ($1 ~ /^floor/) {
        floor_cps[$2] = $5 > 0 ? $3 / $5 : 0; floor_cpu[$2] = $6 * tick / $3
    }
    if ($1 ~ /^wxpay_stop_sign_plan, sequential/) { seq_cps[$2] = $5 > 0 ? $3 / $5 : 0; seq_cpu[$2] = $6 * tick / $3; seq_tls[$2] = $7 }
    if ($1 ~ /^wxpay_stop_sign_plans, c=8$/) c8_cps[$2] = $5 > 0 ? $3 / $5 : 0
}
END {
    printf "wxpay_signplan benchmark (%d cores, shared: wall-clock figures are noisy; CPU is from /proc, %d us ticks)\n\n", cores, tick
    printf "%-36s %5s %6s %7s %8s %9s %8s %9s %8s %5s\n", "", "added", "calls", "stopped", "wall s",
        "calls/s", "x floor", "CPU us/c", "x floor", "TLS"
    for (i = 1; i <= NR; i++) row(i)
    split(memseq, ms, "|"); split(membatch, mb, "|")
    printf "\nbackend RSS (kB), each session after its warm-up:\n"
    printf "  sequential: %d before %d calls, %d after (%+d); memory contexts %d -> %d bytes\n",
        ms[5], ms[1], ms[6], ms[6] - ms[5], ms[8], ms[9]
    printf "  batch c=8:  %d at start, %d after a first %d-element batch, %d after a second (%+d);\n",
        mb[7], mb[5], mb[1], mb[6], mb[6] - mb[5]
    printf "              memory contexts %d -> %d bytes (RSS moves by a few MB from batch to batch:\n", mb[8], mb[9]
    printf "              freed heap that malloc keeps; the contexts are the leak check)\n"
    printf "\ntargets:\n"
    t(seq_cps[0] >= 0.9 * floor_cps[0], "sequential throughput >= 0.9x floor:" ratio(seq_cps[0], floor_cps[0]))
    t(seq_cpu[0] <= 1.25 * floor_cpu[0], "backend CPU per call <= 1.25x floor:" ratio(seq_cpu[0], floor_cpu[0]))
    t(c8_cps[lat] >= 5 * seq_cps[lat], sprintf("at %d ms, batch c=8 >= 5x sequential:", lat) ratio(c8_cps[lat], seq_cps[lat]))
    t(seq_tls[0] == 1 && seq_tls[lat] == 1, sprintf("one TLS connection per sequential session: %d and %d", seq_tls[0], seq_tls[lat]))
    growth = (ms[6] - ms[5]) * 10000 / ms[1]
    t(growth < 1024, sprintf("RSS growth < 1 MB per 10,000 calls: %+d kB per 10,000", growth))
}
function t(ok, what) { printf "  %-4s %s\n", ok ? "PASS" : "MISS", what }'
