-- test/bench/session.sql: one measured benchmark session (run by bench.sh,
-- and in miniature by test/t/039_bench_smoke.pl).  psql variables:
--   batch   true: wxpay_stop_sign_plans; false: wxpay_stop_sign_plan
--           called sequentially in one statement
--   conc    wxpay.batch_concurrency
--   n       measured calls        warm   warm-up calls (not measured)
--   prefix  plan number prefix (plans must be fresh: a second stop is a 400)
-- Prints one line: calls|stopped|wall seconds|backend CPU ticks|RSS kB
-- before|RSS kB after|RSS kB before the warm-up|memory context bytes
-- before|and after.  CPU is utime + stime of this backend from
-- /proc/self/stat, read by the backend itself (needs superuser).
\set QUIET on
\pset tuples_only on
\pset format unaligned
SET wxpay.batch_concurrency = :conc;

SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmRSS:\s+(\d+)'))[1] AS rssw \gset

-- warm-up: config and key cache, TLS handshake(s)
\if :batch
SELECT count(*) FILTER (WHERE ok) AS warm_ok
FROM wxpay_stop_sign_plans(
    ARRAY(SELECT :'prefix' || '-w' || i FROM generate_series(1, :warm) i), 'bench') \gset
\else
SELECT count(*) AS warm_ok
FROM unnest(ARRAY(SELECT :'prefix' || '-w' || i FROM generate_series(1, :warm) i)) AS n,
     LATERAL wxpay_stop_sign_plan(n, 'bench') p \gset
\endif

SELECT (SELECT sum(split_part(substr(s, strpos(s, ') ') + 2), ' ', f)::bigint)
        FROM pg_read_file('/proc/self/stat') AS s, unnest(ARRAY[12, 13]) AS f) AS cpu0,
       (regexp_match(pg_read_file('/proc/self/status'), 'VmRSS:\s+(\d+)'))[1] AS rss0,
       (SELECT sum(total_bytes) FROM pg_backend_memory_contexts) AS ctx0,
       clock_timestamp() AS t0 \gset

\if :batch
SELECT count(*) FILTER (WHERE ok AND (plan).sign_state = 'SIGN_PLAN_CANCEL') AS stopped
FROM wxpay_stop_sign_plans(
    ARRAY(SELECT :'prefix' || '-' || i FROM generate_series(1, :n) i), 'bench') \gset
\else
SELECT count(*) FILTER (WHERE p.sign_state = 'SIGN_PLAN_CANCEL') AS stopped
FROM unnest(ARRAY(SELECT :'prefix' || '-' || i FROM generate_series(1, :n) i)) AS n,
     LATERAL wxpay_stop_sign_plan(n, 'bench') p \gset
\endif

SELECT (SELECT sum(split_part(substr(s, strpos(s, ') ') + 2), ' ', f)::bigint)
        FROM pg_read_file('/proc/self/stat') AS s, unnest(ARRAY[12, 13]) AS f) AS cpu1,
       (regexp_match(pg_read_file('/proc/self/status'), 'VmRSS:\s+(\d+)'))[1] AS rss1,
       (SELECT sum(total_bytes) FROM pg_backend_memory_contexts) AS ctx1,
       clock_timestamp() AS t1 \gset

SELECT :n || '|' || :stopped || '|' ||
       round(extract(epoch FROM :'t1'::timestamptz - :'t0'::timestamptz), 3) || '|' ||
       (:cpu1 - :cpu0) || '|' || :rss0 || '|' || :rss1 || '|' || :rssw || '|' ||
       :ctx0 || '|' || :ctx1;
