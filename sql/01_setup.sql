--
-- Installation: objects, privileges, settings; the configs later files use
--
CREATE EXTENSION wxpay_signplan;

\dx+ wxpay_signplan

-- settings, with units
SHOW wxpay.connect_timeout;
SHOW wxpay.request_timeout;
SET wxpay.request_timeout = '2s';
SHOW wxpay.request_timeout;
RESET wxpay.request_timeout;
SET wxpay.request_timeout = 0;
SET wxpay.no_such_setting = 1;

-- PUBLIC gets nothing that touches secrets or the network
SELECT has_table_privilege('public', 'wxpay_config', 'SELECT') AS config_select,
       has_table_privilege('public', 'wxpay_platform_certificate', 'SELECT') AS cert_select,
       has_function_privilege('public', 'wxpay_stop_sign_plan(text,text,text,text)', 'EXECUTE') AS stop_execute,
       has_function_privilege('public', 'wxpay_config_changed()', 'EXECUTE') AS trigger_execute,
       has_function_privilege('public', 'wxpay_sign_plan_details(jsonb)', 'EXECUTE') AS details_execute;

-- the stop function is SECURITY DEFINER with a pinned search_path
SELECT proname, prosecdef, proconfig, provolatile, proparallel, proisstrict
FROM pg_proc WHERE proname LIKE 'wxpay%' ORDER BY oid;

-- base_url must be https; rejected rows are never echoed (they hold a key)
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, base_url)
VALUES ('plain', '1', 'AB', 'SECRET KEY TEXT', 'http://api.mch.weixin.qq.com');
INSERT INTO wxpay_config (name, mchid, serial_no, private_key)
VALUES ('nomchid', NULL, 'AB', 'SECRET KEY TEXT');
INSERT INTO wxpay_config (name, mchid, serial_no, private_key)
VALUES ('nokey', '1', 'AB', NULL);

--
-- Configs used by the other files; keys come from files, never from SQL text
--
\getenv pki WXPAY_PKI
\getenv sim_url WXPAY_SIM_URL
\set key `cat "$WXPAY_PKI/merchant.key"`
\set key_pkcs1 `cat "$WXPAY_PKI/merchant_pkcs1.key"`
\set serial `cat "$WXPAY_PKI/merchant_serial.txt"`
\set pubkey_id `cat "$WXPAY_PKI/pub_key_id.txt"`
\set pubkey `cat "$WXPAY_PKI/platform_pub.pem"`
\set ca `cat "$WXPAY_PKI/ca.crt"`
\set cert `cat "$WXPAY_PKI/platform_cert.crt"`
\set cert_serial `cat "$WXPAY_PKI/platform_cert_serial.txt"`

-- public-key mode (the default config)
INSERT INTO wxpay_config (mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, ca_cert, backup_base_url)
VALUES ('1900000001', :'serial', :'key', :'pubkey_id', :'pubkey', :'sim_url', :'ca', NULL);

-- platform-certificate mode, PKCS#1 key, lower-case serial
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, base_url, ca_cert, backup_base_url)
VALUES ('certmode', '1900000002', lower(:'serial'), :'key_pkcs1', :'sim_url', :'ca', NULL);
INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate)
VALUES ('certmode', :'cert_serial', :'cert');

SELECT name, mchid, base_url = :'sim_url' AS base_url_is_sim,
       wechatpay_public_key_id IS NOT NULL AS public_key_mode
FROM wxpay_config ORDER BY name;

-- reports errors as text, for cases whose detail is deterministic
CREATE FUNCTION regress_error(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
    det text;
    hint text;
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg || E'\n  detail: ' || coalesce(det, '') ||
           E'\n  hint: ' || coalesce(hint, '');
END $$;

-- the same without detail and hint, for cases that quote libcurl's timings
CREATE FUNCTION regress_sqlstate(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN st || ': ' || msg;
END $$;
