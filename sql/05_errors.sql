--
-- How failures are classified
--   WX002 rejected (4xx): not stopped by this call
--   WX003 outcome unknown: the platform may have acted
--   WX004 not sent: nothing reached the platform
--

-- rejections carry status, code, message and Request-ID
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http400', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http403', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http404', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('notfound-1', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http429', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http400_nocode', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http400_text', 'r')$$);

-- server errors: the outcome is unknown, whatever the body
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http500', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http500_html', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http502_html', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http503_html', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-http500_empty', 'r')$$);

-- a 200 that fails verification is never a row
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-bad_signature', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-probe', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-bad_base64', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-missing_timestamp', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-missing_nonce', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-missing_signature', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-missing_serial', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-dup_signature', 'r')$$);
SELECT regexp_replace(regress_error($$SELECT wxpay_stop_sign_plan('fault-unknown_serial', 'r')$$),
                      'serial "[^"]*"', 'serial "X"');
SELECT regexp_replace(regress_error($$SELECT wxpay_stop_sign_plan('fault-stale_timestamp', 'r')$$),
                      'is \d+ seconds', 'is N seconds');
SELECT regexp_replace(regress_error($$SELECT wxpay_stop_sign_plan('fault-future_timestamp', 'r')$$),
                      'is \d+ seconds', 'is N seconds');

-- verified answers that cannot be read
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-empty_200', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-not_json', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-json_array', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-wrong_types', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-deep_nesting', 'r')$$);
SELECT regress_error($$SELECT wxpay_stop_sign_plan('fault-huge', 'r')$$);

-- the transport fails after sending (libcurl's words carry timings: state only)
SET wxpay.request_timeout = '500ms';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('fault-stall', 'r')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('fault-trickle', 'r')$$);
RESET wxpay.request_timeout;
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('fault-reset', 'r')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('fault-reset_midbody', 'r')$$);
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('fault-truncated_chunked', 'r')$$);

-- nothing sent: closed port, and a server our CA does not vouch for
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, ca_cert, backup_base_url)
SELECT 'closed', mchid, serial_no, private_key, wechatpay_public_key_id,
       wechatpay_public_key, 'https://127.0.0.1:1', ca_cert, NULL
FROM wxpay_config WHERE name = 'default';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('err-1', 'r', 'closed')$$);

\set other_ca `cat "$WXPAY_PKI/other_ca.crt"`
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, ca_cert, backup_base_url)
SELECT 'wrongca', mchid, serial_no, private_key, wechatpay_public_key_id,
       wechatpay_public_key, base_url, :'other_ca', NULL
FROM wxpay_config WHERE name = 'default';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('err-2', 'r', 'wrongca')$$);
\! node test/sim/ctl.js attempts err-2

-- the system trust store does not know the private test CA either
UPDATE wxpay_config SET ca_cert = NULL WHERE name = 'wrongca';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('err-3', 'r', 'wrongca')$$);

-- the session is still usable after every failure
SELECT sign_state FROM wxpay_stop_sign_plan('err-ok', 'after the failures');
DELETE FROM wxpay_config WHERE name IN ('closed', 'wrongca');
