/* wxpay_signplan--0.1.0--0.2.0.sql: upgrade from 0.1.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.2.0'" to load this file. \quit

-- ===================================================================
-- 0.2.0: failover to the backup domain (issue 6)
-- ===================================================================

--
-- WeChat Pay's backup domain.  When connecting to base_url fails before any
-- request byte was sent, the same signed request goes here (the signature
-- covers the path, not the host).  NULL disables failover.  Validated like
-- base_url: https only here, host[:port] only when a call loads the config.
--
ALTER TABLE @extschema@.wxpay_config
    ADD COLUMN backup_base_url text DEFAULT 'https://api2.mch.weixin.qq.com',
    ADD CONSTRAINT wxpay_config_backup_base_url_https
        CHECK (backup_base_url IS NULL OR
               pg_catalog.lower(pg_catalog.substr(backup_base_url, 1, 8)) OPERATOR(pg_catalog.=) 'https://');

COMMENT ON COLUMN @extschema@.wxpay_config.backup_base_url IS
    'where a request goes when connecting to base_url fails before anything was sent; NULL: no failover';

-- The row check of 0.1.0, plus backup_base_url; still quotes no column.
CREATE OR REPLACE FUNCTION @extschema@.wxpay_config_check()
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
    IF NEW.backup_base_url IS NOT NULL
       AND lower(substr(NEW.backup_base_url, 1, 8)) <> 'https://' THEN
        RAISE EXCEPTION 'invalid backup_base_url for wxpay configuration "%"', NEW.name
            USING ERRCODE = 'check_violation',
                  DETAIL = 'Only https:// URLs are accepted.';
    END IF;
    RETURN NEW;
END
$$;

-- Existing configs that point somewhere other than WeChat Pay's main domain
-- (a sandbox, a proxy, a simulator) must not start failing over to the real
-- backup domain: only those on the main domain get it.
UPDATE @extschema@.wxpay_config SET backup_base_url = NULL
WHERE pg_catalog.rtrim(pg_catalog.lower(base_url), '/') OPERATOR(pg_catalog.<>) ALL
      (ARRAY['https://api.mch.weixin.qq.com', 'https://api.mch.weixin.qq.com:443']);


-- ===================================================================
-- 0.2.0: platform certificates and the configuration check (issue 4)
-- ===================================================================

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


-- ===================================================================
-- 0.2.0: the concurrent batch stop (issue 5)
-- ===================================================================

--
-- Stop many plans: one row per array element, in input order; a per-plan
-- failure is a row with ok = false, never an error.  Up to
-- wxpay.batch_concurrency requests in flight.  Not transactional.
--
CREATE FUNCTION @extschema@.wxpay_stop_sign_plans(
    merchant_sign_plan_nos text[],
    stop_reason text,
    config_name text DEFAULT 'default')
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

REVOKE ALL ON FUNCTION @extschema@.wxpay_stop_sign_plans(text[], text, text) FROM PUBLIC;


-- ===================================================================
-- 0.2.0: the durable outbox and its background worker (issue 3)
-- ===================================================================

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
    config_name text DEFAULT 'default')
RETURNS bigint
AS 'MODULE_PATHNAME', 'wxpay_stop_sign_plan_async'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON FUNCTION @extschema@.wxpay_stop_sign_plan_async(text, text, text) FROM PUBLIC;

--
-- Wait for a queued stop to finish; returns its row either way.
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
