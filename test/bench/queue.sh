#!/usr/bin/env bash
# test/bench/queue.sh: the background worker draining a backlog.
#
# Starts a private cluster with the library preloaded and the simulator
# (test/lib.sh), queues N stop requests (default 100,000) in one committed
# statement, and prints, every 10,000 finished requests, the drain rate and
# the queue worker's private memory (RssAnon from /proc) and memory
# contexts, then the totals and whether the simulator stopped every plan
# exactly once.  Not a test: rates depend on the machine and its load.
#
#   bash test/bench/queue.sh                # 100,000 requests
#   WX_QUEUE_N=20000 bash test/bench/queue.sh
# Environment: WX_QUEUE_N, WX_QUEUE_CONCURRENCY (wxpay.worker_concurrency,
# default 8), WX_QUEUE_RATE (wxpay.rate_limit, default 0 = none).
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
WX_PRIVATE_PG=1

N=${WX_QUEUE_N:-100000}
STEP=$(( N < 100000 ? (N + 9) / 10 : 10000 ))
WX_PG_CONF="shared_preload_libraries = 'wxpay_signplan'
wxpay.database_name = 'postgres'
wxpay.worker_concurrency = ${WX_QUEUE_CONCURRENCY:-8}
wxpay.rate_limit = ${WX_QUEUE_RATE:-0}"
wx_prepare >&2

calc() { awk "BEGIN { print $1 }"; }
psql_su() { wx_as_pg psql -X -q -At -v ON_ERROR_STOP=1 -d postgres "$@"; }

wx_setup_config

worker_pid() {
    psql_su -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'"
}
rss_anon() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }

# warm up: the worker, its config cache and connections
psql_su -c "SELECT wxpay_stop_sign_plan_async('bq-warm-' || i, 'r') FROM generate_series(1, 200) i" >/dev/null
until [ "$(psql_su -c "SELECT count(*) FROM wxpay_stop_request WHERE state IN ('queued', 'sending')")" = 0 ]; do
    sleep 0.2
done
pid=$(worker_pid)

# commit-to-finished time of single requests on the idle worker
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
    sleep 1
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
