--
-- The backup domain: wxpay_config.backup_base_url
--
\getenv sim_url WXPAY_SIM_URL
\set key `cat "$WXPAY_PKI/merchant.key"`

-- the column, its default (WeChat Pay's backup domain) and its check
SELECT column_name, column_default, is_nullable
FROM information_schema.columns
WHERE table_name = 'wxpay_config' AND column_name IN ('base_url', 'backup_base_url')
ORDER BY column_name;
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = 'wxpay_config'::regclass AND contype = 'c' ORDER BY conname;

-- https only, and a rejected row is never echoed (it holds a key)
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, backup_base_url)
VALUES ('plainbackup', '1', 'AB', 'SECRET KEY TEXT', 'http://api2.mch.weixin.qq.com');
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, backup_base_url)
VALUES ('ftpbackup', '1', 'AB', 'SECRET KEY TEXT', 'ftp://api2.mch.weixin.qq.com');
UPDATE wxpay_config SET backup_base_url = 'http://127.0.0.1:1' WHERE name = 'default';

-- without the column a config on WeChat Pay's main domain gets the real
-- backup domain, and any other (a sandbox, a simulator) none: a test config
-- never fails over to the real platform
INSERT INTO wxpay_config (name, mchid, serial_no, private_key)
VALUES ('defaults', '1900000001', 'AB', 'SECRET KEY TEXT');
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, base_url) VALUES
    ('d_main_slash', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://API.mch.weixin.qq.com/'),
    ('d_main_port', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://api.mch.weixin.qq.com:443'),
    ('d_backup', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://api2.mch.weixin.qq.com'),
    ('d_sandbox', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://sandbox.example.com'),
    ('d_lookalike', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://api.mch.weixin.qq.com.example.com'),
    ('d_sim', '1900000001', 'AB', 'SECRET KEY TEXT', :'sim_url');
-- an explicit NULL is no failover, even beside the main domain; an explicit
-- URL is kept, and 'default' (or DEFAULT) asks for the default
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, base_url, backup_base_url) VALUES
    ('d_null', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://api.mch.weixin.qq.com', NULL),
    ('d_own', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://sandbox.example.com', 'https://sandbox2.example.com'),
    ('d_word', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://api.mch.weixin.qq.com', 'default'),
    ('d_kw', '1900000001', 'AB', 'SECRET KEY TEXT', 'https://sandbox.example.com', DEFAULT);
SELECT name, backup_base_url FROM wxpay_config
WHERE name = 'defaults' OR name LIKE 'd\_%' ORDER BY name;
-- an UPDATE keeps the backup unless it sets DEFAULT, which follows base_url
UPDATE wxpay_config SET base_url = 'https://sandbox.example.com' WHERE name = 'defaults';
SELECT name, backup_base_url FROM wxpay_config WHERE name = 'defaults';
UPDATE wxpay_config SET backup_base_url = DEFAULT WHERE name = 'defaults';
SELECT name, backup_base_url FROM wxpay_config WHERE name = 'defaults';
UPDATE wxpay_config SET base_url = DEFAULT, backup_base_url = DEFAULT WHERE name = 'defaults';
SELECT name, base_url, backup_base_url FROM wxpay_config WHERE name = 'defaults';
DELETE FROM wxpay_config WHERE name = 'defaults' OR name LIKE 'd\_%';

-- a copy of the default config whose primary refuses connections
INSERT INTO wxpay_config (name, mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, ca_cert, backup_base_url)
SELECT 'fo', mchid, serial_no, private_key, wechatpay_public_key_id,
       wechatpay_public_key, 'https://127.0.0.1:1', ca_cert, NULL
FROM wxpay_config WHERE name = 'default';

-- NULL: no failover, nothing sent
SELECT regress_sqlstate($$SELECT wxpay_stop_sign_plan('t30-1', 'r', 'fo')$$);

-- the backup (here the simulator) gets the same signed request
UPDATE wxpay_config SET backup_base_url = :'sim_url' WHERE name = 'fo';
SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('t30-1', 'r', 'fo');
\! node test/sim/ctl.js stops t30-1
SELECT merchant_sign_plan_no, cancel_sign_type FROM wxpay_query_sign_plan('t30-1', 'fo');
-- a trailing slash is fine, as for base_url
UPDATE wxpay_config SET backup_base_url = :'sim_url' || '/' WHERE name = 'fo';
SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('t30-2', 'r', 'fo');

-- the backup's answer is verified like any other
\! node test/sim/ctl.js fault t30-3 bad_signature
SELECT regexp_replace(regress_error($$SELECT wxpay_stop_sign_plan('t30-3', 'r', 'fo')$$),
                      '127\.0\.0\.1:\d{2,}', 'SIMULATOR');
-- and its rejections are rejections
SELECT regexp_replace(regress_error($$SELECT wxpay_stop_sign_plan('t30-1', 'r', 'fo')$$),
                      '127\.0\.0\.1:\d{2,}', 'SIMULATOR');

-- validated like base_url when the config is loaded: WX001, nothing sent
\set before `node test/sim/ctl.js requests`
UPDATE wxpay_config SET backup_base_url = 'https://127.0.0.1:1/v3' WHERE name = 'fo';
SELECT wxpay_stop_sign_plan('t30-4', 'r', 'fo');
UPDATE wxpay_config SET backup_base_url = 'https://user:pw@127.0.0.1:1' WHERE name = 'fo';
SELECT wxpay_stop_sign_plan('t30-4', 'r', 'fo');
UPDATE wxpay_config SET backup_base_url = 'https://127.0.0.1:1?x=1' WHERE name = 'fo';
SELECT wxpay_stop_sign_plan('t30-4', 'r', 'fo');
UPDATE wxpay_config SET backup_base_url = 'https://' WHERE name = 'fo';
SELECT wxpay_stop_sign_plan('t30-4', 'r', 'fo');
\set after `node test/sim/ctl.js requests`
SELECT :after - :before AS requests_sent;

-- wxpay_check_config judges backup_base_url with the same parser, and its
-- live request says where it went
UPDATE wxpay_config SET backup_base_url = :'sim_url' WHERE name = 'fo';
SELECT check_name, ok,
       regexp_replace(regexp_replace(detail, '127\.0\.0\.1:\d{2,}', 'SIMULATOR', 'g'),
                      'wxpay-check-[0-9A-Za-z]+|Request-ID: \S+', 'X', 'g') AS detail
FROM wxpay_check_config('fo', true)
WHERE check_name IN ('base_url', 'backup_base_url', 'live_request');
-- a path in backup_base_url fails the check, and live => true returns rows
UPDATE wxpay_config SET backup_base_url = 'https://api2.mch.weixin.qq.com/v3' WHERE name = 'fo';
SELECT check_name, ok, detail FROM wxpay_check_config('fo', true)
WHERE ok IS DISTINCT FROM true;

-- a sub-merchant's stop and query (partner mode) fail over the same way,
-- the signed path and query string unchanged
UPDATE wxpay_config SET backup_base_url = :'sim_url' WHERE name = 'fo';
SELECT merchant_sign_plan_no, sign_state, sub_mchid
FROM wxpay_stop_sign_plan('t30-5', 'r', 'fo', '1230000130');
\! node test/sim/ctl.js last
\! node test/sim/ctl.js stops 1230000130:t30-5
SELECT merchant_sign_plan_no, cancel_sign_type, sub_mchid
FROM wxpay_query_sign_plan('t30-5', 'fo', '1230000130');
\! node test/sim/ctl.js last
SELECT merchant_sign_plan_no, ok, (plan).sub_mchid
FROM wxpay_stop_sign_plans(ARRAY['t30-6'], 'r', 'fo', '1230000130');

DELETE FROM wxpay_config WHERE name = 'fo';
