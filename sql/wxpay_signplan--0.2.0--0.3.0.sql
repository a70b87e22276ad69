/* wxpay_signplan--0.2.0--0.3.0.sql: upgrade from 0.2.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.3.0'" to load this file. \quit

-- ===== 0.3.0: the queue keeps its promise under every fault (issue 10) =====

-- "A stop of this request may have reached WeChat Pay" becomes a durable
-- fact of its own.  0.2.0 derived it from the last error, which a later
-- attempt could overwrite (a 429 on the settling query, a config error), so
-- every unfinished request that was attempted before is marked: its next
-- attempt queries the plan first.  A query is harmless; a blind stop is not.
ALTER TABLE @extschema@.wxpay_stop_request
    ADD COLUMN outcome_unknown boolean NOT NULL DEFAULT false;

UPDATE @extschema@.wxpay_stop_request
   SET outcome_unknown = true
 WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'sending']::text[])
   AND attempts OPERATOR(pg_catalog.>) 0;

CREATE INDEX wxpay_stop_request_due_config
    ON @extschema@.wxpay_stop_request (config_name, next_attempt_at, id)
    WHERE state OPERATOR(pg_catalog.=) 'queued';
