#!/usr/bin/env bash
# test/demo.sh: from a fresh Debian 12 machine, install what is needed,
# build, and stop a sign plan on the bundled WeChat Pay simulator, printing
# the row and its detail rows; then show the transaction-safe queue: a
# trigger whose rolled-back DELETE sends nothing and whose committed DELETE
# stops the plan through the background worker; last, checks that
# test/sandbox.sh prints a working config.  Leaves nothing running.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# the queue's background worker needs the library preloaded
WX_PG_CONF="shared_preload_libraries = 'wxpay_signplan'"
wx_prepare

# Keys are read from files by psql, never typed into SQL (lib.sh).
wx_setup_config
wx_as_pg psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
SET TimeZone = 'Asia/Shanghai';

\echo
\echo '== SELECT * FROM wxpay_stop_sign_plan(''demo-plan-001'', ''subscription ended'');'
CREATE TEMP TABLE stopped AS
    SELECT * FROM wxpay_stop_sign_plan('demo-plan-001', 'subscription ended');
\echo '   the stopped plan at a glance (every column: SELECT * FROM stopped):'
SELECT merchant_sign_plan_no, sign_state, cancel_sign_type, cancel_sign_time,
       cancel_reason, total_origin_price, total_actual_price,
       jsonb_array_length(signed_detail_list) AS details
FROM stopped;
\echo '== its signed_detail_list as rows:'
\echo '   SELECT d.* FROM stopped p, LATERAL wxpay_sign_plan_details(p.signed_detail_list) d;'
SELECT d.* FROM stopped p, LATERAL wxpay_sign_plan_details(p.signed_detail_list) d;
\echo '== stopping it again is the platform''s rejection (SQLSTATE WX002):'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SELECT wxpay_stop_sign_plan('demo-plan-001', 'subscription ended');
\set ON_ERROR_STOP 1
\set VERBOSITY default

\echo
\echo '== the transaction-safe queue: a trigger stops the plan only if the DELETE commits'
CREATE TABLE subscription (id int PRIMARY KEY, sign_plan_no text NOT NULL);
INSERT INTO subscription VALUES (1, 'demo-plan-002'), (2, 'demo-plan-003');
CREATE FUNCTION subscription_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wxpay_stop_sign_plan_async(OLD.sign_plan_no, 'subscription ended');
    RETURN OLD;
END $$;
CREATE TRIGGER subscription_ended AFTER DELETE ON subscription
    FOR EACH ROW EXECUTE FUNCTION subscription_ended();
BEGIN;
DELETE FROM subscription WHERE id = 1;
ROLLBACK;
\echo '   DELETE of subscription 1 rolled back: nothing queued, nothing sent'
DELETE FROM subscription WHERE id = 2;
\echo '   DELETE of subscription 2 committed; the worker sends the stop:'
SELECT r.id, r.merchant_sign_plan_no, r.state, r.attempts, r.http_status,
       (r.result).sign_state, (r.result).cancel_sign_type
FROM wxpay_stop_request q, LATERAL wxpay_wait_stop_request(q.id, '30s') r;
SQL

# test/sandbox.sh (README "Try it on the simulator"): its printed INSERT
# works as printed, and a stop goes through; then it is stopped.
exec 8< <(exec bash "$WX_ROOT/test/sandbox.sh" --name sandbox 2>/dev/null)
sandbox_pid=$!
sandbox_sql=""
while IFS= read -r -t 60 line <&8; do
    sandbox_sql+="$line"$'\n'
    case "$line" in "-- The keys above are test keys"*) break ;; esac
done
case "$sandbox_sql" in *"INSERT INTO wxpay_config"*) ;; *) echo "test/sandbox.sh printed no config" >&2; exit 1 ;; esac
printf '%s' "$sandbox_sql" | wx_as_pg psql -X -q -v ON_ERROR_STOP=1 -d postgres -o /dev/null -f -
kill "$sandbox_pid"
wait "$sandbox_pid" 2>/dev/null || true
wx_log "test/sandbox.sh: its INSERT INTO wxpay_config worked; sandbox-plan-1 stopped through it"
