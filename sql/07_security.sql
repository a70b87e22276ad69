--
-- Who may do what: an application role stops plans, never reads keys
--
CREATE ROLE regress_app;
CREATE ROLE regress_nobody;
GRANT EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text) TO regress_app;
GRANT CREATE ON DATABASE contrib_regression TO regress_app;

SET ROLE regress_app;
SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('sec-1', 'by the app');

-- no way to the secrets
SELECT private_key FROM wxpay_config;
SELECT count(*) FROM wxpay_config;
SELECT certificate FROM wxpay_platform_certificate;
UPDATE wxpay_config SET base_url = 'https://evil.example.com';
SELECT wxpay_config_changed();
COPY wxpay_config TO STDOUT;

-- search_path tricks do not change what the function reads or runs
CREATE SCHEMA regress_evil;
CREATE TABLE regress_evil.wxpay_config (name text, mchid text, serial_no text,
    private_key text, wechatpay_public_key_id text, wechatpay_public_key text,
    apiv3_key text, base_url text, ca_cert text);
INSERT INTO regress_evil.wxpay_config (name, mchid, serial_no, private_key, base_url)
VALUES ('default', '1', 'AB', 'x', 'https://127.0.0.1:1');
CREATE FUNCTION regress_evil.text_eq_evil(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR regress_evil.= (LEFTARG = text, RIGHTARG = text, PROCEDURE = regress_evil.text_eq_evil);
SET search_path = regress_evil, public;
SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('sec-2', 'hijack attempt');
RESET search_path;
RESET ROLE;
\set VERBOSITY terse
DROP SCHEMA regress_evil CASCADE;
\set VERBOSITY default

-- a role without EXECUTE cannot make any request
SET ROLE regress_nobody;
SELECT wxpay_stop_sign_plan('sec-3', 'no grant');
SELECT wxpay_query_sign_plan('sec-3');
SELECT private_key FROM wxpay_config;
RESET ROLE;
\! node test/sim/ctl.js attempts sec-3

REVOKE CREATE ON DATABASE contrib_regression FROM regress_app;
REVOKE EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text) FROM regress_app;
DROP ROLE regress_app;
DROP ROLE regress_nobody;
