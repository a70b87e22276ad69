/* wxpay_signplan--0.4.0.sql: the whole extension at 0.4.0 (CREATE EXTENSION) */

\echo Use "CREATE EXTENSION wxpay_signplan" to load this file. \quit

--
-- Merchant accounts.  Holds the merchant API private key: nobody but the
-- extension owner (a superuser) may read it.  The stop function reads it as
-- its owner (SECURITY DEFINER) and never returns or prints it.
--
CREATE TABLE @extschema@.wxpay_config (
    name text PRIMARY KEY DEFAULT 'default',
    mchid text NOT NULL,
    serial_no text NOT NULL,
    private_key text NOT NULL,
    wechatpay_public_key_id text,
    wechatpay_public_key text,
    apiv3_key text,
    base_url text NOT NULL DEFAULT 'https://api.mch.weixin.qq.com',
    ca_cert text,
    -- WeChat Pay's backup domain.  When connecting to base_url fails before
    -- any request byte was sent, the same signed request goes here (the
    -- signature covers the path, not the host).  NULL disables failover.
    -- 'default' (the column's default) is replaced by the row trigger:
    -- WeChat Pay's backup domain beside its main domain, else NULL.
    backup_base_url text DEFAULT 'default',
    CONSTRAINT wxpay_config_base_url_https
        CHECK (pg_catalog.lower(pg_catalog.substr(base_url, 1, 8)) OPERATOR(pg_catalog.=) 'https://'),
    CONSTRAINT wxpay_config_backup_base_url_https
        CHECK (backup_base_url IS NULL OR
               pg_catalog.lower(pg_catalog.substr(backup_base_url, 1, 8)) OPERATOR(pg_catalog.=) 'https://')
);

COMMENT ON TABLE @extschema@.wxpay_config IS
    'WeChat Pay merchant accounts used by wxpay_signplan; holds secrets, readable by its owner only';

COMMENT ON COLUMN @extschema@.wxpay_config.backup_base_url IS
    'where a request goes when connecting to base_url fails before anything was sent; NULL: no failover; omitted or ''default'': https://api2.mch.weixin.qq.com when base_url is https://api.mch.weixin.qq.com, else NULL';

--
-- WeChat Pay platform certificates (platform-certificate mode).  Several may
-- coexist while WeChat Pay rotates them.
--
CREATE TABLE @extschema@.wxpay_platform_certificate (
    config_name text NOT NULL
        REFERENCES @extschema@.wxpay_config (name) ON UPDATE CASCADE ON DELETE CASCADE,
    serial_no text NOT NULL,
    certificate text NOT NULL,
    effective_time timestamptz,
    expire_time timestamptz,
    PRIMARY KEY (config_name, serial_no)
);

COMMENT ON TABLE @extschema@.wxpay_platform_certificate IS
    'WeChat Pay platform certificates that verify answers in platform-certificate mode';

REVOKE ALL ON TABLE @extschema@.wxpay_config FROM PUBLIC;
REVOKE ALL ON TABLE @extschema@.wxpay_platform_certificate FROM PUBLIC;

-- pg_dump keeps the rows of both tables (dumped by their owner only).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.wxpay_config', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.wxpay_platform_certificate', '');

--
-- PostgreSQL reports a NOT NULL or CHECK violation with the whole row in
-- its DETAIL ("Failing row contains ..."), which would put the private key
-- into the client's error and the server log.  This trigger runs before
-- those checks and rejects such rows with messages that quote no column.
--
CREATE FUNCTION @extschema@.wxpay_config_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.name IS NULL OR NEW.mchid IS NULL OR NEW.serial_no IS NULL
       OR NEW.private_key IS NULL OR NEW.base_url IS NULL THEN
        RAISE EXCEPTION 'wxpay_config columns name, mchid, serial_no, private_key and base_url must not be null'
            USING ERRCODE = 'not_null_violation';
    END IF;
    IF lower(substr(NEW.base_url, 1, 8)) <> 'https://' THEN
        RAISE EXCEPTION 'invalid base_url for wxpay configuration "%"', NEW.name
            USING ERRCODE = 'check_violation',
                  DETAIL = 'Only https:// URLs are accepted.';
    END IF;
    -- The column's default: WeChat Pay's backup domain only beside WeChat
    -- Pay's own main domain.  A sandbox, a proxy or a simulator gets no
    -- failover, so a test never reaches the real platform.
    IF NEW.backup_base_url = 'default' THEN
        IF rtrim(lower(NEW.base_url), '/') = ANY
           (ARRAY['https://api.mch.weixin.qq.com', 'https://api.mch.weixin.qq.com:443']) THEN
            NEW.backup_base_url := 'https://api2.mch.weixin.qq.com';
        ELSE
            NEW.backup_base_url := NULL;
        END IF;
    END IF;
    IF NEW.backup_base_url IS NOT NULL
       AND lower(substr(NEW.backup_base_url, 1, 8)) <> 'https://' THEN
        RAISE EXCEPTION 'invalid backup_base_url for wxpay configuration "%"', NEW.name
            USING ERRCODE = 'check_violation',
                  DETAIL = 'Only https:// URLs are accepted.';
    END IF;
    RETURN NEW;
END
$$;

REVOKE ALL ON FUNCTION @extschema@.wxpay_config_check() FROM PUBLIC;

CREATE TRIGGER wxpay_config_check
    BEFORE INSERT OR UPDATE ON @extschema@.wxpay_config
    FOR EACH ROW EXECUTE FUNCTION @extschema@.wxpay_config_check();

--
-- Every backend caches parsed keys.  Any change to the two tables sends a
-- relcache invalidation for the table, which tells every backend to reload.
--
CREATE FUNCTION @extschema@.wxpay_config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'wxpay_config_changed'
LANGUAGE C;

REVOKE ALL ON FUNCTION @extschema@.wxpay_config_changed() FROM PUBLIC;

CREATE TRIGGER wxpay_config_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.wxpay_config
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.wxpay_config_changed();

CREATE TRIGGER wxpay_config_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.wxpay_platform_certificate
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.wxpay_config_changed();

--
-- Typed answers, fields in the API's order and with its names.
--
CREATE TYPE @extschema@.wxpay_sign_plan AS (
    sign_plan_id text,
    openid text,
    service_id text,
    mchid text,
    appid text,
    merchant_sign_plan_no text,
    merchant_callback_url text,
    plan_id text,
    going_detail_no integer,
    sign_state text,
    cancel_sign_time timestamptz,
    cancel_sign_type text,
    cancel_reason text,
    plan_name text,
    plan_over_time timestamptz,
    total_origin_price bigint,
    deduction_quantity integer,
    total_actual_price bigint,
    signed_detail_list jsonb,
    sign_time timestamptz,
    -- ===== 0.3.0: partner mode (issue 12) =====
    -- a service provider's answers about a sub-merchant's plan; NULL for
    -- direct merchants
    sub_openid text,
    sub_mchid text,
    sub_appid text
);

CREATE TYPE @extschema@.wxpay_sign_plan_detail AS (
    plan_detail_no integer,
    original_price bigint,
    plan_discount_description text,
    actual_price bigint,
    plan_detail_state text,
    order_id text,
    merchant_plan_detail_no text,
    plan_detail_name text,
    actual_pay_price bigint,
    use_time timestamptz,
    complete_time timestamptz,
    cancel_time timestamptz
);

--
-- Stop a sign plan.  SECURITY DEFINER so that it can read the keys its
-- caller may not; the pinned search_path makes it immune to objects the
-- caller plants.  Not STRICT: a NULL argument is an error, not a silent NULL.
-- 0.3.0 (issue 12): sub_mchid, on this function, the query, the batch and
-- the async one, makes a service provider's call for that sub-merchant
-- (the partner endpoint, the config's keys); NULL: the config's own plan.
--
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

--
-- Query a sign plan: the signed, verified GET.  How to learn the truth
-- after an outcome-unknown error.  Same guarantees as the stop function.
--
CREATE FUNCTION @extschema@.wxpay_query_sign_plan(
    merchant_sign_plan_no text,
    config_name text DEFAULT 'default',
    sub_mchid text DEFAULT NULL)
RETURNS @extschema@.wxpay_sign_plan
AS 'MODULE_PATHNAME', 'wxpay_query_sign_plan'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_query_sign_plan(text, text, text) FROM PUBLIC;

--
-- Expand a plan's signed_detail_list into rows.  Pure functions of their
-- argument: no secrets, no network.
--
CREATE FUNCTION @extschema@.wxpay_sign_plan_details(signed_detail_list jsonb)
RETURNS SETOF @extschema@.wxpay_sign_plan_detail
AS 'MODULE_PATHNAME', 'wxpay_sign_plan_details'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.wxpay_sign_plan_details(plan @extschema@.wxpay_sign_plan)
RETURNS SETOF @extschema@.wxpay_sign_plan_detail
AS 'MODULE_PATHNAME', 'wxpay_sign_plan_details_plan'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;


--
-- Download the platform certificates (GET /v3/certificates), decrypt them
-- with apiv3_key, check the answer's signature and upsert them; expired
-- ones are deleted.  Returns what the config holds afterwards.  SECURITY
-- DEFINER: it reads the keys; it never returns or prints them.
--
CREATE FUNCTION @extschema@.wxpay_refresh_platform_certificates(
    config_name text DEFAULT 'default')
RETURNS TABLE (serial_no text, effective_time timestamptz,
               expire_time timestamptz, is_new boolean)
AS 'MODULE_PATHNAME', 'wxpay_refresh_platform_certificates'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_refresh_platform_certificates(text) FROM PUBLIC;

--
-- Check each piece of a config separately (works when the config is
-- broken); live => true adds one harmless signed request.  Details name
-- what is wrong and never quote a secret.
--
CREATE FUNCTION @extschema@.wxpay_check_config(
    config_name text DEFAULT 'default',
    live boolean DEFAULT false)
RETURNS TABLE (check_name text, ok boolean, detail text)
AS 'MODULE_PATHNAME', 'wxpay_check_config'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_check_config(text, boolean) FROM PUBLIC;



--
-- Stop many plans: one row per array element, in input order; a per-plan
-- failure is a row with ok = false, never an error.  Up to
-- wxpay.batch_concurrency requests in flight.  Not transactional.
--
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



--
-- The outbox.  A stop requested with wxpay_stop_sign_plan_async() is a row
-- here, inserted in the caller's transaction: it exists for the worker only
-- if and when that transaction commits.  WAL-logged like any table, so it
-- survives crashes and reaches standbys; pg_dump keeps its rows.  It holds
-- no secrets (no keys, no signatures).
--
CREATE SEQUENCE @extschema@.wxpay_stop_request_id_seq;

CREATE TABLE @extschema@.wxpay_stop_request (
    id bigint PRIMARY KEY
        DEFAULT pg_catalog.nextval('@extschema@.wxpay_stop_request_id_seq'::pg_catalog.regclass),
    config_name text NOT NULL,
    merchant_sign_plan_no text NOT NULL,
    stop_reason text NOT NULL,
    state text NOT NULL DEFAULT 'queued',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at timestamptz,
    http_status integer,
    error_code text,
    error_message text,
    request_id text,
    result @extschema@.wxpay_sign_plan,
    -- ===== 0.3.0: partner mode (issue 12) =====
    -- the sub-merchant a service provider stops the plan for; NULL: the
    -- config's own plan (direct merchant)
    sub_mchid text,
    -- ===== 0.3.0: the queue keeps its promise under every fault (issue 10) =====
    -- true from before a stop of this request leaves until a query or an
    -- answer settles it: the next attempt then queries before any stop
    outcome_unknown boolean NOT NULL DEFAULT false,
    -- ===== 0.4.0: who may wait for a request (issue 18) =====
    -- the role that queued it (the role its session acted as); it and its
    -- members may wait for it.  NULL (rows queued before 0.4.0): only
    -- roles that may read this table
    enqueued_by oid,
    -- ===== 0.4.0: failover (issue 18) =====
    -- the WAL timeline the enqueue or the last claim was written on; a row
    -- of another timeline (a promotion may have lost later commits) or of
    -- none is queried before any stop
    timeline integer,
    CONSTRAINT wxpay_stop_request_state
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending', 'succeeded', 'failed']::text[]))
);

ALTER SEQUENCE @extschema@.wxpay_stop_request_id_seq
    OWNED BY @extschema@.wxpay_stop_request.id;

COMMENT ON TABLE @extschema@.wxpay_stop_request IS
    'Stop requests queued by wxpay_stop_sign_plan_async and their outcomes, served by the wxpay_signplan worker';

-- The worker's scan: unfinished requests by due time.  Finished rows, the
-- bulk of the table, are not in this index.
CREATE INDEX wxpay_stop_request_due
    ON @extschema@.wxpay_stop_request (next_attempt_at, id)
    WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending']::text[]);

-- Requests in flight, by plan: the worker never has two stops of one plan
-- on the wire.  Holds only the few rows of the current batch.
CREATE INDEX wxpay_stop_request_sending
    ON @extschema@.wxpay_stop_request (config_name, merchant_sign_plan_no)
    WHERE state OPERATOR(pg_catalog.=) 'sending';

-- Purging by age.
CREATE INDEX wxpay_stop_request_finished
    ON @extschema@.wxpay_stop_request (finished_at)
    WHERE finished_at IS NOT NULL;

-- ===== 0.3.0: the queue keeps its promise under every fault (issue 10) =====
-- The worker claims each merchant's due requests in turn: one index range
-- per config, however long another config's backlog is.
CREATE INDEX wxpay_stop_request_due_config
    ON @extschema@.wxpay_stop_request (config_name, next_attempt_at, id)
    WHERE state OPERATOR(pg_catalog.=) 'queued';

REVOKE ALL ON TABLE @extschema@.wxpay_stop_request FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.wxpay_stop_request_id_seq FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.wxpay_stop_request', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.wxpay_stop_request_id_seq', '');

--
-- Enqueue a stop: checked like wxpay_stop_sign_plan(), sent by the worker
-- after commit.  SECURITY DEFINER: it checks the config (which its caller
-- may not read) and inserts into the protected queue.
--
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

--
-- Wait for a queued stop to finish; returns its row either way.  Only to a
-- role that may read wxpay_stop_request or has the privileges of the role
-- that queued it (enqueued_by); to anyone else the request does not exist.
--
CREATE FUNCTION @extschema@.wxpay_wait_stop_request(
    id bigint,
    timeout interval DEFAULT '30s')
RETURNS @extschema@.wxpay_stop_request
AS 'MODULE_PATHNAME', 'wxpay_wait_stop_request'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_wait_stop_request(bigint, interval) FROM PUBLIC;

--
-- Delete finished requests older than older_than; returns how many.
--
CREATE FUNCTION @extschema@.wxpay_purge_stop_requests(older_than interval DEFAULT '30 days')
RETURNS bigint
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH gone AS (
        DELETE FROM @extschema@.wxpay_stop_request
         WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['succeeded', 'failed']::text[])
           AND finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than)
        RETURNING 1)
    SELECT pg_catalog.count(*) FROM gone;
END;

REVOKE ALL ON FUNCTION @extschema@.wxpay_purge_stop_requests(interval) FROM PUBLIC;

-- ----- issue 18, drop guard -----
--
-- DROP EXTENSION (and DROP SCHEMA ... CASCADE of its schema, DROP OWNED BY
-- its owner) is refused while wxpay_stop_request holds queued requests or
-- requests in "sending": dropping would discard promised stops and stops
-- whose outcome is unknown.  It counts the protected queue as the
-- extension's owner, only for a user allowed to drop it (src/sql/dropguard.c).
--
CREATE FUNCTION @extschema@.wxpay_drop_guard()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'wxpay_drop_guard'
LANGUAGE C VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_drop_guard() FROM PUBLIC;

CREATE EVENT TRIGGER wxpay_signplan_drop_guard ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
    EXECUTE FUNCTION @extschema@.wxpay_drop_guard();

-- ===== 0.3.0: statistics (issue 14) =====

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
-- The queue's background processes across the cluster: the launcher, and
-- each database it keeps track of with its worker (pid, since when) or why
-- none runs, and when one is next due to start.  For monitoring roles.
--
CREATE FUNCTION @extschema@.wxpay_queue_workers(
    OUT datid oid, OUT datname name, OUT backend_type text, OUT pid integer,
    OUT state text, OUT started_at timestamptz, OUT next_start_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'wxpay_queue_workers'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION @extschema@.wxpay_queue_workers() IS
    'The launcher and every database''s queue worker, or why none runs';

REVOKE ALL ON FUNCTION @extschema@.wxpay_queue_workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.wxpay_queue_workers() TO pg_monitor;

--
-- The queue at a glance, one row per config (every configured one, and any
-- other name with unfinished requests): what waits, what is in flight, how
-- late the oldest due request is, the worker's last failure for that config,
-- what the worker process is doing, and (worker_status, from the launcher)
-- whether this database is served and, when no worker runs, why.  Reads only the unfinished rows
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
     LIMIT 1),
served AS (
    SELECT q.state, q.next_start_at
      FROM @extschema@.wxpay_queue_workers() q
     WHERE q.datid OPERATOR(pg_catalog.=)
           (SELECT d.oid FROM pg_catalog.pg_database d
             WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()))
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
       w.backend_start AS worker_started_at,
       s.state AS worker_status,
       s.next_start_at AS worker_next_start_at
  FROM names n
  LEFT JOIN pending p ON p.config_name = n.config_name
  LEFT JOIN finished f ON f.config_name = n.config_name
  LEFT JOIN errors e ON e.config_name = n.config_name
  LEFT JOIN worker w ON true
  LEFT JOIN served s ON true;

COMMENT ON VIEW @extschema@.wxpay_queue_status IS
    'The stop request queue and its worker, one row per config';

REVOKE ALL ON TABLE @extschema@.wxpay_queue_status FROM PUBLIC;
GRANT SELECT ON TABLE @extschema@.wxpay_queue_status TO pg_monitor;

--
-- Where the extension lives decides who can plant objects beside it.  A
-- role that is not a superuser and can create objects in this schema (its
-- owner, the database owner when pg_database_owner owns it, a role granted
-- CREATE, or PUBLIC) is untrusted under the extension's threat model
-- (doc/security.md "Where to install it"): warn now, while it is cheap to move.
--
DO $wxpay_schema_check$
DECLARE
    nsp pg_catalog.oid;
    nspname text;
    who text[];
BEGIN
    SELECT e.extnamespace, n.nspname INTO nsp, nspname
      FROM pg_catalog.pg_extension e
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
     WHERE e.extname OPERATOR(pg_catalog.=) 'wxpay_signplan';
    SELECT pg_catalog.array_agg(pg_catalog.quote_ident(r.rolname::pg_catalog.text) ORDER BY r.rolname)
      INTO who
      FROM pg_catalog.pg_roles r
     WHERE NOT r.rolsuper
       -- predefined roles log in as nobody: their members are listed
       -- (pg_database_owner's is the database's owner)
       AND r.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
       AND pg_catalog.has_schema_privilege(r.oid, nsp, 'CREATE');
    IF pg_catalog.has_schema_privilege('public', nsp, 'CREATE') THEN
        who := pg_catalog.array_prepend('PUBLIC', who);
    END IF;
    IF who IS NOT NULL THEN
        RAISE WARNING 'roles that are not superusers can create objects in schema "%" of wxpay_signplan',
                      nspname
            USING DETAIL = pg_catalog.format('Roles with CREATE on the schema: %s%s.',
                      pg_catalog.array_to_string(who[1:10], ', '),
                      CASE WHEN pg_catalog.cardinality(who) OPERATOR(pg_catalog.>) 10
                           THEN pg_catalog.format(' and %s more', pg_catalog.cardinality(who) OPERATOR(pg_catalog.-) 10)
                           ELSE '' END),
                  HINT = pg_catalog.format('Install wxpay_signplan in a schema owned by a superuser in which no other role has CREATE, e.g. CREATE SCHEMA wxpay AUTHORIZATION %I; CREATE EXTENSION wxpay_signplan SCHEMA wxpay;', current_user);
    END IF;
END
$wxpay_schema_check$;

-- ----- issue 22, notifications -----
-- WeChat Pay's notifications (callbacks), verified and decrypted in SQL.
-- wxpay_verify_notification() checks the headers, the timestamp, the
-- serial and the signature over the body's exact bytes, then decrypts the
-- resource with apiv3_key; it writes nothing.  wxpay_accept_notification()
-- stores a verified notification once per id in wxpay_notification (a
-- redelivery returns the stored row) and sends NOTIFY wxpay_notification.
-- Both are SECURITY DEFINER (they read the keys) and not for PUBLIC: grant
-- EXECUTE to the webhook's role.  Triggers on wxpay_notification run as the
-- extension's owner: only its owner creates them (doc/security.md).
CREATE TABLE @extschema@.wxpay_notification (
    id text PRIMARY KEY,
    config_name text NOT NULL,
    event_type text NOT NULL,
    resource_type text NOT NULL,
    create_time timestamptz NOT NULL,
    summary text,
    resource jsonb NOT NULL,
    -- for sign-plan events: the plan and, in partner mode, the sub-merchant
    merchant_sign_plan_no text,
    sub_mchid text,
    received_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX wxpay_notification_plan_idx
    ON @extschema@.wxpay_notification (config_name, merchant_sign_plan_no);
CREATE INDEX wxpay_notification_received_at_idx
    ON @extschema@.wxpay_notification (received_at);
REVOKE ALL ON TABLE @extschema@.wxpay_notification FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.wxpay_notification', '');

CREATE FUNCTION @extschema@.wxpay_verify_notification(
    headers jsonb, body text, config_name text DEFAULT 'default',
    OUT id text, OUT create_time timestamptz, OUT event_type text,
    OUT resource_type text, OUT summary text, OUT resource jsonb)
RETURNS record
AS 'MODULE_PATHNAME', 'wxpay_verify_notification'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_verify_notification(jsonb, text, text) FROM PUBLIC;

CREATE FUNCTION @extschema@.wxpay_accept_notification(
    headers jsonb, body text, config_name text DEFAULT 'default')
RETURNS @extschema@.wxpay_notification
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $wxpay_accept$
DECLARE
    n record;
    stored @extschema@.wxpay_notification;
BEGIN
    SELECT v.* INTO STRICT n
      FROM @extschema@.wxpay_verify_notification($1, $2, $3) v;
    -- race-safe: a concurrent delivery of the same id waits here, then
    -- inserts nothing and reads the row the other one stored
    INSERT INTO @extschema@.wxpay_notification AS t
           (id, config_name, event_type, resource_type, create_time, summary,
            resource, merchant_sign_plan_no, sub_mchid)
    VALUES (n.id, $3, n.event_type, n.resource_type, n.create_time, n.summary,
            n.resource,
            COALESCE(n.resource OPERATOR(pg_catalog.->>) 'merchant_sign_plan_no',
                     n.resource OPERATOR(pg_catalog.->>) 'out_plan_no'),
            n.resource OPERATOR(pg_catalog.->>) 'sub_mchid')
    ON CONFLICT ON CONSTRAINT wxpay_notification_pkey DO NOTHING
    RETURNING t.* INTO stored;
    IF stored.id IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('wxpay_notification', n.id);
        RETURN stored;
    END IF;
    SELECT t.* INTO STRICT stored
      FROM @extschema@.wxpay_notification t
     WHERE t.id OPERATOR(pg_catalog.=) n.id;
    RETURN stored;
END
$wxpay_accept$;

REVOKE ALL ON FUNCTION @extschema@.wxpay_accept_notification(jsonb, text, text) FROM PUBLIC;

-- The decrypted resource of a sign-plan event as the typed sign plan (the
-- conversion of a stop's answer).  Pure: no secrets, no network.
CREATE FUNCTION @extschema@.wxpay_sign_plan_from_json(resource jsonb)
RETURNS @extschema@.wxpay_sign_plan
AS 'MODULE_PATHNAME', 'wxpay_sign_plan_from_json'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
-- ----- issue 20, keys at rest -----
-- With wxpay.root_key_command set, private_key and apiv3_key are sealed
-- (AES-256-GCM under the root key, bound to the row's name and the column)
-- before the row is written: tables, WAL, dumps and replicas carry only
-- "wxsealed:v1:<root key fingerprint>:<Base64>".  Runs after
-- wxpay_config_check (BEFORE triggers fire in name order).  Without a root
-- key rows are stored as given.  doc/security.md, "Keys at rest".
CREATE FUNCTION @extschema@.wxpay_config_seal()
RETURNS trigger
AS 'MODULE_PATHNAME', 'wxpay_config_seal'
LANGUAGE C;

REVOKE ALL ON FUNCTION @extschema@.wxpay_config_seal() FROM PUBLIC;

CREATE TRIGGER wxpay_config_seal
    BEFORE INSERT OR UPDATE ON @extschema@.wxpay_config
    FOR EACH ROW EXECUTE FUNCTION @extschema@.wxpay_config_seal();

-- Seal every value still in plaintext and re-seal every value sealed under
-- wxpay.previous_root_key_command; returns how many values it wrote.  For
-- the extension's owner only.
CREATE FUNCTION @extschema@.wxpay_seal_config()
RETURNS integer
AS 'MODULE_PATHNAME', 'wxpay_seal_config'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_seal_config() FROM PUBLIC;
-- ----- issue 21, copies of a served database -----
-- The database whose queue this is.  CREATE DATABASE ... TEMPLATE, and a
-- dump restored elsewhere, copy unfinished stop requests that are another
-- database's to send: the worker serves this queue, and
-- wxpay_stop_sign_plan_async() adds to it, only while every row here names
-- the current database.  wxpay_adopt_stop_requests() makes a copy that
-- replaces the original the queue's home; each unfinished request is then
-- queried before anything is sent (doc/queue.md, "Copies of a database").
-- The install writes the row; a restored dump adds its own (the original's)
-- beside it, so a restore is held too until adopted.
CREATE TABLE @extschema@.wxpay_queue_home (
    database_oid oid NOT NULL
);
INSERT INTO @extschema@.wxpay_queue_home (database_oid)
    SELECT oid FROM pg_catalog.pg_database
     WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database();
SELECT pg_catalog.pg_extension_config_dump('@extschema@.wxpay_queue_home', '');
REVOKE ALL ON @extschema@.wxpay_queue_home FROM PUBLIC;

-- Make this database the home of the queue it holds: every unfinished
-- request is marked outcome unknown (the next attempt queries the plan
-- first); returns how many.  For the extension's owner only.
CREATE FUNCTION @extschema@.wxpay_adopt_stop_requests()
RETURNS bigint
AS 'MODULE_PATHNAME', 'wxpay_adopt_stop_requests'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_adopt_stop_requests() FROM PUBLIC;
