/* wxpay_signplan--0.2.0--0.3.0.sql: upgrade from 0.2.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.3.0'" to load this file. \quit
