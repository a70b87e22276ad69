SET TimeZone = 'Asia/Shanghai';
SET DateStyle = ISO, YMD;
--
-- Stopping sign plans: typed rows, details, both key modes
--

-- public-key mode; every field typed, times with milliseconds
\x on
SELECT * FROM wxpay_stop_sign_plan('stop-1', 'subscription ended');
\x off

-- the row's types
SELECT pg_typeof(p.going_detail_no) AS going_detail_no, pg_typeof(p.total_origin_price) AS total_origin_price,
       pg_typeof(p.cancel_sign_time) AS cancel_sign_time, pg_typeof(p.signed_detail_list) AS signed_detail_list
FROM wxpay_stop_sign_plan('stop-2', 'types') p;

-- details in one statement; the stop call happens once
SELECT d.*
FROM wxpay_stop_sign_plan('stop-3', 'with details') p, LATERAL wxpay_sign_plan_details(p) d;
\! node test/sim/ctl.js attempts stop-3

-- platform-certificate mode with a PKCS#1 key
SELECT merchant_sign_plan_no, mchid, sign_state, cancel_sign_type, cancel_reason
FROM wxpay_stop_sign_plan('stop-4', '证书模式', 'certmode');

-- a stop reason that needs JSON escaping arrives intact
SELECT cancel_reason FROM wxpay_stop_sign_plan('stop-5', E'say "bye"\\ \t tab 用户退订');

-- no signed_detail_list and no openid: NULLs, and no detail rows
SELECT openid, signed_detail_list, sign_state
FROM wxpay_stop_sign_plan('nodetails-1', 'none');
SELECT count(*) FROM wxpay_stop_sign_plan('nodetails-2', 'none') p,
    LATERAL wxpay_sign_plan_details(p) d;

-- amounts beyond int32
SELECT total_origin_price, total_actual_price
FROM wxpay_stop_sign_plan('big-1', 'large amounts');

-- a second stop of the same plan is the platform's rejection (WX002)
SELECT wxpay_stop_sign_plan('stop-1', 'again');

-- querying is the signed, verified GET: the truth after an unknown outcome
SELECT merchant_sign_plan_no, sign_state, cancel_sign_type, cancel_sign_time, cancel_reason
FROM wxpay_query_sign_plan('stop-1');
SELECT merchant_sign_plan_no, sign_state, cancel_sign_type, cancel_sign_time, cancel_reason
FROM wxpay_query_sign_plan('query-active-1', 'certmode');
SELECT wxpay_query_sign_plan('notfound-q');
SELECT wxpay_query_sign_plan(NULL);
SELECT wxpay_query_sign_plan('a b');
-- a stop whose answer was lost, then the query that settles it
\! node test/sim/ctl.js fault lost-1 stop_then_500
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('lost-1', 'lost answer')$$);
SELECT sign_state, cancel_reason FROM wxpay_query_sign_plan('lost-1');

-- many calls in one statement, in one session
SELECT count(*) AS stopped
FROM generate_series(1, 25) i,
     LATERAL wxpay_stop_sign_plan('many-' || i, 'batch') p
WHERE p.sign_state = 'SIGN_PLAN_CANCEL';

-- from a trigger, as a subscription table would
CREATE TABLE regress_subscription (plan_no text PRIMARY KEY, stopped_state text);
CREATE FUNCTION regress_stop_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO regress_subscription VALUES
        ('log-' || OLD.plan_no,
         (wxpay_stop_sign_plan(OLD.plan_no, 'subscription deleted')).sign_state);
    RETURN OLD;
END $$;
CREATE TRIGGER regress_stop AFTER DELETE ON regress_subscription
    FOR EACH ROW WHEN (OLD.plan_no NOT LIKE 'log-%') EXECUTE FUNCTION regress_stop_on_delete();
INSERT INTO regress_subscription VALUES ('trig-1', NULL);
DELETE FROM regress_subscription WHERE plan_no = 'trig-1';
SELECT * FROM regress_subscription;
DROP TABLE regress_subscription;
DROP FUNCTION regress_stop_on_delete();
