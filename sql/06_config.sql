--
-- Configuration problems are WX001 and are found before anything is sent
--
\set before `node test/sim/ctl.js requests`
\set serial `cat "$WXPAY_PKI/merchant_serial.txt"`
\set pubkey_id `cat "$WXPAY_PKI/pub_key_id.txt"`
\set pubkey `cat "$WXPAY_PKI/platform_pub.pem"`
\set key `cat "$WXPAY_PKI/merchant.key"`
\set encrypted `cat "$WXPAY_PKI/merchant_encrypted.key"`
\set small `cat "$WXPAY_PKI/merchant_1024.key"`
\set cert `cat "$WXPAY_PKI/platform_cert.crt"`
\set cert_serial `cat "$WXPAY_PKI/platform_cert_serial.txt"`
\set expired `cat "$WXPAY_PKI/platform_cert_expired.crt"`
\set expired_serial `cat "$WXPAY_PKI/platform_cert_expired_serial.txt"`

INSERT INTO wxpay_config (name, mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, backup_base_url)
VALUES ('c', '1900000001', :'serial', :'key', :'pubkey_id', :'pubkey', 'https://127.0.0.1:1', NULL);

-- a broken private key
UPDATE wxpay_config SET private_key = 'not a key' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET private_key = :'encrypted' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET private_key = :'small' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET private_key = :'pubkey' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
-- CRLF line ends and surrounding white space are fine (the closed port proves it got that far)
UPDATE wxpay_config SET private_key = E'\n  ' || replace(:'key', E'\n', E'\r\n') || E'\r\n\n' WHERE name = 'c';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c')$$);
-- a damaged key: the error names the problem, never the key's text
UPDATE wxpay_config SET private_key = overlay(:'key' placing 'AAAA' from 100 for 4) WHERE name = 'c';
SELECT strpos(regress_error($$SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c')$$),
              substr(:'key', 200, 24)) AS key_text_in_error,
       regress_sqlstate($$SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c')$$);
UPDATE wxpay_config SET private_key = :'key' WHERE name = 'c';

-- merchant number and serial
UPDATE wxpay_config SET mchid = '19000x' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET mchid = '1900000001', serial_no = 'XYZ' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
-- what "openssl x509 -serial" prints, label included: the hint says to drop it
UPDATE wxpay_config SET serial_no = 'serial=' || :'serial' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET serial_no = '1A:2B:3C' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET serial_no = :'serial' WHERE name = 'c';

-- base_url: https host and port only
UPDATE wxpay_config SET base_url = 'https://127.0.0.1:1/v3' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET base_url = 'https://user:pw@127.0.0.1:1' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET base_url = 'https://127.0.0.1:1?x=1' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET base_url = 'https://' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET base_url = 'https://127.0.0.1:1/' WHERE name = 'c';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c')$$);

-- verification keys
UPDATE wxpay_config SET wechatpay_public_key = NULL WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET wechatpay_public_key_id = NULL WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET wechatpay_public_key_id = 'PUB_KEY_ID_x', wechatpay_public_key = :'pubkey' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET wechatpay_public_key_id = :'pubkey_id', wechatpay_public_key = 'garbage' WHERE name = 'c';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_config SET wechatpay_public_key_id = NULL, wechatpay_public_key = NULL WHERE name = 'c';

-- certificate mode: an expired certificate alone is no key
INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate)
VALUES ('c', :'expired_serial', :'expired');
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
-- a certificate under another serial is refused
INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate)
VALUES ('c', 'ABCDEF', :'cert');
SELECT regexp_replace(regress_error($$SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c')$$),
                      '"[0-9A-F]{16,}"', '"SERIAL"');
UPDATE wxpay_platform_certificate SET serial_no = :'cert_serial' WHERE serial_no = 'ABCDEF';
-- expire_time in the row bounds the certificate too
UPDATE wxpay_platform_certificate SET expire_time = now() - interval '1 day'
WHERE serial_no = :'cert_serial';
SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c');
UPDATE wxpay_platform_certificate SET expire_time = NULL WHERE serial_no = :'cert_serial';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('cfg-1', 'r', 'c')$$);

-- none of this reached the simulator
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;

--
-- Changes take effect on the next call, also inside one transaction
--
SELECT sign_state FROM wxpay_stop_sign_plan('cfg-2', 'r');
BEGIN;
UPDATE wxpay_config SET base_url = 'https://127.0.0.1:1' WHERE name = 'default';
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('cfg-3', 'r')$$);
ROLLBACK;
SELECT sign_state FROM wxpay_stop_sign_plan('cfg-3', 'r');

-- renaming a config follows into its certificates; deleting removes them
UPDATE wxpay_config SET name = 'c2' WHERE name = 'c';
SELECT config_name, count(*) FROM wxpay_platform_certificate GROUP BY 1 ORDER BY 1;
DELETE FROM wxpay_config WHERE name = 'c2';
SELECT config_name, count(*) FROM wxpay_platform_certificate GROUP BY 1 ORDER BY 1;
