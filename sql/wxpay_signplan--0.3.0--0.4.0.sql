/* wxpay_signplan--0.3.0--0.4.0.sql: upgrade from 0.3.0 */

\echo Use "ALTER EXTENSION wxpay_signplan UPDATE TO '0.4.0'" to load this file. \quit

-- ===== 0.4.0: hardening (issue 18) =====

-- ----- issue 18, privileges -----

-- Who may wait for a request: the role that queued it.  Rows queued before
-- 0.4.0 have no enqueuer: only roles that may read the table wait for them.
ALTER TABLE @extschema@.wxpay_stop_request ADD COLUMN enqueued_by oid;

--
-- Where the extension lives decides who can plant objects beside it.  A
-- role that is not a superuser and can create objects in this schema (its
-- owner, the database owner when pg_database_owner owns it, a role granted
-- CREATE, or PUBLIC) is untrusted under the extension's threat model
-- (README "Security"): warn now, while it is cheap to move.
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
