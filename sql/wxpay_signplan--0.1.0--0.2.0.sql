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
