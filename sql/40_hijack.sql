--
-- search_path hijacking: objects named like the extension's, or like the
-- built-ins its code and scripts use, placed in a schema searched before
-- pg_catalog, change nothing the extension does
--
CREATE ROLE regress_hijack_app;
GRANT EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text) TO regress_hijack_app;
GRANT EXECUTE ON FUNCTION wxpay_query_sign_plan(text, text, text) TO regress_hijack_app;
GRANT CREATE ON DATABASE contrib_regression TO regress_hijack_app;

-- errors as text, built without operators (the trap below replaces them)
CREATE FUNCTION regress_trapped_error(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN pg_catalog.format('%s: %s', st, msg);
END $$;

SET ROLE regress_hijack_app;
CREATE SCHEMA regress_trap;

-- look-alike tables, pointing elsewhere
CREATE TABLE regress_trap.wxpay_config (name text, mchid text, serial_no text,
    private_key text, wechatpay_public_key_id text, wechatpay_public_key text,
    apiv3_key text, base_url text, ca_cert text);
INSERT INTO regress_trap.wxpay_config (name, mchid, serial_no, private_key, base_url)
VALUES ('default', '1', 'AB', 'not a key', 'https://127.0.0.1:1'),
       ('trapconfig', '1', 'AB', 'not a key', 'https://127.0.0.1:1');
CREATE TABLE regress_trap.wxpay_platform_certificate (config_name text, serial_no text, certificate text,
    effective_time timestamptz, expire_time timestamptz);

-- look-alike type: the row type the functions return
CREATE TYPE regress_trap.wxpay_sign_plan AS (evil text);

-- look-alike functions: the extension's own names and built-ins
CREATE FUNCTION regress_trap.wxpay_config_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'trap: wxpay_config_changed'; END $$;
CREATE FUNCTION regress_trap.lower(text) RETURNS text
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'trap: lower'; END $$;
CREATE FUNCTION regress_trap.substr(text, integer, integer) RETURNS text
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'trap: substr'; END $$;
CREATE FUNCTION regress_trap.btrim(text) RETURNS text
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'trap: btrim'; END $$;
CREATE FUNCTION regress_trap.now() RETURNS timestamptz
    LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'trap: now'; END $$;

-- look-alike operators: text equality and concatenation that lie
CREATE FUNCTION regress_trap.text_eq(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR regress_trap.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_trap.text_eq);
CREATE OPERATOR regress_trap.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_trap.text_eq);
CREATE FUNCTION regress_trap.text_cat(text, text) RETURNS text
    LANGUAGE sql AS 'SELECT ''trap''';
CREATE OPERATOR regress_trap.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_trap.text_cat);

-- and the same in the session's temporary schema
CREATE TEMP TABLE wxpay_config (LIKE regress_trap.wxpay_config);
INSERT INTO pg_temp.wxpay_config (name, mchid, serial_no, private_key, base_url)
VALUES ('default', '1', 'AB', 'not a key', 'https://127.0.0.1:1');

-- the trap schema comes before pg_catalog: unqualified names in the
-- caller's SQL now resolve to it
SET search_path = regress_trap, pg_catalog, public;
SELECT 'a' = 'b' AS trap_equality_is_active;

-- calls through the extension's schema do exactly what they do without it
SELECT merchant_sign_plan_no, sign_state, cancel_sign_type
FROM public.wxpay_stop_sign_plan('hijack-1', 'search path trap');
SELECT merchant_sign_plan_no, sign_state
FROM public.wxpay_query_sign_plan('hijack-1');
SELECT public.regress_trapped_error($$SELECT public.wxpay_stop_sign_plan('hijack-1', 'again')$$);
SELECT public.regress_trapped_error($$SELECT public.wxpay_stop_sign_plan('hijack-2', 'x', 'trapconfig')$$);
RESET ROLE;
\! node test/sim/ctl.js stops hijack-1
\! node test/sim/ctl.js attempts hijack-1

-- the owner changing the config with the trap on the path: the config
-- triggers (checks and cache invalidation) still run the extension's code
UPDATE public.wxpay_config SET base_url = base_url WHERE name = 'default';
SELECT public.regress_trapped_error($$INSERT INTO public.wxpay_config (name, mchid, serial_no, private_key, base_url)
VALUES ('trapped', '1', 'AB', 'x', 'http://insecure.example.com')$$);
SELECT merchant_sign_plan_no, sign_state
FROM public.wxpay_stop_sign_plan('hijack-3', 'after the owner''s update');
RESET search_path;

\set VERBOSITY terse
DROP SCHEMA regress_trap CASCADE;
\set VERBOSITY default
DISCARD TEMP;
REVOKE CREATE ON DATABASE contrib_regression FROM regress_hijack_app;
REVOKE EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text) FROM regress_hijack_app;
REVOKE EXECUTE ON FUNCTION wxpay_query_sign_plan(text, text, text) FROM regress_hijack_app;
DROP ROLE regress_hijack_app;
DROP FUNCTION regress_trapped_error(text);
