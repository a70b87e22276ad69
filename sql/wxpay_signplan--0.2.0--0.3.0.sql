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

-- ===== 0.3.0: statistics (issue 14) =====

-- the queue helper adds the same column (issue 10); one copy survives the merge
ALTER TABLE @extschema@.wxpay_stop_request
    ADD COLUMN outcome_unknown boolean NOT NULL DEFAULT false;

--
-- Cumulative statistics of every call to WeChat Pay, one row per (config,
-- operation, source), kept in shared memory since the server started or
-- wxpay_stat_reset() ran.  Needs the library in shared_preload_libraries;
-- without it the function raises 55000.  Names, counters and times only.
--
CREATE FUNCTION @extschema@.wxpay_stat(
    OUT config_name text,
    OUT operation text,
    OUT source text,
    OUT calls bigint,
    OUT succeeded bigint,
    OUT rejected bigint,
    OUT unknown bigint,
    OUT not_sent bigint,
    OUT errors bigint,
    OUT failovers bigint,
    OUT timed_calls bigint,
    OUT total_time_ms double precision,
    OUT mean_time_ms double precision,
    OUT min_time_ms double precision,
    OUT max_time_ms double precision,
    OUT p50_time_ms double precision,
    OUT p95_time_ms double precision,
    OUT p99_time_ms double precision,
    OUT last_error_at timestamptz,
    OUT last_error text,
    OUT dropped bigint,
    OUT stats_reset timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'wxpay_stat'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

REVOKE ALL ON FUNCTION @extschema@.wxpay_stat() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.wxpay_stat() TO pg_monitor;

CREATE VIEW @extschema@.wxpay_stat AS
    SELECT * FROM @extschema@.wxpay_stat();

COMMENT ON VIEW @extschema@.wxpay_stat IS
    'Cumulative statistics of wxpay_signplan calls per config, operation and source';

REVOKE ALL ON TABLE @extschema@.wxpay_stat FROM PUBLIC;
GRANT SELECT ON TABLE @extschema@.wxpay_stat TO pg_monitor;

--
-- Forget all statistics; returns the new stats_reset.
--
CREATE FUNCTION @extschema@.wxpay_stat_reset()
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'wxpay_stat_reset'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION @extschema@.wxpay_stat_reset() FROM PUBLIC;

--
-- The queue at a glance, one row per config (every configured one, and any
-- other name with unfinished requests): what waits, what is in flight, how
-- late the oldest due request is, the worker's last failure for that config
-- and what the worker process is doing.  Reads only the unfinished rows
-- (the partial index) and the last hour's finished ones.
--
CREATE VIEW @extschema@.wxpay_queue_status AS
WITH pending AS (
    SELECT r.config_name,
           pg_catalog.count(*) FILTER (WHERE r.state = 'queued') AS queued,
           pg_catalog.count(*) FILTER (WHERE r.state = 'queued' AND r.attempts > 0) AS retrying,
           pg_catalog.count(*) FILTER (WHERE r.state = 'sending') AS in_flight,
           pg_catalog.count(*) FILTER (WHERE r.outcome_unknown) AS outcome_unknown,
           pg_catalog.count(*) FILTER (WHERE r.state = 'queued'
                                       AND r.next_attempt_at <= pg_catalog.now()) AS due,
           pg_catalog.min(r.next_attempt_at) FILTER (WHERE r.state = 'queued'
                                       AND r.next_attempt_at <= pg_catalog.now()) AS oldest_due_at,
           pg_catalog.min(r.next_attempt_at) FILTER (WHERE r.state = 'queued') AS next_attempt_at
      FROM @extschema@.wxpay_stop_request r
     WHERE r.state = ANY (ARRAY['queued', 'sending']::text[])
     GROUP BY r.config_name),
finished AS (
    SELECT r.config_name,
           pg_catalog.count(*) FILTER (WHERE r.state = 'succeeded') AS succeeded_last_hour,
           pg_catalog.count(*) FILTER (WHERE r.state = 'failed') AS failed_last_hour
      FROM @extschema@.wxpay_stop_request r
     WHERE r.finished_at > pg_catalog.now() - '1 hour'::interval
     GROUP BY r.config_name),
names AS (
    SELECT c.name AS config_name FROM @extschema@.wxpay_config c
    UNION
    SELECT p.config_name FROM pending p),
errors AS (
    SELECT DISTINCT ON (s.config_name) s.config_name, s.last_error_at, s.last_error
      FROM @extschema@.wxpay_stat() s
     WHERE s.source = 'worker' AND s.last_error_at IS NOT NULL
     ORDER BY s.config_name, s.last_error_at DESC),
worker AS (
    SELECT a.pid, a.state, a.query, a.state_change, a.backend_start
      FROM pg_catalog.pg_stat_activity a
     WHERE a.backend_type = 'wxpay_signplan worker'
       AND a.datname = pg_catalog.current_database()
     ORDER BY a.backend_start DESC
     LIMIT 1)
SELECT n.config_name,
       COALESCE(p.queued, 0) AS queued,
       COALESCE(p.retrying, 0) AS retrying,
       COALESCE(p.in_flight, 0) AS in_flight,
       COALESCE(p.outcome_unknown, 0) AS outcome_unknown,
       COALESCE(p.due, 0) AS due,
       COALESCE(f.succeeded_last_hour, 0) AS succeeded_last_hour,
       COALESCE(f.failed_last_hour, 0) AS failed_last_hour,
       p.oldest_due_at,
       pg_catalog.now() - p.oldest_due_at AS oldest_due_age,
       p.next_attempt_at,
       e.last_error,
       e.last_error_at,
       w.pid AS worker_pid,
       w.state AS worker_state,
       w.query AS worker_activity,
       w.state_change AS worker_state_since,
       w.backend_start AS worker_started_at
  FROM names n
  LEFT JOIN pending p ON p.config_name = n.config_name
  LEFT JOIN finished f ON f.config_name = n.config_name
  LEFT JOIN errors e ON e.config_name = n.config_name
  LEFT JOIN worker w ON true;

COMMENT ON VIEW @extschema@.wxpay_queue_status IS
    'The stop request queue and its worker, one row per config';

REVOKE ALL ON TABLE @extschema@.wxpay_queue_status FROM PUBLIC;
GRANT SELECT ON TABLE @extschema@.wxpay_queue_status TO pg_monitor;
