--
-- wxpay_check_config: each check on its own, failing for the right reason
--
\set serial `cat "$WXPAY_PKI/merchant_serial.txt"`
\set key `cat "$WXPAY_PKI/merchant.key"`
\set key_pkcs1 `cat "$WXPAY_PKI/merchant_pkcs1.key"`
\set encrypted `cat "$WXPAY_PKI/merchant_encrypted.key"`
\set small `cat "$WXPAY_PKI/merchant_1024.key"`
\set wrong_key `cat "$WXPAY_PKI/wrong_merchant.key"`
\set merchant_cert `cat "$WXPAY_PKI/merchant.crt"`
\set pubkey_id `cat "$WXPAY_PKI/pub_key_id.txt"`
\set pubkey `cat "$WXPAY_PKI/platform_pub.pem"`
\set apiv3 `cat "$WXPAY_PKI/apiv3_key.txt"`
\set ca `cat "$WXPAY_PKI/ca.crt"`
\set other_ca `cat "$WXPAY_PKI/other_ca.crt"`
\set cert `cat "$WXPAY_PKI/platform_cert.crt"`
\set cert_serial `cat "$WXPAY_PKI/platform_cert_serial.txt"`
\set expired `cat "$WXPAY_PKI/platform_cert_expired.crt"`
\set expired_serial `cat "$WXPAY_PKI/platform_cert_expired_serial.txt"`
\getenv sim_url WXPAY_SIM_URL

-- the checks with random serials, times and Request-IDs masked
CREATE FUNCTION regress_check(cfg text, live boolean DEFAULT false, only_failed boolean DEFAULT true)
RETURNS TABLE (check_name text, ok boolean, detail text) LANGUAGE sql AS $$
    SELECT c.check_name, c.ok,
           regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(c.detail,
               '\m[0-9A-F]{32,}\M', 'SERIAL', 'g'),
               'https://127\.0\.0\.1:\d{2,}', 'SIM_URL', 'g'),
               '\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d', 'TIME', 'g'),
               'Request-ID: [0-9a-f]+-[0-9]+', 'Request-ID: X'),
               'wxpay-check-[0-9A-Za-z]+', 'wxpay-check-X')
    FROM wxpay_check_config(cfg, live) c
    -- keys_at_rest is NULL (no root key) all through this file:
    -- test/t/022_keys_at_rest.pl tests it
    WHERE NOT only_failed OR (c.ok IS DISTINCT FROM true AND c.check_name <> 'keys_at_rest')
$$;

-- a good public-key config: every check passes, nothing is sent
\set before `node test/sim/ctl.js requests`
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, ca_cert)
VALUES ('chk', '1900000001', :'serial', :'key', :'pubkey_id', :'pubkey', :'sim_url', :'ca');
SELECT check_name, ok, replace(detail, :'sim_url', 'SIM_URL') AS detail
FROM regress_check('chk', only_failed => false);
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;

-- mchid
UPDATE wxpay_config SET mchid = '19000x' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET mchid = '1900000001' WHERE name = 'chk';

-- private_key: each mistake named; the key's text never shown
UPDATE wxpay_config SET private_key = 'not a key' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET private_key = :'merchant_cert' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET private_key = :'pubkey' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET private_key = :'encrypted' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET private_key = :'small' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET private_key = overlay(:'key' placing 'AAAA' from 100 for 4) WHERE name = 'chk';
SELECT check_name, ok, strpos(detail, substr(:'key', 200, 24)) AS key_text_in_detail
FROM wxpay_check_config('chk') WHERE check_name = 'private_key';
-- PKCS#1, CRLF line ends and trailing white space are fine
UPDATE wxpay_config SET private_key = replace(:'key_pkcs1', E'\n', E'  \r\n') || E'\r\n  ' WHERE name = 'chk';
SELECT * FROM regress_check('chk', only_failed => false) WHERE check_name = 'private_key';
UPDATE wxpay_config SET private_key = replace(:'key', E'\n', E'\r\n') || E'\n\n' WHERE name = 'chk';
SELECT * FROM regress_check('chk', only_failed => false) WHERE check_name = 'private_key';

-- serial_no
UPDATE wxpay_config SET serial_no = 'serial=' || :'serial' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET serial_no = 'AB:CD:EF' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET serial_no = 'AB CD' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET serial_no = 'XYZ' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET serial_no = :'serial' WHERE name = 'chk';

-- the WeChat Pay public key
UPDATE wxpay_config SET wechatpay_public_key = NULL WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET wechatpay_public_key = :'pubkey', wechatpay_public_key_id = 'PUB_KEY_ID_x' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET wechatpay_public_key = 'garbage', wechatpay_public_key_id = :'pubkey_id' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET wechatpay_public_key = :'cert' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET wechatpay_public_key = :'pubkey' WHERE name = 'chk';

-- base_url and ca_cert
UPDATE wxpay_config SET base_url = 'https://127.0.0.1:1/v3' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET base_url = :'sim_url', ca_cert = 'not a certificate' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET ca_cert = :'ca' || E'\n' || left(:'other_ca', 200) || E'\n-----END CERTIFICATE-----\n' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET ca_cert = NULL WHERE name = 'chk';
SELECT * FROM regress_check('chk', only_failed => false) WHERE check_name = 'ca_cert';
UPDATE wxpay_config SET ca_cert = :'ca' || E'\n' || :'other_ca' WHERE name = 'chk';
SELECT * FROM regress_check('chk', only_failed => false) WHERE check_name = 'ca_cert';
UPDATE wxpay_config SET ca_cert = :'ca' WHERE name = 'chk';

-- apiv3_key: its length, never its text; surrounding white space ignored
UPDATE wxpay_config SET apiv3_key = left(:'apiv3', 31) WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET apiv3_key = :'apiv3' || 'x' || E'\n' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
UPDATE wxpay_config SET apiv3_key = :'apiv3' || E'\n' WHERE name = 'chk';
SELECT * FROM regress_check('chk', only_failed => false) WHERE check_name = 'apiv3_key';
SELECT count(*) AS apiv3_in_details FROM wxpay_check_config('chk') WHERE strpos(detail, :'apiv3') > 0;

-- platform-certificate mode: no certificate, an expired one, a broken one
UPDATE wxpay_config SET wechatpay_public_key = NULL, wechatpay_public_key_id = NULL,
                        mchid = '1900000002' WHERE name = 'chk';
SELECT * FROM regress_check('chk');
INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate)
VALUES ('chk', :'expired_serial', :'expired');
SELECT * FROM regress_check('chk');
INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate)
VALUES ('chk', 'ABCDEF', :'cert');
SELECT * FROM regress_check('chk');
UPDATE wxpay_platform_certificate SET serial_no = :'cert_serial', certificate = 'garbage'
WHERE config_name = 'chk' AND serial_no = 'ABCDEF';
SELECT * FROM regress_check('chk');
UPDATE wxpay_platform_certificate SET certificate = :'cert'
WHERE config_name = 'chk' AND serial_no = :'cert_serial';
SELECT * FROM regress_check('chk', only_failed => false)
WHERE check_name IN ('platform_certificates', 'verification_key');

-- all of that was found without a request
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;

--
-- live => true: one harmless signed request
--
-- accepted: the never-created plan is 404, the answer verifies
SELECT * FROM regress_check('chk', true, false) WHERE check_name LIKE 'live%';
SELECT * FROM regress_check('default', true, false) WHERE check_name LIKE 'live%';

-- SIGN_ERROR: a wrong serial, a wrong key, an unknown merchant; each says what to check
UPDATE wxpay_config SET serial_no = 'ABCDEF0123' WHERE name = 'chk';
SELECT * FROM regress_check('chk', true);
UPDATE wxpay_config SET serial_no = :'serial', private_key = :'wrong_key' WHERE name = 'chk';
SELECT * FROM regress_check('chk', true);
UPDATE wxpay_config SET private_key = :'key', mchid = '1900000099' WHERE name = 'chk';
SELECT * FROM regress_check('chk', true);
UPDATE wxpay_config SET mchid = '1900000002' WHERE name = 'chk';

-- an answer that cannot be verified: no certificate held, or another public key id
DELETE FROM wxpay_platform_certificate WHERE config_name = 'chk';
SELECT * FROM regress_check('chk', true);
UPDATE wxpay_config SET mchid = '1900000001', wechatpay_public_key_id = 'PUB_KEY_ID_0000',
                        wechatpay_public_key = :'pubkey' WHERE name = 'chk';
SELECT * FROM regress_check('chk', true);
UPDATE wxpay_config SET wechatpay_public_key_id = :'pubkey_id' WHERE name = 'chk';

-- TLS and network failures
UPDATE wxpay_config SET ca_cert = :'other_ca' WHERE name = 'chk';
SELECT check_name, ok, detail ~ '^Nothing was sent to https://127\.0\.0\.1:\d+: .+\. Check base_url, backup_base_url, ca_cert' AS says_not_reached
FROM wxpay_check_config('chk', true) WHERE check_name LIKE 'live%';
UPDATE wxpay_config SET ca_cert = :'ca', base_url = 'https://127.0.0.1:1' WHERE name = 'chk';
SELECT check_name, ok, detail ~ '^Nothing was sent to https://127\.0\.0\.1:1: .+\. Check base_url' AS says_not_reached
FROM wxpay_check_config('chk', true) WHERE check_name LIKE 'live%';

-- a config that fails a check is not sent at all
UPDATE wxpay_config SET base_url = :'sim_url', private_key = 'not a key' WHERE name = 'chk';
\set before `node test/sim/ctl.js requests`
SELECT * FROM regress_check('chk', true) WHERE check_name LIKE 'live%';
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;

-- arguments, unknown configs, privileges
SELECT * FROM wxpay_check_config(NULL);
SELECT * FROM wxpay_check_config('chk', NULL);
SELECT * FROM wxpay_check_config('nosuch');
CREATE ROLE regress_check_app;
SET ROLE regress_check_app;
SELECT * FROM wxpay_check_config('chk');
RESET ROLE;
GRANT EXECUTE ON FUNCTION wxpay_check_config(text, boolean) TO regress_check_app;
SET ROLE regress_check_app;
SELECT check_name, ok FROM wxpay_check_config('chk') WHERE check_name = 'private_key';
SELECT private_key FROM wxpay_config;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION wxpay_check_config(text, boolean) FROM regress_check_app;
DROP ROLE regress_check_app;
DELETE FROM wxpay_config WHERE name = 'chk';
