#!/usr/bin/env bash
# test/demo.sh: from a fresh Debian 12 machine, install what is needed,
# build, and stop a sign plan on the bundled WeChat Pay simulator, printing
# the row and its detail rows; then show the transaction-safe queue: a
# trigger whose rolled-back DELETE sends nothing and whose committed DELETE
# stops the plan through the background worker; then a user's cancellation
# arriving as WeChat Pay's notification (made by the simulator, delivered
# twice) ends a subscription once; last, checks that test/sandbox.sh prints
# a working config.  Leaves nothing running.
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

# Notifications: the simulator makes the callback WeChat Pay would POST
# when the user cancels plan demo-plan-005 in WeChat (signed, encrypted);
# the same id comes twice, as WeChat Pay's retries do.
notification() {
    curl -sf -X POST -H 'Content-Type: application/json' \
        -d '{"plan":"demo-plan-005","id":"demo-notification-1"}' "$WXPAY_SIM_CONTROL/notification" |
        node -e 'let s="";process.stdin.on("data",c=>s+=c).on("end",()=>{const n=JSON.parse(s);
            process.stdout.write(JSON.stringify(n.headers)+"\n"+Buffer.from(n.body).toString("base64")+"\n")})'
}
{ read -r h1; read -r b1; } < <(notification)
{ read -r h2; read -r b2; } < <(notification)
wx_as_pg env WXPAY_PKI="$WXPAY_PKI" psql -X -q -v ON_ERROR_STOP=1 -d postgres \
    -v h1="$h1" -v b1="$b1" -v h2="$h2" -v b2="$b2" <<'SQL'
SET TimeZone = 'Asia/Shanghai';
\set apiv3 `cat "$WXPAY_PKI/apiv3_key.txt"`
UPDATE wxpay_config SET apiv3_key = :'apiv3';

\echo
\echo '== notifications: a trigger on wxpay_notification ends the subscription when the user cancels'
CREATE TABLE member_plan (merchant_sign_plan_no text PRIMARY KEY, ended_at timestamptz, ended_by text);
INSERT INTO member_plan VALUES ('demo-plan-005', NULL, NULL);
CREATE FUNCTION member_plan_end() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    plan wxpay_sign_plan := wxpay_sign_plan_from_json(NEW.resource);
BEGIN
    UPDATE member_plan SET ended_at = plan.cancel_sign_time, ended_by = plan.cancel_sign_type
     WHERE merchant_sign_plan_no = plan.merchant_sign_plan_no AND ended_at IS NULL;
    RAISE NOTICE 'subscription of plan % ended (%)', plan.merchant_sign_plan_no, plan.cancel_sign_type;
    RETURN NEW;
END $$;
CREATE TRIGGER member_plan_end AFTER INSERT ON wxpay_notification
    FOR EACH ROW WHEN (NEW.event_type = 'PAYSCORE.USER_CANCEL_SIGN_PLAN')
    EXECUTE FUNCTION member_plan_end();
\echo '   the callback handler passes the headers and the raw body: SELECT ... FROM wxpay_accept_notification(headers, body);'
SELECT id, event_type, summary, merchant_sign_plan_no, received_at
FROM wxpay_accept_notification(:'h1', convert_from(decode(:'b1', 'base64'), 'UTF8'));
\echo '   WeChat Pay delivers it again: the stored row comes back, the trigger does not fire'
SELECT id, received_at
FROM wxpay_accept_notification(:'h2', convert_from(decode(:'b2', 'base64'), 'UTF8'));
SELECT * FROM member_plan;
\echo '   a body altered by one byte is refused (SQLSTATE WX010):'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
SELECT id FROM wxpay_accept_notification(:'h2',
    replace(convert_from(decode(:'b2', 'base64'), 'UTF8'), 'encrypt-resource', 'encrypt-resourcE'));
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
