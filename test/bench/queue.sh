#!/usr/bin/env bash
# test/bench/queue.sh: the background worker draining a backlog, beside the
# batch function, and beside a slow merchant.
#
# Starts a private cluster with the library preloaded and the simulator
# (test/lib.sh), the simulator on a CPU of its own (WeChat Pay does not
# share the database's machine), and prints, in one run:
#   1. the commit-to-finished time of single requests on the idle worker;
#   2. a backlog of N stop requests queued in one committed statement: the
#      drain rate and the queue worker's private memory (RssAnon from /proc)
#      every N/10 finished requests, and whether the simulator stopped
#      every plan exactly once;
#   3. the queue's drain rate beside wxpay_stop_sign_plans at the same
#      concurrency (wxpay.worker_concurrency = wxpay.batch_concurrency), at
#      0 ms and at WX_QUEUE_LATENCY_MS added simulator latency, in paired
#      rounds, with the CPU time per request of the sender and of the
#      simulator, and the median ratio (target: queue >= 0.9x batch);
#   3b. two busy databases (half the requests queued in each at once, one
#      worker each) beside one database (the same two sessions queueing
#      into it), at 0 ms and at
#      WX_QUEUE_LATENCY_MS, in paired rounds, with the simulator's CPU use
#      (target: the median total at least that of one);
#   4. a fast merchant's commit-to-finished p50/p99 for a paced stream of
#      requests, alone and beside a slow merchant (a second simulator whose
#      answers come only after wxpay.request_timeout, holding a backlog),
#      and the ratio of the two p99 (target: within 2x).
# Not a test: it prints figures and never fails on them; rates depend on
# the machine and its load.
#
#   bash test/bench/queue.sh            # a few minutes
#   bash test/bench/queue.sh --smoke    # tiny sizes: checks that it works
# Environment: WX_QUEUE_N (backlog, default 10000), WX_QUEUE_CONCURRENCY
# (both concurrencies, default 8), WX_QUEUE_RATE (wxpay.rate_limit, default
# 0 = none), WX_QUEUE_NB (requests per queue/batch comparison, default
# 2000), WX_QUEUE_LATENCY_MS (20), WX_QUEUE_STREAM (fast requests in the
# stream, 300), WX_QUEUE_STREAM_MS (pause between their commits, 20),
# WX_QUEUE_SLOW (the slow merchant's backlog, 4 x concurrency),
# WX_QUEUE_TIMEOUT_MS (wxpay.request_timeout, 2000), WX_QUEUE_ROUNDS (paired
# rounds of sections 3 and 3b, 5), WX_QUEUE_PIN (1: the simulator on a CPU of
# its own, PostgreSQL on the others; 0: all share every CPU); WX_KEEP=1 as
# for run.sh.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
WX_PRIVATE_PG=1

SMOKE=
[ "${1:-}" = --smoke ] && SMOKE=1
CONC=${WX_QUEUE_CONCURRENCY:-8}
N=${WX_QUEUE_N:-$([ -n "$SMOKE" ] && echo 200 || echo 10000)}
NB=${WX_QUEUE_NB:-$([ -n "$SMOKE" ] && echo 100 || echo 2000)}
LAT=${WX_QUEUE_LATENCY_MS:-20}
STREAM=${WX_QUEUE_STREAM:-$([ -n "$SMOKE" ] && echo 20 || echo 300)}
STREAM_MS=${WX_QUEUE_STREAM_MS:-20}
SLOW=${WX_QUEUE_SLOW:-$((4 * CONC))}
TIMEOUT_MS=${WX_QUEUE_TIMEOUT_MS:-2000}
ROUNDS=${WX_QUEUE_ROUNDS:-$([ -n "$SMOKE" ] && echo 1 || echo 5)}
STEP=$(( N < 100000 ? (N + 9) / 10 : 10000 ))
WX_PG_CONF="shared_preload_libraries = 'wxpay_signplan'
wxpay.worker_concurrency = $CONC
wxpay.request_timeout = '${TIMEOUT_MS}ms'
wxpay.rate_limit = ${WX_QUEUE_RATE:-0}"
wx_prepare >&2

calc() { awk "BEGIN { print $1 }"; }
psql_db() { local db=$1; shift; wx_as_pg psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" "$@"; }
psql_su() { psql_db postgres "$@"; }
sim_settings() { curl -sf -X POST -H 'Content-Type: application/json' -d "$2" "$1/settings" >/dev/null; }

wx_setup_config
# WeChat Pay answers from machines of its own: the simulator gets the last
# CPU to itself and PostgreSQL (the worker, the batch's backend and every
# other process of the cluster, and those the postmaster starts later) the
# others.  Sharing every CPU, the simulator, which needs most of a core at
# 0 ms, competed with the workers for it: with two databases' workers 12 %
# of the 2-core machine stood idle (perf), 5 % with one.  (PostgreSQL on
# every CPU at a lower priority instead, taking what the simulator leaves,
# measured no better.)
NCPU=$(nproc)
PIN=${WX_QUEUE_PIN:-1}
if [ "$PIN" = 1 ] && [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    SIM_CPUS=$((NCPU - 1)) PG_CPUS=$([ "$NCPU" = 2 ] && echo 0 || echo "0-$((NCPU - 2))")
    pm=$(head -n 1 "$PGDATA/postmaster.pid")
    for p in "$pm" $(pgrep -P "$pm"); do taskset -a -p -c "$PG_CPUS" "$p" >/dev/null; done
    taskset -a -p -c "$SIM_CPUS" "$WX_SIM_PID" >/dev/null
    echo "CPUs: the simulator on $SIM_CPUS, PostgreSQL on $PG_CPUS (WX_QUEUE_PIN=0: all share all $NCPU)"
else
    PIN=0
    echo "CPUs: the simulator and PostgreSQL share all $NCPU"
fi

worker_pid() {
    psql_su -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'"
}
rss_anon() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
# wait until every request whose plan starts with $1 (in database $2,
# default postgres) is finished, with as little CPU as possible taken from
# the worker and the simulator while the queue is measured: one session
# waits for the newest of them (wxpay_wait_stop_request, woken by the
# worker's commits), which the worker claims last, then counts the
# unfinished ones and waits for each of those in turn, if any.  (Polling
# with a new psql every 50 ms cost the 2-core machine about a tenth of a
# core; waiting for each request in turn, from the first, about 0.15 ms of
# CPU per request, 5% of all the CPU a request costs at 0 ms.)
wait_drained() {
    local left
    left=$(psql_db "${2:-postgres}" \
        -c "SELECT (wxpay_wait_stop_request(max(id), '10min')).state FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$1%'" \
        -c "SELECT count(*) FROM wxpay_stop_request q, LATERAL wxpay_wait_stop_request(q.id, '10min') r WHERE q.merchant_sign_plan_no LIKE '$1%' AND q.state NOT IN ('succeeded', 'failed') AND r.state NOT IN ('succeeded', 'failed')" | tail -n 1)
    [ "$left" = 0 ] || { echo "requests $1* still unfinished after 10 minutes: $left" >&2; exit 1; }
}

# warm up: the worker, its config cache and connections
psql_su -c "SELECT wxpay_stop_sign_plan_async('bq-warm-' || i, 'r') FROM generate_series(1, 200) i" >/dev/null
wait_drained bq-warm-
pid=$(worker_pid)

# ---- 1. commit-to-finished time of single requests on the idle worker
lat=$(psql_su -f - <<'SQL'
CREATE TEMP TABLE lat (ms float8);
DO $$
BEGIN
    FOR i IN 1..30 LOOP
        PERFORM wxpay_stop_sign_plan_async('bq-lat-' || i, 'r');
        COMMIT;
        INSERT INTO lat
        SELECT extract(epoch FROM r.finished_at - r.created_at) * 1000
        FROM wxpay_stop_request q,
             LATERAL wxpay_wait_stop_request(q.id, '30s') r
        WHERE q.merchant_sign_plan_no = 'bq-lat-' || i;
        COMMIT;
    END LOOP;
END $$;
SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' ms median, '
    || round(max(ms)::numeric, 1) || ' ms max' FROM lat;
SQL
)
echo "idle worker, commit to finished (one request, sent and answered): $lat"
rss0=$(rss_anon "$pid")

# ---- 2. a backlog
t0=$(date +%s.%N)
psql_su -c "SELECT count(wxpay_stop_sign_plan_async('bq-n-' || i, 'r')) FROM generate_series(1, $N) i" >/dev/null
t1=$(date +%s.%N)
printf 'queued %d requests in %.1f s\n' "$N" "$(calc "$t1 - $t0")"
printf '%10s %10s %10s %14s\n' finished 'req/s' 'RssAnon kB' 'worker pid'
next=$STEP
last_t=$t1 last_n=0
while :; do
    done_n=$(psql_su -c "SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'bq-n-%' AND state IN ('succeeded', 'failed')")
    if [ "$done_n" -ge "$next" ] || [ "$done_n" -ge "$N" ]; then
        now=$(date +%s.%N)
        printf '%10d %10.0f %10d %14s\n' "$done_n" \
            "$(calc "($done_n - $last_n) / ($now - $last_t)")" "$(rss_anon "$pid")" "$pid"
        last_t=$now last_n=$done_n
        next=$((done_n + STEP))
    fi
    [ "$done_n" -ge "$N" ] && break
    [ "$(worker_pid)" = "$pid" ] || { echo "the worker restarted"; exit 1; }
    sleep 0.2
done
t2=$(date +%s.%N)
rss1=$(rss_anon "$pid")
ok=$(psql_su -c "SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'bq-n-%' AND state = 'succeeded'")
once=$(curl -sf "$WXPAY_SIM_CONTROL/stats" | node -e '
let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
  const st = JSON.parse(s); let once = 0, blind = 0;
  for (const [p, n] of Object.entries(st.stops)) if (p.startsWith("bq-n-") && n === 1) once++;
  for (const [p, n] of Object.entries(st.already_stopped || {})) if (p.startsWith("bq-n-")) blind += n;
  console.log(once + " " + blind); });')
printf '\ndrained %d requests in %.1f s (%.0f/s); %d succeeded\n' "$N" \
    "$(calc "$t2 - $t1")" "$(calc "$N / ($t2 - $t1)")" "$ok"
printf 'worker RssAnon %d kB -> %d kB (%+d kB)\n' "$rss0" "$rss1" "$((rss1 - rss0))"
printf 'simulator: %s plans stopped exactly once, %s stops for already stopped plans\n' ${once}

# ---- 3. the queue beside wxpay_stop_sign_plans at the same concurrency

# CPU time of process $1 so far, in clock ticks (utime + stime)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_MS=$(calc "1000 / $(getconf CLK_TCK)")

# "rate ticks": requests per second of one wxpay_stop_sign_plans call of $2
# plans (prefix $1), after a warm-up batch in the same session, and the CPU
# ticks its backend spent on it
batch_rate() {
    psql_su -f - <<SQL
SET wxpay.batch_concurrency = $CONC;
SELECT count(*) FROM wxpay_stop_sign_plans(
    ARRAY(SELECT '$1-w' || i FROM generate_series(1, $((2 * CONC))) i), 'r') \\gset
SELECT clock_timestamp() AS t0,
       (SELECT split_part(s, ' ', 14)::int + split_part(s, ' ', 15)::int
          FROM pg_read_file('/proc/' || pg_backend_pid() || '/stat') s) AS c0 \\gset
SELECT count(*) FILTER (WHERE ok) AS ok FROM wxpay_stop_sign_plans(
    ARRAY(SELECT '$1-' || i FROM generate_series(1, $2) i), 'r') \\gset
SELECT round(($2 / extract(epoch FROM clock_timestamp() - :'t0'))::numeric, 1) || ' '
    || (SELECT split_part(s, ' ', 14)::int + split_part(s, ' ', 15)::int - :c0
          FROM pg_read_file('/proc/' || pg_backend_pid() || '/stat') s);
SQL
}

# requests per second from the commit of $2 queued requests (prefix $1) to
# the last one finished
queue_rate() {
    local tc tf
    tc=$(psql_su -c "SELECT count(wxpay_stop_sign_plan_async('$1-' || i, 'r')) FROM generate_series(1, $2) i" \
        -c "SELECT extract(epoch FROM clock_timestamp())" | tail -n 1)
    wait_drained "$1-"
    tf=$(psql_su -c "SELECT extract(epoch FROM max(finished_at)) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$1-%'")
    calc "$2 / ($tf - $tc)"
}

# median of the numbers given
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Each latency is measured in ROUNDS paired rounds, the batch and the queue
# one after the other (their order alternating, so that a drift of the
# machine's speed favours neither), and judged by the median ratio: one
# round's ratio swings by several percent with the shared machine.
printf '\nthe queue beside wxpay_stop_sign_plans, %d requests each, concurrency %d (worker = batch),\n' "$NB" "$CONC"
printf 'paired rounds: %d; CPU time per request of the sending process (the batch'"'"'s backend, the\n' "$ROUNDS"
printf 'worker) and of the simulator, in ms\n'
printf '%10s %6s %12s %12s %12s %9s %9s %9s %9s\n' latency round 'batch req/s' 'queue req/s' 'queue/batch' \
    backend 'sim(b)' worker 'sim(q)'
for l in 0 "$LAT"; do
    sim_settings "$WXPAY_SIM_CONTROL" "{\"latency_ms\":$l}"
    ratios=()
    for r in $(seq 1 "$ROUNDS"); do
        for what in $( ((r % 2)) && echo batch queue || echo queue batch); do
            if [ "$what" = batch ]; then
                s0=$(cpu_ticks "$WX_SIM_PID")
                read -r b bt < <(batch_rate "bq-b$l-$r" "$NB")
                sb=$(( $(cpu_ticks "$WX_SIM_PID") - s0 ))
            else
                wpid=$(worker_pid)
                w0=$(cpu_ticks "$wpid")
                s0=$(cpu_ticks "$WX_SIM_PID")
                q=$(queue_rate "bq-q$l-$r" "$NB")
                wt=$(( $(cpu_ticks "$wpid") - w0 ))
                sq=$(( $(cpu_ticks "$WX_SIM_PID") - s0 ))
            fi
        done
        ratios+=("$(calc "$q / $b")")
        printf '%7d ms %6d %12.1f %12.1f %11.2fx %9.2f %9.2f %9.2f %9.2f\n' "$l" "$r" "$b" "$q" "$(calc "$q / $b")" \
            "$(calc "$bt * $TICK_MS / $NB")" "$(calc "$sb * $TICK_MS / ($NB + 2 * $CONC)")" \
            "$(calc "$wt * $TICK_MS / $NB")" "$(calc "$sq * $TICK_MS / $NB")"
    done
    printf '%7d ms median queue/batch %.2fx (rounds %s)\n' "$l" "$(median "${ratios[@]}")" "$(printf '%.2f ' "${ratios[@]}")"
done
echo '(target: the median queue >= 0.9x batch)'
sim_settings "$WXPAY_SIM_CONTROL" '{"latency_ms":0}'

# ---- 3b. two busy databases beside one: the same requests, queued by two
# sessions at once, into one database or half into each of two (one worker
# each, the same merchant and its one rate budget), drained from the first
# commit to the last finish
wx_as_pg psql -X -q -d postgres -c "CREATE DATABASE bq_two" >/dev/null
wx_setup_config bq_two >/dev/null
psql_db bq_two -c "SELECT count(wxpay_stop_sign_plan_async('bq-two-warm-' || i, 'r')) FROM generate_series(1, 50) i" >/dev/null
wait_drained bq-two-warm- bq_two
half=$((NB / 2))
# the rate of $NB requests, queued half by each of two sessions at once
# (prefix $1), the second session's in database $2 (postgres: both in one
# database), from the first of the two commits to the last finish.  One
# database and two are measured alike: in both, the later session's
# enqueueing overlaps the start of the drain.
split_rate() {
    local tca tcb qa tfa tfb
    psql_su -c "SELECT count(wxpay_stop_sign_plan_async('$1-a-' || i, 'r')) FROM generate_series(1, $half) i" \
        -c "SELECT extract(epoch FROM clock_timestamp())" | tail -n 1 >"$WX_WORK/split-commit-a" &
    qa=$!
    tcb=$(psql_db "$2" -c "SELECT count(wxpay_stop_sign_plan_async('$1-b-' || i, 'r')) FROM generate_series(1, $half) i" \
        -c "SELECT extract(epoch FROM clock_timestamp())" | tail -n 1)
    wait "$qa"
    tca=$(cat "$WX_WORK/split-commit-a")
    wait_drained "$1-a-"
    wait_drained "$1-b-" "$2"
    tfa=$(psql_su -c "SELECT extract(epoch FROM max(finished_at)) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$1-a-%'")
    tfb=$(psql_db "$2" -c "SELECT extract(epoch FROM max(finished_at)) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$1-b-%'")
    calc "2 * $half / (($tfa > $tfb ? $tfa : $tfb) - ($tca < $tcb ? $tca : $tcb))"
}
# Also the simulator's CPU use, in cores, while each drained: on a 2-core
# machine the simulator (one thread) needs a whole core at 0 ms, and a
# second busy worker competes with it for the CPU.
printf '\ntwo busy databases, %d requests in all (%d each), beside one, paired rounds per latency: %d,\n' \
    $((2 * half)) "$half" "$ROUNDS"
printf 'with the simulator'"'"'s CPU use (cores) during each\n'
printf '%10s %6s %12s %12s %9s %9s %9s\n' latency round 'one req/s' 'two req/s' 'two/one' 'sim(1)' 'sim(2)'
for l in 0 "$LAT"; do
    sim_settings "$WXPAY_SIM_CONTROL" "{\"latency_ms\":$l}"
    ratios=()
    for r in $(seq 1 "$ROUNDS"); do
        for what in $( ((r % 2)) && echo one two || echo two one); do
            s0=$(cpu_ticks "$WX_SIM_PID")
            t0=$(date +%s.%N)
            if [ "$what" = one ]; then one=$(split_rate "bq-one$l-$r" postgres)
            else two=$(split_rate "bq-two$l-$r" bq_two); fi
            busy=$(calc "($(cpu_ticks "$WX_SIM_PID") - $s0) * $TICK_MS / 1000 / ($(date +%s.%N) - $t0)")
            if [ "$what" = one ]; then sim1=$busy; else sim2=$busy; fi
        done
        ratios+=("$(calc "$two / $one")")
        printf '%7d ms %6d %12.1f %12.1f %8.2fx %9.2f %9.2f\n' "$l" "$r" "$one" "$two" "$(calc "$two / $one")" "$sim1" "$sim2"
    done
    printf '%7d ms median two/one %.2fx (rounds %s)\n' "$l" "$(median "${ratios[@]}")" "$(printf '%.2f ' "${ratios[@]}")"
done
echo '(target: the median two/one at least 1x)'
sim_settings "$WXPAY_SIM_CONTROL" '{"latency_ms":0}'

# ---- 4. a fast merchant beside a slow one

# a stream of single-request transactions for the fast merchant, one every
# STREAM_MS; prints p50 and p99 of commit to finished, in ms
fast_stream() {
    psql_su -f - <<SQL
DO \$\$
BEGIN
    FOR i IN 1..$STREAM LOOP
        PERFORM wxpay_stop_sign_plan_async('$1-' || i, 'r');
        COMMIT;
        PERFORM pg_sleep($STREAM_MS / 1000.0);
    END LOOP;
END \$\$;
SQL
    wait_drained "$1-"
    psql_su -c "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) || ' ' || round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM (SELECT extract(epoch FROM finished_at - created_at) * 1000 AS ms FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$1-%') s"
}

printf '\na fast merchant, %d requests committed one every %d ms: commit to finished\n' "$STREAM" "$STREAM_MS"
read -r a50 a99 < <(fast_stream bq-alone)
printf '%-44s p50 %8.1f ms   p99 %8.1f ms\n' 'alone' "$a50" "$a99"

# the slow merchant: certificate mode (its own mchid) on a second simulator
slow_out="$WX_WORK/slow-sim.out"
node "$WX_ROOT/test/sim/simulator.js" --pki "$WXPAY_PKI" >"$slow_out" 2>&1 &
SLOW_PID=$!
[ "$PIN" = 1 ] && taskset -a -p -c "$SIM_CPUS" "$SLOW_PID" >/dev/null
trap 'kill "$SLOW_PID" 2>/dev/null || true; wx_cleanup' EXIT
until grep -q '^READY ' "$slow_out"; do
    kill -0 "$SLOW_PID" 2>/dev/null || { cat "$slow_out"; exit 1; }
    sleep 0.05
done
slow_url="https://127.0.0.1:$(sed -n 's/^READY port=\([0-9]*\) .*/\1/p' "$slow_out")"
slow_ctl="http://127.0.0.1:$(sed -n 's/.* control=\([0-9]*\)$/\1/p' "$slow_out")"
SLOW_URL=$slow_url psql_su -f - <<'SQL'
\set key `cat "$WXPAY_PKI/merchant.key"`
\set serial `cat "$WXPAY_PKI/merchant_serial.txt"`
\set apiv3 `cat "$WXPAY_PKI/apiv3_key.txt"`
\set ca `cat "$WXPAY_PKI/ca.crt"`
\getenv url SLOW_URL
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, apiv3_key, base_url, backup_base_url, ca_cert)
VALUES ('slow', '1900000002', :'serial', :'key', :'apiv3', :'url', NULL, :'ca');
SELECT count(*) FROM wxpay_refresh_platform_certificates('slow') \gset
SQL
# from now on every answer of the slow merchant comes after the timeout
sim_settings "$slow_ctl" "{\"latency_ms\":$((TIMEOUT_MS + 1000))}"

psql_su -c "SELECT count(wxpay_stop_sign_plan_async('bq-slow-' || i, 'r', 'slow')) FROM generate_series(1, $SLOW) i" >/dev/null
read -r s50 s99 < <(fast_stream bq-beside)
printf '%-44s p50 %8.1f ms   p99 %8.1f ms\n' \
    "beside a slow merchant ($SLOW queued, answers > ${TIMEOUT_MS} ms)" "$s50" "$s99"
printf 'p99 beside / alone: %.2fx (target: within 2x)\n' "$(calc "$s99 / $a99")"
slow_sent=$(curl -sf "$slow_ctl/stats" | node -e '
let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
  const st = JSON.parse(s); let n = 0;
  for (const [p, k] of Object.entries(st.stop_attempts)) if (p.startsWith("bq-slow-")) n += k;
  for (const [p, k] of Object.entries(st.queries)) if (p.startsWith("bq-slow-")) n += k;
  console.log(n); });')
echo "(the slow merchant received $slow_sent requests meanwhile)"
