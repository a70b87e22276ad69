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


-- ===================================================================
-- 0.2.0: the durable outbox and its background worker (issue 3)
-- ===================================================================
