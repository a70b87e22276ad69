--
-- wxpay_stop_sign_plans: many stops at once, one row per element, in input
-- order; per-plan failures are rows, whole-call problems are errors
--
SET TimeZone = 'Asia/Shanghai';
SET DateStyle = ISO, YMD;

-- labels and privileges: like the stop function
SELECT prosecdef, proconfig, provolatile, proparallel, proisstrict, proretset,
       has_function_privilege('public', oid, 'EXECUTE') AS public_execute
FROM pg_proc WHERE proname = 'wxpay_stop_sign_plans';

-- successes and every kind of per-plan failure in one call, in input order
SELECT merchant_sign_plan_no, ok, sqlstate, error_code, error_message,
       request_id, (plan).merchant_sign_plan_no AS plan_no, (plan).sign_state,
       (plan).cancel_reason
FROM wxpay_stop_sign_plans(ARRAY[
    'b20-1', NULL, 'bad plan!', 'b20-2', 'b20-1', 'fault-http400-b20',
    'fault-http500-b20', 'fault-bad_signature-b20', 'notfound-b20', '',
    'fault-http403-b20', 'b20-3'], 'batch stop');

-- the setting (the library is loaded now), with its bounds
SHOW wxpay.batch_concurrency;
SET wxpay.batch_concurrency = 0;
SET wxpay.batch_concurrency = 65;
SET wxpay.batch_concurrency = 4;
SHOW wxpay.batch_concurrency;
RESET wxpay.batch_concurrency;

-- each plan was sent once: the duplicate was not sent, invalid ones neither
\! node test/sim/ctl.js attempts b20-1
\! node test/sim/ctl.js stops b20-1
\! node test/sim/ctl.js attempts fault-bad_signature-b20
\! node test/sim/ctl.js stops fault-bad_signature-b20

-- a second stop of a stopped plan is the platform's rejection (WX002)
SELECT merchant_sign_plan_no, ok, sqlstate, error_code, error_message
FROM wxpay_stop_sign_plans(ARRAY['b20-1', 'b20-4'], 'again');

-- the plan column is a full wxpay_sign_plan: typed fields and details
SELECT b.merchant_sign_plan_no, pg_typeof(b.plan) AS type, (b.plan).total_origin_price,
       (b.plan).cancel_sign_time IS NOT NULL AS has_cancel_time, d.plan_detail_no, d.plan_detail_state
FROM wxpay_stop_sign_plans(ARRAY['b20-5'], 'details') b,
     LATERAL wxpay_sign_plan_details(b.plan) d;

-- the same result at concurrency 1; order and rows do not depend on it
SET wxpay.batch_concurrency = 1;
SELECT merchant_sign_plan_no, ok, sqlstate, (plan).sign_state
FROM wxpay_stop_sign_plans(ARRAY['b20-c1-a', 'fault-http429-b20', 'b20-c1-b', NULL], 'one at a time');
RESET wxpay.batch_concurrency;

-- platform-certificate mode
SELECT merchant_sign_plan_no, ok, (plan).mchid, (plan).cancel_reason
FROM wxpay_stop_sign_plans(ARRAY['b20-cert-1', 'b20-cert-2'], '证书模式', 'certmode');

-- more elements than slots: every row, in order, each plan stopped once
SET wxpay.batch_concurrency = 3;
SELECT count(*) AS rows, count(*) FILTER (WHERE ok) AS ok,
       bool_and(merchant_sign_plan_no = 'b20-many-' || ord AND
                (plan).merchant_sign_plan_no = merchant_sign_plan_no) AS in_order
FROM wxpay_stop_sign_plans(
        ARRAY(SELECT 'b20-many-' || i FROM generate_series(1, 50) i), 'many')
     WITH ORDINALITY AS b(merchant_sign_plan_no, ok, sqlstate, error_code,
                          error_message, request_id, plan, ord);
RESET wxpay.batch_concurrency;
\! node test/sim/ctl.js attempts b20-many-1
\! node test/sim/ctl.js attempts b20-many-50

-- answers that cannot be trusted or read are rows too, whatever breaks
SELECT merchant_sign_plan_no, ok, sqlstate, error_code, error_message
FROM wxpay_stop_sign_plans(ARRAY[
    'fault-deep_nesting-b20', 'fault-huge-b20', 'fault-not_json-b20', 'fault-wrong_types-b20',
    'fault-missing_signature-b20', 'fault-http502_html-b20', 'b20-f-1'], 'body faults');
SELECT merchant_sign_plan_no, ok, sqlstate,
       split_part(error_message, ': ', 1) AS error_message
FROM wxpay_stop_sign_plans(ARRAY['fault-reset-b20', 'fault-reset_midbody-b20', 'b20-f-2'], 'transport faults');

-- a reused connection that dies unanswered: libcurl would resend the same
-- signed request on a new one (a replay WeChat Pay refuses with 401, which
-- would read as "rejected" although the first copy may have been acted
-- on); it is sent once and is WX003, in a batch and alone
\! node test/sim/ctl.js attempts fault-reset-b20
SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('b20-f-3', 'warm connection');
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-reset-b20s', 'r')$$);
\! node test/sim/ctl.js attempts fault-reset-b20s

-- a timeout is one row (WX003); the others still succeed
SET wxpay.request_timeout = '300ms';
SELECT merchant_sign_plan_no, ok, sqlstate,
       error_message LIKE 'No complete answer arrived within wxpay.request_timeout (300 ms)%' AS timeout_detail
FROM wxpay_stop_sign_plans(ARRAY['b20-t-1', 'fault-stall-b20', 'b20-t-2'], 'timeouts');
RESET wxpay.request_timeout;

-- nothing sent: a connection that cannot be made is WX004 on every row
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, ca_cert)
SELECT 'b20-closed', mchid, serial_no, private_key, wechatpay_public_key_id,
       wechatpay_public_key, 'https://127.0.0.1:1', ca_cert
FROM wxpay_config WHERE name = 'default';
SELECT merchant_sign_plan_no, ok, sqlstate, error_message LIKE 'Nothing was sent to https://127.0.0.1:1: %' AS not_sent
FROM wxpay_stop_sign_plans(ARRAY['b20-x-1', 'b20-x-2'], 'refused', 'b20-closed');
DELETE FROM wxpay_config WHERE name = 'b20-closed';

-- no elements, no rows
SELECT count(*) FROM wxpay_stop_sign_plans('{}', 'empty');
SELECT count(*) FROM wxpay_stop_sign_plans(NULL, 'null array');

-- whole-call problems are errors, raised before anything is sent
SELECT * FROM wxpay_stop_sign_plans(ARRAY['b20-e-1'], NULL);
SELECT * FROM wxpay_stop_sign_plans(ARRAY['b20-e-1'], '');
SELECT * FROM wxpay_stop_sign_plans(ARRAY['b20-e-1'], 'x', 'no-such-config');
SELECT * FROM wxpay_stop_sign_plans(ARRAY['b20-e-1'], 'x', NULL);
SELECT * FROM wxpay_stop_sign_plans(ARRAY[['b20-e-1'], ['b20-e-2']], 'x');
\! node test/sim/ctl.js attempts b20-e-1

-- a role needs its own grant
CREATE ROLE regress_batch;
SET ROLE regress_batch;
SELECT * FROM wxpay_stop_sign_plans(ARRAY['b20-r-1'], 'no grant');
RESET ROLE;
GRANT EXECUTE ON FUNCTION wxpay_stop_sign_plans(text[], text, text, text) TO regress_batch;
SET ROLE regress_batch;
SELECT merchant_sign_plan_no, ok, (plan).sign_state
FROM wxpay_stop_sign_plans(ARRAY['b20-r-1'], 'granted');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION wxpay_stop_sign_plans(text[], text, text, text) FROM regress_batch;
DROP ROLE regress_batch;
