/* wxpay_signplan--0.2.0--0.3.0.sql: upgrade from 0.2.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.3.0'" to load this file. \quit

-- ===== 0.3.0: partner mode (issue 12) =====
--
-- Answers about a sub-merchant's plan carry three more fields.  Values
-- stored before (wxpay_stop_request.result) read the new ones as NULL.
--
ALTER TYPE @extschema@.wxpay_sign_plan
    ADD ATTRIBUTE sub_openid text,
    ADD ATTRIBUTE sub_mchid text,
    ADD ATTRIBUTE sub_appid text;

-- queued rows keep everything; they are direct-merchant requests (NULL)
ALTER TABLE @extschema@.wxpay_stop_request ADD COLUMN sub_mchid text;

--
-- Four functions gain a last parameter, which makes each a new function.
-- The new one is created beside the old one, receives every EXECUTE grant
-- the old one had (from the same grantor, with the same grant option), and
-- the old one is dropped.  The grants are the users' own: they are left out
-- of pg_init_privs, as after a fresh install, so that pg_dump keeps dumping
-- them.
--
CREATE FUNCTION @extschema@.wxpay_upgrade_carry_grants(old regprocedure, new regprocedure)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_owner oid;
    new_owner oid;
    init aclitem[];
    g record;
    progress boolean;
    missing integer;
BEGIN
    SELECT proowner INTO old_owner FROM pg_proc WHERE oid = old;
    SELECT proowner INTO new_owner FROM pg_proc WHERE oid = new;
    SELECT initprivs INTO init FROM pg_init_privs
     WHERE objoid = new AND classoid = 'pg_catalog.pg_proc'::regclass AND objsubid = 0;

    -- a grantor must hold its grant option before it grants: repeat until
    -- every grant is there (each pass adds at least one, or none is left)
    LOOP
        progress := false;
        missing := 0;
        FOR g IN
            SELECT o.grantor, o.grantee, o.is_grantable
              FROM aclexplode((SELECT proacl FROM pg_proc WHERE oid = old)) o
             WHERE o.privilege_type = 'EXECUTE'
               AND NOT (o.grantee = old_owner AND o.grantor = old_owner)
               AND NOT EXISTS (
                   SELECT 1 FROM aclexplode((SELECT proacl FROM pg_proc WHERE oid = new)) n
                    WHERE n.privilege_type = 'EXECUTE'
                      AND n.grantee = CASE WHEN o.grantee = old_owner THEN new_owner ELSE o.grantee END
                      AND n.grantor = CASE WHEN o.grantor = old_owner THEN new_owner ELSE o.grantor END
                      AND n.is_grantable >= o.is_grantable)
             ORDER BY (o.grantor = old_owner) DESC, o.grantor, o.grantee
        LOOP
            IF g.grantor <> old_owner
               AND NOT EXISTS (
                   SELECT 1 FROM aclexplode((SELECT proacl FROM pg_proc WHERE oid = new)) n
                    WHERE n.grantee = g.grantor AND n.is_grantable) THEN
                missing := missing + 1;
                CONTINUE;
            END IF;
            IF g.grantor <> old_owner THEN
                PERFORM set_config('role', (SELECT rolname FROM pg_roles WHERE oid = g.grantor), true);
            END IF;
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s%s', new,
                           CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                                WHEN g.grantee = old_owner THEN new_owner::regrole::text
                                ELSE g.grantee::regrole::text END,
                           CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            PERFORM set_config('role', 'none', true);
            progress := true;
        END LOOP;
        EXIT WHEN missing = 0;
        IF NOT progress THEN
            RAISE EXCEPTION 'could not carry the EXECUTE grants of % over to %', old, new
                USING DETAIL = 'A grantor no longer holds the grant option it granted with.';
        END IF;
    END LOOP;

    -- what a fresh install records as initial privileges, not the grants
    UPDATE pg_init_privs SET initprivs = init
     WHERE objoid = new AND classoid = 'pg_catalog.pg_proc'::regclass AND objsubid = 0;
    IF current_setting('server_version_num')::integer >= 170000 THEN
        -- since 17 the roles named in initial privileges are dependencies
        DELETE FROM pg_shdepend
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = 'pg_catalog.pg_proc'::regclass AND objid = new AND objsubid = 0
           AND deptype = 'i'
           AND refobjid NOT IN (SELECT grantee FROM aclexplode(init)
                                UNION SELECT grantor FROM aclexplode(init));
    END IF;
END
$$;

CREATE FUNCTION @extschema@.wxpay_stop_sign_plan(
    merchant_sign_plan_no text,
    stop_reason text,
    config_name text DEFAULT 'default',
    sub_mchid text DEFAULT NULL)
RETURNS @extschema@.wxpay_sign_plan
AS 'MODULE_PATHNAME', 'wxpay_stop_sign_plan'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_stop_sign_plan(text, text, text, text) FROM PUBLIC;

SELECT @extschema@.wxpay_upgrade_carry_grants(
    '@extschema@.wxpay_stop_sign_plan(text, text, text)',
    '@extschema@.wxpay_stop_sign_plan(text, text, text, text)');
DROP FUNCTION @extschema@.wxpay_stop_sign_plan(text, text, text);

CREATE FUNCTION @extschema@.wxpay_query_sign_plan(
    merchant_sign_plan_no text,
    config_name text DEFAULT 'default',
    sub_mchid text DEFAULT NULL)
RETURNS @extschema@.wxpay_sign_plan
AS 'MODULE_PATHNAME', 'wxpay_query_sign_plan'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_query_sign_plan(text, text, text) FROM PUBLIC;

SELECT @extschema@.wxpay_upgrade_carry_grants(
    '@extschema@.wxpay_query_sign_plan(text, text)',
    '@extschema@.wxpay_query_sign_plan(text, text, text)');
DROP FUNCTION @extschema@.wxpay_query_sign_plan(text, text);

CREATE FUNCTION @extschema@.wxpay_stop_sign_plans(
    merchant_sign_plan_nos text[],
    stop_reason text,
    config_name text DEFAULT 'default',
    sub_mchid text DEFAULT NULL)
RETURNS TABLE (
    merchant_sign_plan_no text,
    ok boolean,
    sqlstate text,
    error_code text,
    error_message text,
    request_id text,
    plan @extschema@.wxpay_sign_plan)
AS 'MODULE_PATHNAME', 'wxpay_stop_sign_plans'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE ROWS 100
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_stop_sign_plans(text[], text, text, text) FROM PUBLIC;

SELECT @extschema@.wxpay_upgrade_carry_grants(
    '@extschema@.wxpay_stop_sign_plans(text[], text, text)',
    '@extschema@.wxpay_stop_sign_plans(text[], text, text, text)');
DROP FUNCTION @extschema@.wxpay_stop_sign_plans(text[], text, text);

CREATE FUNCTION @extschema@.wxpay_stop_sign_plan_async(
    merchant_sign_plan_no text,
    stop_reason text,
    config_name text DEFAULT 'default',
    sub_mchid text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'wxpay_stop_sign_plan_async'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_stop_sign_plan_async(text, text, text, text) FROM PUBLIC;

SELECT @extschema@.wxpay_upgrade_carry_grants(
    '@extschema@.wxpay_stop_sign_plan_async(text, text, text)',
    '@extschema@.wxpay_stop_sign_plan_async(text, text, text, text)');
DROP FUNCTION @extschema@.wxpay_stop_sign_plan_async(text, text, text);

DROP FUNCTION @extschema@.wxpay_upgrade_carry_grants(regprocedure, regprocedure);
