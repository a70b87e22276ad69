/* wxpay_signplan--0.3.0--0.4.0.sql: upgrade from 0.3.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.4.0'" to load this file. \quit

-- The queue's worker may be draining while this runs.  Its transactions
-- touch wxpay_stop_request before wxpay_config (a claim counts the configs
-- after reading the queue); this script alters both, so it takes both
-- locks up front in that order.  Taken as they come (wxpay_config first,
-- below), the worker and the update could each wait for the other: a
-- deadlock that aborts the update.
LOCK TABLE @extschema@.wxpay_stop_request, @extschema@.wxpay_config
    IN ACCESS EXCLUSIVE MODE;

-- ===== 0.4.0: hardening (issue 18) =====

-- ----- issue 18, backup domain default -----
--
-- backup_base_url defaults to WeChat Pay's backup domain only beside WeChat
-- Pay's main domain: the column default 'default' is replaced by the row
-- trigger (an explicit NULL still means no failover).
--
ALTER TABLE @extschema@.wxpay_config
    ALTER COLUMN backup_base_url SET DEFAULT 'default';

COMMENT ON COLUMN @extschema@.wxpay_config.backup_base_url IS
    'where a request goes when connecting to base_url fails before anything was sent; NULL: no failover; omitted or ''default'': https://api2.mch.weixin.qq.com when base_url is https://api.mch.weixin.qq.com, else NULL';

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

-- Configs created since 0.2.0 with a sandbox, proxy or simulator base_url
-- got WeChat Pay's real backup domain by default: an unreachable test
-- environment sent their stops to the real platform.  They lose it, and
-- the update says which ones (names only).  Only when there are any, so
-- that the statement trigger (cache invalidation, worker wakeup) fires only
-- for a real change.
DO $wxpay_fix$
DECLARE
    fixed text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.format('"%s"', c.name), ', ' ORDER BY c.name)
      INTO fixed
      FROM @extschema@.wxpay_config c
     WHERE c.backup_base_url OPERATOR(pg_catalog.=) 'https://api2.mch.weixin.qq.com'
       AND pg_catalog.rtrim(pg_catalog.lower(c.base_url), '/') OPERATOR(pg_catalog.<>) ALL
           (ARRAY['https://api.mch.weixin.qq.com', 'https://api.mch.weixin.qq.com:443']);
    IF fixed IS NOT NULL THEN
        UPDATE @extschema@.wxpay_config c SET backup_base_url = NULL
         WHERE c.backup_base_url OPERATOR(pg_catalog.=) 'https://api2.mch.weixin.qq.com'
           AND pg_catalog.rtrim(pg_catalog.lower(c.base_url), '/') OPERATOR(pg_catalog.<>) ALL
               (ARRAY['https://api.mch.weixin.qq.com', 'https://api.mch.weixin.qq.com:443']);
        RAISE WARNING 'backup_base_url of wxpay configurations % is now NULL', fixed
            USING DETAIL = 'Their base_url is not WeChat Pay''s main domain https://api.mch.weixin.qq.com, '
                           'so they no longer fail over to WeChat Pay''s backup domain https://api2.mch.weixin.qq.com.',
                  HINT = 'If such an environment has a backup domain of its own, set backup_base_url to it.';
    END IF;
END
$wxpay_fix$;

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

-- ----- issue 18, privileges -----

-- Who may wait for a request: the role that queued it.  Rows queued before
-- 0.4.0 have no enqueuer: only roles that may read the table wait for them.
ALTER TABLE @extschema@.wxpay_stop_request ADD COLUMN enqueued_by oid;

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

-- ----- issue 18, failover -----
-- The WAL timeline each row's enqueue or last claim was written on: after a
-- promotion, a row of an older timeline (or of none, as every row queued
-- before this update) is queried before any stop, because the old primary
-- may have claimed and sent it in commits the new one never received.
ALTER TABLE @extschema@.wxpay_stop_request ADD COLUMN timeline integer;

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
-- ----- issue 21, every database -----
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

-- ----- issue 21, the worker's status in wxpay_queue_status -----
-- worker_status and worker_next_start_at: the launcher's word on this
-- database (wxpay_queue_workers()): served, or why no worker runs.
CREATE OR REPLACE VIEW @extschema@.wxpay_queue_status AS
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
