/* wxpay_signplan--0.1.0--0.2.0.sql: upgrade from 0.1.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.2.0'" to load this file. \quit

-- ===================================================================
-- 0.2.0: failover to the backup domain (issue 6)
-- ===================================================================


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


-- ===================================================================
-- 0.2.0: the durable outbox and its background worker (issue 3)
-- ===================================================================
