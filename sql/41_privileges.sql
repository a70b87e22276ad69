--
-- Privileges: a non-owner can neither read nor change the secrets, by any
-- route; a role without EXECUTE cannot make any request
--

-- every function of the extension that PUBLIC may execute is one that
-- touches neither secrets nor the network
SELECT p.oid::regprocedure AS public_may_execute
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
WHERE d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'wxpay_signplan')
  AND d.classid = 'pg_proc'::regclass
  AND has_function_privilege('public', p.oid, 'EXECUTE')
ORDER BY 1::text;

-- the functions that read secrets all pin their search_path
SELECT p.oid::regprocedure AS definer_function, p.proconfig
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'wxpay_signplan')
  AND d.classid = 'pg_proc'::regclass AND p.prosecdef
ORDER BY 1::text;

-- nobody but the owner holds any privilege on the secret tables (counted,
-- not listed: the owner's set of privileges grows with new servers)
SELECT c.relname, c.relowner::regrole AS owner,
       (SELECT count(*) FROM aclexplode(c.relacl) a
        WHERE a.grantee <> c.relowner) AS grants_to_others
FROM pg_class c
WHERE c.relname IN ('wxpay_config', 'wxpay_platform_certificate')
ORDER BY 1;

CREATE ROLE regress_priv_app;
CREATE ROLE regress_priv_nobody;
GRANT EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text) TO regress_priv_app;

-- statistics would show column values; they are hidden from non-owners
ANALYZE wxpay_config;
SELECT count(*) > 0 AS owner_sees_stats FROM pg_stats WHERE tablename = 'wxpay_config';

SET ROLE regress_priv_app;
SELECT count(*) AS app_sees_stats FROM pg_stats WHERE tablename = 'wxpay_config';
SELECT count(*) AS app_sees_ext_stats FROM pg_stats_ext WHERE tablename = 'wxpay_config';

-- reading, by every route
SELECT private_key FROM wxpay_config;
SELECT apiv3_key FROM wxpay_config WHERE name = 'default';
SELECT certificate FROM wxpay_platform_certificate;
COPY wxpay_config (private_key) TO STDOUT;
SELECT * FROM pg_catalog.pg_read_file('base/' || pg_relation_filepath('wxpay_config'));
SELECT pg_catalog.lo_import('/etc/hostname');

-- changing, by every route
INSERT INTO wxpay_config (name, mchid, serial_no, private_key) VALUES ('mine', '1', 'AB', 'x');
UPDATE wxpay_config SET base_url = 'https://attacker.example.com';
DELETE FROM wxpay_config;
TRUNCATE wxpay_config;
INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate) VALUES ('default', 'AB', 'x');
ALTER TABLE wxpay_config DISABLE TRIGGER wxpay_config_check;
ALTER TABLE wxpay_config ENABLE ROW LEVEL SECURITY;
CREATE POLICY regress_p ON wxpay_config USING (true);
GRANT SELECT ON wxpay_config TO regress_priv_app;
ALTER FUNCTION wxpay_stop_sign_plan(text, text, text, text) SECURITY INVOKER;
ALTER FUNCTION wxpay_stop_sign_plan(text, text, text, text) RESET search_path;
CREATE OR REPLACE FUNCTION wxpay_stop_sign_plan(text, text, text, text) RETURNS wxpay_sign_plan
    LANGUAGE sql AS 'SELECT NULL::wxpay_sign_plan';
ALTER EXTENSION wxpay_signplan UPDATE;
DROP EXTENSION wxpay_signplan;
RESET ROLE;

-- the secret tables are unchanged and the stop function still the same
\getenv sim_url WXPAY_SIM_URL
SELECT name, base_url = :'sim_url' AS base_url_is_sim FROM wxpay_config ORDER BY name;
SELECT prosecdef, proconfig FROM pg_proc WHERE oid = 'wxpay_stop_sign_plan(text,text,text,text)'::regprocedure;

-- a role without EXECUTE cannot make any request, through any function
\set attempts_before `node test/sim/ctl.js requests`
SET ROLE regress_priv_nobody;
SELECT wxpay_stop_sign_plan('priv-1', 'no grant');
SELECT * FROM wxpay_stop_sign_plan('priv-1', 'no grant', 'certmode');
SELECT wxpay_query_sign_plan('priv-1');
SELECT wxpay_config_changed();
SELECT * FROM wxpay_stop_sign_plans(ARRAY['priv-1'], 'no grant');
SELECT wxpay_stop_sign_plan_async('priv-1', 'no grant');
SELECT wxpay_wait_stop_request(1);
SELECT wxpay_purge_stop_requests('0s');
SELECT * FROM wxpay_refresh_platform_certificates('certmode');
SELECT * FROM wxpay_check_config('default', true);
SELECT * FROM wxpay_stop_request;
RESET ROLE;
\set attempts_after `node test/sim/ctl.js requests`
SELECT :attempts_after - :attempts_before AS requests_made;

REVOKE EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text) FROM regress_priv_app;
DROP ROLE regress_priv_app;
DROP ROLE regress_priv_nobody;

-- issue 18: every function of the extension written in SQL or PL/pgSQL
-- pins its search_path, so its unqualified names resolve in pg_catalog
-- whoever calls it (none listed)
SELECT p.oid::regprocedure AS unpinned_function
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
JOIN pg_language l ON l.oid = p.prolang
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'wxpay_signplan')
  AND d.classid = 'pg_proc'::regclass AND l.lanname <> 'c'
  AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
ORDER BY 1::text;

-- issue 18, item 6: the queue records who queued each request; the row
-- type wxpay_wait_stop_request returns carries it
SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull
FROM pg_attribute
WHERE attrelid = 'wxpay_stop_request'::regclass AND attname = 'enqueued_by';
