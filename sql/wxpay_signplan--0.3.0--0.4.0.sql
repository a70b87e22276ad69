/* wxpay_signplan--0.3.0--0.4.0.sql: upgrade from 0.3.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.4.0'" to load this file. \quit

-- ===== 0.4.0: hardening (issue 18) =====

-- ----- issue 18, failover -----
-- The WAL timeline each row's enqueue or last claim was written on: after a
-- promotion, a row of an older timeline (or of none, as every row queued
-- before this update) is queried before any stop, because the old primary
-- may have claimed and sent it in commits the new one never received.
ALTER TABLE @extschema@.wxpay_stop_request ADD COLUMN timeline integer;
