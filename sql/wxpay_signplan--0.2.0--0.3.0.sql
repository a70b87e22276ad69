/* wxpay_signplan--0.2.0--0.3.0.sql: upgrade from 0.2.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.3.0'" to load this file. \quit

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
