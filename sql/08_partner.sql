SET TimeZone = 'Asia/Shanghai';
SET DateStyle = ISO, YMD;
--
-- Partner mode: a service provider stops and queries its sub-merchants'
-- plans with its own config (sub_mchid, the last parameter)
--

-- the partner stop: its own path, sub_mchid in the body, the sub-merchant
-- fields in the row, mchid the provider's
\x on
SELECT merchant_sign_plan_no, mchid, sign_state, cancel_sign_type, cancel_reason,
       sub_mchid, sub_appid, sub_openid
FROM wxpay_stop_sign_plan('pt-1', 'gym closed', 'default', '1230000109');
\x off
\! node test/sim/ctl.js last
\! node test/sim/ctl.js stops 1230000109:pt-1

-- named, in platform-certificate mode
SELECT merchant_sign_plan_no, mchid, sign_state, sub_mchid
FROM wxpay_stop_sign_plan(merchant_sign_plan_no => 'pt-2', stop_reason => 'moved',
                          config_name => 'certmode', sub_mchid => '1230000110');

-- a plan number is a sub-merchant's own: another sub-merchant's plan with
-- the same number, and the provider's own, are other plans
SELECT sign_state, sub_mchid FROM wxpay_query_sign_plan('pt-1', 'default', '1230000111');
SELECT sign_state, sub_mchid FROM wxpay_query_sign_plan('pt-1');
SELECT sign_state, sub_mchid FROM wxpay_stop_sign_plan('pt-1', 'other sub-merchant', sub_mchid => '1230000111');
\! node test/sim/ctl.js stops 1230000111:pt-1
\! node test/sim/ctl.js stops pt-1

-- the partner query: sub_mchid in the signed query string
SELECT merchant_sign_plan_no, sign_state, cancel_sign_type, cancel_reason, sub_mchid
FROM wxpay_query_sign_plan('pt-1', sub_mchid => '1230000109');
\! node test/sim/ctl.js last
SELECT sign_state, sub_mchid FROM wxpay_query_sign_plan('pt-2', 'certmode', '1230000110');

-- stopping it again is the platform's rejection, reported for that sub-merchant
SELECT regress_error($$SELECT wxpay_stop_sign_plan('pt-1', 'again', 'default', '1230000109')$$);
SELECT regress_error($$SELECT wxpay_query_sign_plan('notfound-pt', 'default', '1230000109')$$);

-- sub_mchid is 1 to 32 ASCII digits: 22023, and nothing is sent
\set before `node test/sim/ctl.js requests`
SELECT regress_error($$SELECT wxpay_stop_sign_plan('pt-3', 'r', 'default', '')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('pt-3', 'r', 'default', '12a')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('pt-3', 'r', 'default', ' 123')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('pt-3', 'r', 'default', '123&x=1')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('pt-3', 'r', 'default', '１２３')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('pt-3', 'r', 'default', repeat('1', 33))$$);
SELECT regress_sqlstate($$SELECT wxpay_query_sign_plan('pt-3', 'default', '1-2')$$);
SELECT regress_sqlstate($$SELECT * FROM wxpay_stop_sign_plans(ARRAY['pt-3'], 'r', 'default', 'x')$$);
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;
-- 32 digits is the longest
SELECT sub_mchid = repeat('9', 32) AS longest_ok
FROM wxpay_stop_sign_plan('pt-4', 'r', 'default', repeat('9', 32));

-- an answer about another sub-merchant's plan is not accepted: WX003
\! node test/sim/ctl.js fault 1230000109:pt-5 wrong_sub_mchid
SELECT regress_error($$SELECT wxpay_stop_sign_plan('pt-5', 'r', 'default', '1230000109')$$);
-- (the platform did act: the query tells the truth)
SELECT sign_state, sub_mchid FROM wxpay_query_sign_plan('pt-5', 'default', '1230000109');
\! node test/sim/ctl.js fault 1230000109:pt-5 wrong_sub_mchid
SELECT regress_sqlstate($$SELECT wxpay_query_sign_plan('pt-5', 'default', '1230000109')$$);
-- faults of a fault-<name> plan number apply to partner calls too
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('fault-bad_signature-pt', 'r', 'default', '1230000109')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('fault-http500-pt', 'r', 'default', '1230000109')$$);

-- two or three arguments, positional or named, and an explicit NULL:
-- the direct-merchant endpoint as before
SELECT sign_state, sub_mchid FROM wxpay_stop_sign_plan('pt-d1', 'r');
\! node test/sim/ctl.js last
SELECT sign_state, sub_mchid FROM wxpay_stop_sign_plan('pt-d2', 'r', 'certmode');
SELECT sign_state, sub_mchid FROM wxpay_stop_sign_plan(stop_reason => 'r', merchant_sign_plan_no => 'pt-d3');
SELECT sign_state, sub_mchid FROM wxpay_stop_sign_plan('pt-d4', 'r', config_name => 'certmode');
SELECT sign_state, sub_mchid FROM wxpay_stop_sign_plan('pt-d5', 'r', 'default', NULL);
\! node test/sim/ctl.js last
SELECT sign_state, sub_mchid FROM wxpay_query_sign_plan('pt-d1');
SELECT sign_state, sub_mchid FROM wxpay_query_sign_plan(merchant_sign_plan_no => 'pt-d2', config_name => 'certmode');
SELECT sign_state, sub_mchid FROM wxpay_query_sign_plan('pt-d3', sub_mchid => NULL);
\! node test/sim/ctl.js last
SELECT merchant_sign_plan_no, ok, (plan).sub_mchid FROM wxpay_stop_sign_plans(ARRAY['pt-d6'], 'r');
SELECT merchant_sign_plan_no, ok, (plan).sub_mchid
FROM wxpay_stop_sign_plans(merchant_sign_plan_nos => ARRAY['pt-d7'], stop_reason => 'r', config_name => 'certmode');

-- the batch: one sub-merchant for the whole array
SELECT merchant_sign_plan_no, ok, sqlstate, (plan).sign_state, (plan).sub_mchid
FROM wxpay_stop_sign_plans(ARRAY['pb-1', 'pb-2', 'pb-1', 'fault-http400-pb', 'pt-1'], 'term ended',
                           'default', '1230000112');
\! node test/sim/ctl.js stops 1230000112:pb-1
SELECT merchant_sign_plan_no, ok, (plan).sub_mchid
FROM wxpay_stop_sign_plans(ARRAY['pb-1'], 'r', sub_mchid => '1230000113', config_name => 'certmode');

-- a provider's subscriptions, stopped from a trigger (the README recipe)
CREATE TABLE regress_partner_subscription (
    sub_mchid text NOT NULL,
    sign_plan_no text NOT NULL,
    PRIMARY KEY (sub_mchid, sign_plan_no));
CREATE FUNCTION regress_partner_stop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wxpay_stop_sign_plan(OLD.sign_plan_no, 'subscription cancelled',
                                 sub_mchid => OLD.sub_mchid);
    RETURN OLD;
END $$;
CREATE TRIGGER regress_partner_stop AFTER DELETE ON regress_partner_subscription
    FOR EACH ROW EXECUTE FUNCTION regress_partner_stop();
INSERT INTO regress_partner_subscription VALUES ('1230000120', 'ps-1'), ('1230000121', 'ps-1');
DELETE FROM regress_partner_subscription WHERE sub_mchid = '1230000120';
SELECT sign_state FROM wxpay_query_sign_plan('ps-1', sub_mchid => '1230000120');
SELECT sign_state FROM wxpay_query_sign_plan('ps-1', sub_mchid => '1230000121');
DROP TABLE regress_partner_subscription;
DROP FUNCTION regress_partner_stop();
