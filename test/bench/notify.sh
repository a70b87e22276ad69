#!/usr/bin/env bash
# test/bench/notify.sh: notifications verified per second, beside the floor.
#
# Builds and installs the extension into a private server copy, starts a
# cluster and the simulator (test/lib.sh), has the simulator make N
# notifications (signed and encrypted as WeChat Pay does: POST
# /notification), loads them into a temporary table and prints:
#   - wxpay_verify_notification over the N notifications in one statement:
#     notifications/s and the backend's CPU per notification (utime + stime
#     from /proc/self/stat, read by the backend itself);
#   - wxpay_accept_notification over the same N (verify, insert, NOTIFY);
#   - the floor: RSA-2048 signature verifications per second on this machine
#     on one core (openssl speed), the one step no verifier can skip, and the
#     ratio of each row to it.
# Not a test: figures depend on the machine and its load.
#
#   bash test/bench/notify.sh             # N = 2000 (under a minute)
#   bash test/bench/notify.sh --smoke     # N = 20
# Environment: WX_BENCH_NOTIFY_N (2000); WX_KEEP=1 as for run.sh.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
WX_PRIVATE_PG=1

N=${WX_BENCH_NOTIFY_N:-2000}
if [ "${1:-}" = --smoke ]; then N=20; fi

wx_prepare >&2
wx_setup_config >&2
psql_su() { wx_as_pg psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql_su -c "UPDATE wxpay_config SET apiv3_key = pg_catalog.btrim(pg_catalog.pg_read_file('$WXPAY_PKI/apiv3_key.txt'), E'\\n')"

# N notifications as COPY text lines: headers (jsonb) TAB body.  Neither
# holds a tab, a newline or a backslash (Base64, ASCII JSON, UTF-8 text).
wx_log "making $N notifications on the simulator"
node - "$WXPAY_SIM_CONTROL" "$N" >"$WX_WORK/notifications.tsv" <<'JS'
const http = require('http');
const [ctl, n] = [process.argv[2], +process.argv[3]];
function one(i) {
    return new Promise((resolve, reject) => {
        const req = http.request(`${ctl}/notification`, { method: 'POST', headers: { 'Content-Type': 'application/json' } }, (res) => {
            let b = '';
            res.setEncoding('utf8');
            res.on('data', (c) => { b += c; });
            res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(b)) : reject(new Error(b))));
        });
        req.on('error', reject);
        req.end(JSON.stringify({ plan: `bench-n${i}`, id: `bench-notify-${i}` }));
    });
}
(async () => {
    for (let i = 1; i <= n; i++) {
        const r = await one(i);
        process.stdout.write(`${JSON.stringify(r.headers)}\t${r.body}\n`);
    }
})().catch((e) => { console.error(e.message); process.exit(1); });
JS
chmod 644 "$WX_WORK/notifications.tsv"

wx_log "measuring"
OUT=$(psql_su -v file="$WX_WORK/notifications.tsv" -f - <<'SQL'
\set QUIET on
\pset tuples_only on
\pset format unaligned
CREATE TEMP TABLE n (h jsonb, b text);
COPY n FROM :'file';
-- warm-up: config and key cache
SELECT count(*) FROM (SELECT * FROM n LIMIT 5) x, LATERAL wxpay_verify_notification(x.h, x.b) v \g /dev/null
SELECT (SELECT sum(split_part(substr(s, strpos(s, ') ') + 2), ' ', f)::bigint)
        FROM pg_read_file('/proc/self/stat') AS s, unnest(ARRAY[12, 13]) AS f) AS cpu0,
       clock_timestamp() AS t0 \gset
SELECT count(*) AS verified FROM n, LATERAL wxpay_verify_notification(n.h, n.b) v
 WHERE v.resource ? 'merchant_sign_plan_no' \gset
SELECT (SELECT sum(split_part(substr(s, strpos(s, ') ') + 2), ' ', f)::bigint)
        FROM pg_read_file('/proc/self/stat') AS s, unnest(ARRAY[12, 13]) AS f) AS cpu1,
       clock_timestamp() AS t1 \gset
SELECT count(*) AS accepted FROM n, LATERAL wxpay_accept_notification(n.h, n.b) a \gset
SELECT (SELECT sum(split_part(substr(s, strpos(s, ') ') + 2), ' ', f)::bigint)
        FROM pg_read_file('/proc/self/stat') AS s, unnest(ARRAY[12, 13]) AS f) AS cpu2,
       clock_timestamp() AS t2 \gset
SELECT :verified || '|' || round(extract(epoch FROM :'t1'::timestamptz - :'t0'::timestamptz), 3)
       || '|' || (:cpu1 - :cpu0) || '|' || :accepted || '|'
       || round(extract(epoch FROM :'t2'::timestamptz - :'t1'::timestamptz), 3) || '|' || (:cpu2 - :cpu1);
SQL
)
IFS='|' read -r verified vwall vcpu accepted awall acpu <<<"$OUT"
[ "$verified" = "$N" ] || { echo "only $verified of $N notifications verified" >&2; exit 1; }
[ "$accepted" = "$N" ] || { echo "only $accepted of $N notifications accepted" >&2; exit 1; }

# the floor: RSA-2048 verifications per second, one core
FLOOR=$(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ { print $NF; exit }')
TICK=$(getconf CLK_TCK)

printf '%-44s %8s %10s %14s %8s\n' "notifications ($N)" "wall s" "per s" "CPU ms each" "/floor"
row() {   # label wall cpu_ticks
    awk -v l="$1" -v n="$N" -v w="$2" -v c="$3" -v t="$TICK" -v f="$FLOOR" 'BEGIN {
        r = (w > 0) ? n / w : 0
        printf "%-44s %8.3f %10.0f %14.3f %8.2f\n", l, w, r, c * 1000 / t / n, r / f }'
}
row "wxpay_verify_notification" "$vwall" "$vcpu"
row "wxpay_accept_notification (+ insert, NOTIFY)" "$awall" "$acpu"
awk -v f="$FLOOR" 'BEGIN { printf "%-44s %8s %10.0f %14.3f %8.2f\n", "floor: RSA-2048 verify (openssl speed, 1 core)", "-", f, 1000 / f, 1 }'
