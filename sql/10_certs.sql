--
-- Platform certificates: download, decrypt, verify, store
--
\set serial `cat "$WXPAY_PKI/merchant_serial.txt"`
\set key `cat "$WXPAY_PKI/merchant.key"`
\set apiv3 `cat "$WXPAY_PKI/apiv3_key.txt"`
\set ca `cat "$WXPAY_PKI/ca.crt"`
\set cert `cat "$WXPAY_PKI/platform_cert.crt"`
\set cert_serial `cat "$WXPAY_PKI/platform_cert_serial.txt"`
\set expired `cat "$WXPAY_PKI/platform_cert_expired.crt"`
\set expired_serial `cat "$WXPAY_PKI/platform_cert_expired_serial.txt"`
\getenv sim_url WXPAY_SIM_URL

-- errors with the Request-ID (it counts requests) and random serials masked
CREATE FUNCTION regress_cert_error(q text) RETURNS text LANGUAGE sql AS $$
    SELECT regexp_replace(regexp_replace(regress_error(q),
        'Request-ID: [0-9a-f]+-[0-9]+', 'Request-ID: X'),
        '\m[0-9A-F]{32,}\M', 'SERIAL', 'g')
$$;

-- a certificate-mode merchant with an APIv3 key and no certificate yet
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, apiv3_key, base_url, ca_cert)
VALUES ('certs', '1900000002', :'serial', :'key', :'apiv3', :'sim_url', :'ca');

-- it cannot stop plans yet
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('certs-1', 'r', 'certs')$$);

-- the first refresh trusts the certificate that signed the answer it came in
\set before `node test/sim/ctl.js requests`
SELECT serial_no = :'cert_serial' AS is_platform_cert, is_new,
       effective_time < now() AS effective, expire_time > now() + interval '4 years' AS expires_later
FROM wxpay_refresh_platform_certificates('certs');
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;
SELECT serial_no = :'cert_serial' AS is_platform_cert, rtrim(certificate, E'\n') = :'cert' AS same_pem,
       effective_time IS NOT NULL AND expire_time IS NOT NULL AS times_stored
FROM wxpay_platform_certificate WHERE config_name = 'certs';
-- and now stops work, verified with it
SELECT sign_state FROM wxpay_stop_sign_plan('certs-1', 'r', 'certs');

-- the worker's refresh interval: a server-wide setting (reload), 0 = off
SHOW wxpay.certificate_refresh_interval;
SET wxpay.certificate_refresh_interval = '1h';
SELECT setting, unit, context, min_val FROM pg_settings
WHERE name = 'wxpay.certificate_refresh_interval';

-- again: nothing new
SELECT serial_no = :'cert_serial' AS is_platform_cert, is_new
FROM wxpay_refresh_platform_certificates('certs');

-- a held certificate that expired is deleted; one still valid stays
INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate)
VALUES ('certs', :'expired_serial', :'expired');
SELECT count(*) FROM wxpay_platform_certificate WHERE config_name = 'certs';
SELECT serial_no = :'cert_serial' AS is_platform_cert, is_new
FROM wxpay_refresh_platform_certificates('certs');
SELECT serial_no = :'cert_serial' AS is_platform_cert
FROM wxpay_platform_certificate WHERE config_name = 'certs';

-- a serial typed in lower case by hand is replaced, not duplicated
UPDATE wxpay_platform_certificate SET serial_no = lower(serial_no), expire_time = NULL
WHERE config_name = 'certs';
SELECT is_new FROM wxpay_refresh_platform_certificates('certs');
SELECT serial_no = :'cert_serial' AS upper_case, expire_time IS NOT NULL AS has_expire_time
FROM wxpay_platform_certificate WHERE config_name = 'certs';

--
-- Failures change nothing: the certificates held stay
--
CREATE TABLE regress_held AS
SELECT serial_no, certificate, effective_time, expire_time
FROM wxpay_platform_certificate WHERE config_name = 'certs';

-- tampered ciphertext or tag
\! node test/sim/ctl.js fault certificates tampered_ciphertext
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
\! node test/sim/ctl.js fault certificates tampered_tag
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);

-- a wrong APIv3 key looks the same
UPDATE wxpay_config SET apiv3_key = reverse(apiv3_key) WHERE name = 'certs';
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
UPDATE wxpay_config SET apiv3_key = :'apiv3' WHERE name = 'certs';

-- answers whose signature does not hold
\! node test/sim/ctl.js fault certificates bad_signature
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
\! node test/sim/ctl.js fault certificates probe
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
\! node test/sim/ctl.js fault certificates missing_signature
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
\! node test/sim/ctl.js fault certificates unknown_serial
SELECT regexp_replace(regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$),
                      'serial "[0-9A-Za-z_]+"', 'serial "X"');
\! node test/sim/ctl.js fault certificates stale_timestamp
SELECT regexp_replace(regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$),
                      'is [0-9]+ seconds', 'is N seconds');

-- answers that cannot be read
\! node test/sim/ctl.js fault certificates wrong_types
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
\! node test/sim/ctl.js fault certificates json_array
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
\! node test/sim/ctl.js fault certificates empty_200
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);

-- errors from the platform
\! node test/sim/ctl.js fault certificates http500
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);
\! node test/sim/ctl.js fault certificates http502_html
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates('certs')$$);

-- the table is as it was
SELECT count(*) AS changed FROM (
    (SELECT serial_no, certificate, effective_time, expire_time
     FROM wxpay_platform_certificate WHERE config_name = 'certs'
     EXCEPT SELECT * FROM regress_held)
    UNION ALL
    (SELECT * FROM regress_held
     EXCEPT SELECT serial_no, certificate, effective_time, expire_time
     FROM wxpay_platform_certificate WHERE config_name = 'certs')) d;
DROP TABLE regress_held;

--
-- Configs that cannot download certificates, found before sending
--
\set before `node test/sim/ctl.js requests`
-- public-key mode
SELECT * FROM wxpay_refresh_platform_certificates();
-- certificate mode without an APIv3 key
SELECT * FROM wxpay_refresh_platform_certificates('certmode');
-- an APIv3 key of the wrong length; surrounding white space is ignored
UPDATE wxpay_config SET apiv3_key = left(:'apiv3', 31) WHERE name = 'certs';
SELECT * FROM wxpay_refresh_platform_certificates('certs');
SELECT * FROM wxpay_refresh_platform_certificates(NULL);
SELECT * FROM wxpay_refresh_platform_certificates('nosuch');
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;
UPDATE wxpay_config SET apiv3_key = E' ' || :'apiv3' || E'\n' WHERE name = 'certs';
SELECT is_new FROM wxpay_refresh_platform_certificates('certs');

-- a public-key merchant with an APIv3 key asks anyway: WeChat Pay says no
UPDATE wxpay_config SET apiv3_key = :'apiv3' WHERE name = 'default';
SELECT regress_cert_error($$SELECT * FROM wxpay_refresh_platform_certificates()$$);
UPDATE wxpay_config SET apiv3_key = NULL WHERE name = 'default';

-- only granted roles may refresh
CREATE ROLE regress_certs_app;
SET ROLE regress_certs_app;
SELECT * FROM wxpay_refresh_platform_certificates('certs');
RESET ROLE;
DROP ROLE regress_certs_app;
