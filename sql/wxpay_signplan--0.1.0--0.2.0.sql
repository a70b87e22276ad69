/* wxpay_signplan--0.1.0--0.2.0.sql: upgrade from 0.1.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.2.0'" to load this file. \quit

-- ===================================================================
-- 0.2.0: failover to the backup domain (issue 6)
-- ===================================================================


-- ===================================================================
-- 0.2.0: platform certificates and the configuration check (issue 4)
-- ===================================================================


-- ===================================================================
-- 0.2.0: the concurrent batch stop (issue 5)
-- ===================================================================


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
    WHERE state OPERATOR(pg_catalog.<>) ALL (ARRAY['succeeded', 'failed']::text[]);

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
