/* wxpay_signplan--0.3.0--0.4.0.sql: upgrade from 0.3.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.4.0'" to load this file. \quit

-- ===== 0.4.0: hardening (issue 18) =====
