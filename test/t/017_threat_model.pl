
# Copyright: wxpay_signplan authors
#
# The threat model of doc/security.md "Threat model", one block per role of its
# table: PUBLIC, an application role with the documented grants, the owner
# of the queue's database, the owner of the extension's schema, and a
# monitoring role (issue 18, privileges).  And item 6: a queued request is
# returned by wxpay_wait_stop_request only to a role that may read the
# queue table or has the privileges of the role that queued it.
#
# The database owner's attack (reproduced on the code before the fix): she
# plants "=" operators and now() in a schema of hers, points the database's
# search_path at it, sets default_transaction_read_only, tiny timeouts and
# odd date styles for the database, and waits for the worker to restart:
# her functions would run inside it as superuser.  Here the worker is
# restarted, stops are queued, and they must succeed with none of her
# functions ever run and her role still not a superuser.
#
# The test's own sessions override the database's settings (PGOPTIONS, a
# client setting ranks above a database setting), so that only the
# extension's processes and functions are under attack.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

$ENV{PGOPTIONS} = join(' ',
	'-c search_path=public',
	'-c role=none',
	'-c default_transaction_read_only=off',
	'-c statement_timeout=0',
	'-c lock_timeout=0',
	'-c idle_in_transaction_session_timeout=0',
	'-c exit_on_error=off',
	'-c DateStyle=ISO,YMD',
	'-c IntervalStyle=postgres',
	'-c TimeZone=UTC');

my $node = queue_test_node('threat');
my $db = 'postgres';

# psql as a role: (exit code, stdout, stderr)
sub as
{
	my ($role, $sql, $dbname) = @_;
	my ($ret, $out, $err) = $node->psql($dbname // $db, $sql,
		extra_params => [ '-U', $role, '-v', 'VERBOSITY=default' ]);
	return ($ret, $out, $err);
}

sub as_ok
{
	my ($role, $sql, $name, $dbname) = @_;
	my ($ret, $out, $err) = as($role, $sql, $dbname);
	is($ret, 0, $name) or diag $err;
	return $out;
}

# terminate the worker and wait for the launcher to start a new one
sub restart_worker
{
	my $old = worker_pid($node, $db);
	$node->safe_psql($db, "SELECT pg_terminate_backend($old)") if $old ne '';
	ok( $node->poll_query_until($db,
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'"
			  . ($old ne '' ? " AND pid <> $old" : '')),
		'a new worker connected');
	return;
}

$node->safe_psql(
	$db, q{
CREATE ROLE regress_tm_dbowner LOGIN;
CREATE ROLE regress_tm_app LOGIN;
CREATE ROLE regress_tm_app2 LOGIN;
CREATE ROLE regress_tm_web LOGIN IN ROLE regress_tm_app, regress_tm_app2;
CREATE ROLE regress_tm_reader LOGIN;
CREATE ROLE regress_tm_nobody LOGIN;
CREATE ROLE regress_tm_monitor LOGIN IN ROLE pg_monitor;
CREATE ROLE regress_tm_nspowner LOGIN;
ALTER DATABASE postgres OWNER TO regress_tm_dbowner;
-- the documented grants of an application role (README "The queue: set-up
-- and grants"), without the optional SELECT
GRANT EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text),
    wxpay_stop_sign_plan_async(text, text, text, text),
    wxpay_wait_stop_request(bigint, interval)
  TO regress_tm_app, regress_tm_app2;
-- a role that watches the whole queue
GRANT SELECT ON wxpay_stop_request TO regress_tm_reader;
GRANT EXECUTE ON FUNCTION wxpay_wait_stop_request(bigint, interval) TO regress_tm_reader;
});

# every object the extension owns in this database
my $functions = $node->safe_psql(
	$db, q{
SELECT string_agg(p.oid::regprocedure::text, ' ' ORDER BY p.oid::regprocedure::text)
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'wxpay_signplan'});
my @functions = split / /, $functions;
my @relations = split / /, $node->safe_psql(
	$db, q{
SELECT string_agg(c.oid::regclass::text, ' ' ORDER BY c.oid::regclass::text)
FROM pg_class c JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'wxpay_signplan'
WHERE c.relkind IN ('r', 'v', 'S')});
cmp_ok(scalar(@functions), '>=', 12, 'the extension has its functions');
cmp_ok(scalar(@relations), '>=', 6, 'the extension has its tables, views and sequence');

# the functions and relations a role may use, by the catalog
sub may_use
{
	my ($role) = @_;
	my $f = $node->safe_psql(
		$db, qq{
SELECT coalesce(string_agg(f, ' ' ORDER BY f), '')
FROM unnest(string_to_array('$functions', ' ')) f
WHERE has_function_privilege('$role', f::regprocedure, 'EXECUTE')});
	my $r = $node->safe_psql(
		$db, qq{
SELECT coalesce(string_agg(r, ' ' ORDER BY r), '')
FROM unnest(string_to_array('@{[ join ' ', @relations ]}', ' ')) r
WHERE has_table_privilege('$role', r::regclass, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
   OR (r LIKE '%seq' AND has_sequence_privilege('$role', r::regclass, 'USAGE, SELECT, UPDATE'))});
	return ($f, $r);
}

my $pure = 'wxpay_sign_plan_details(jsonb) wxpay_sign_plan_details(wxpay_sign_plan) wxpay_sign_plan_from_json(jsonb)';

# ---- PUBLIC: a role with no grants ----
{
	my ($f, $r) = may_use('regress_tm_nobody');
	is($f, $pure, 'PUBLIC: executes only the pure detail and conversion functions');
	is($r, '', 'PUBLIC: no privilege on any table, view or sequence');
	for my $sql (
		"SELECT wxpay_stop_sign_plan('tm-pub-1', 'r')",
		"SELECT wxpay_query_sign_plan('tm-pub-1')",
		"SELECT wxpay_stop_sign_plan_async('tm-pub-1', 'r')",
		"SELECT wxpay_wait_stop_request(1, '0')",
		"SELECT * FROM wxpay_check_config()",
		"SELECT * FROM wxpay_refresh_platform_certificates()",
		"SELECT wxpay_purge_stop_requests()",
		"SELECT * FROM wxpay_stat",
		"SELECT * FROM wxpay_queue_status",
		"SELECT * FROM wxpay_config",
		"SELECT * FROM wxpay_stop_request",
		"SELECT * FROM wxpay_platform_certificate")
	{
		my ($ret, $out, $err) = as('regress_tm_nobody', $sql);
		like($err, qr/permission denied/, "PUBLIC: refused: $sql");
	}
	# what PostgreSQL allows any role (doc/security.md): listen for finished ids
	as_ok('regress_tm_nobody', 'LISTEN wxpay_stop_request', 'PUBLIC: can LISTEN wxpay_stop_request');
}

# ---- the monitoring role (pg_monitor) ----
{
	my ($f, $r) = may_use('regress_tm_monitor');
	is($f, "wxpay_queue_workers() $pure wxpay_stat()",
		'monitoring role: executes wxpay_stat(), wxpay_queue_workers() and the pure functions only');
	is($r, 'wxpay_queue_status wxpay_stat', 'monitoring role: reads the two views only');
	as_ok('regress_tm_monitor', 'SELECT count(*) FROM wxpay_stat', 'monitoring role: reads wxpay_stat');
	is(as_ok('regress_tm_monitor', 'SELECT count(*) FROM wxpay_queue_status',
			'monitoring role: reads wxpay_queue_status'),
		'1', 'monitoring role: one row per config');
	for my $sql (
		"SELECT * FROM wxpay_stop_request",
		"SELECT * FROM wxpay_config",
		"SELECT wxpay_wait_stop_request(1, '0')",
		"SELECT wxpay_stop_sign_plan_async('tm-mon-1', 'r')",
		"SELECT wxpay_stat_reset()")
	{
		my ($ret, $out, $err) = as('regress_tm_monitor', $sql);
		like($err, qr/permission denied/, "monitoring role: refused: $sql");
	}
}

# ---- the application role, and item 6 ----
{
	my ($f, $r) = may_use('regress_tm_app');
	is( $f,
		"$pure wxpay_stop_sign_plan(text,text,text,text) wxpay_stop_sign_plan_async(text,text,text,text)"
		  . " wxpay_wait_stop_request(bigint,interval)",
		'application role: executes what it was granted');
	is($r, '', 'application role: reads no table (no key, no other request)');
	for my $sql ("SELECT * FROM wxpay_config", "SELECT * FROM wxpay_stop_request",
		"SELECT * FROM wxpay_platform_certificate")
	{
		my ($ret, $out, $err) = as('regress_tm_app', $sql);
		like($err, qr/permission denied/, "application role: refused: $sql");
	}
	is( as_ok('regress_tm_app', "SELECT (wxpay_stop_sign_plan('tm-app-sync', 'r')).cancel_sign_type",
			'application role: stops a plan'),
		'MERCHANT', 'application role: the plan is stopped');

	my $id = as_ok('regress_tm_app', "SELECT wxpay_stop_sign_plan_async('tm-app-1', 'r')",
		'application role: queues a stop');
	is( as_ok('regress_tm_app', "SELECT state FROM wxpay_wait_stop_request($id, '60s')",
			'item 6: the role that queued a request waits for it'),
		'succeeded', 'item 6: ... and gets it');
	is($node->safe_psql($db, "SELECT enqueued_by::regrole FROM wxpay_stop_request WHERE id = $id"),
		'regress_tm_app', 'item 6: the request records who queued it');

	# another role with the same grants: as if the request did not exist
	my ($ret, $out, $err) = as('regress_tm_app2', "SELECT state FROM wxpay_wait_stop_request($id, '0')");
	isnt($ret, 0, "item 6: another application role cannot wait for it");
	my $none = $node->safe_psql($db, 'SELECT max(id) + 1000 FROM wxpay_stop_request');
	my ($ret2, $out2, $err2) = as('regress_tm_app2', "SELECT state FROM wxpay_wait_stop_request($none, '0')");
	(my $e1 = $err) =~ s/stop request $id /stop request N /g;
	(my $e2 = $err2) =~ s/stop request $none /stop request N /g;
	like($e1, qr/stop request N does not exist/, 'item 6: ... it does not exist for that role');
	is($e1, $e2, 'item 6: ... in the words of a missing id');

	# a member of the role that queued it (with its privileges), and a
	# role that may read the table
	is( as_ok('regress_tm_web', "SELECT state FROM wxpay_wait_stop_request($id, '0')",
			'item 6: a member of the queuing role waits'),
		'succeeded', 'item 6: ... and gets it');
	is( as_ok('regress_tm_reader', "SELECT state FROM wxpay_wait_stop_request($id, '0')",
			'item 6: a role that may read wxpay_stop_request waits'),
		'succeeded', 'item 6: ... and gets it');

	# SET ROLE: the role the session acts as is recorded
	my $id2 = as_ok('regress_tm_web',
		"SET ROLE regress_tm_app2; SELECT wxpay_stop_sign_plan_async('tm-app-2', 'r')",
		'item 6: a session acting as another role queues');
	is($node->safe_psql($db, "SELECT enqueued_by::regrole FROM wxpay_stop_request WHERE id = $id2"),
		'regress_tm_app2', 'item 6: the role it acted as is recorded');
	is( as_ok('regress_tm_app2', "SELECT state FROM wxpay_wait_stop_request($id2, '60s')",
			'item 6: that role waits'),
		'succeeded', 'item 6: ... and gets it');
	($ret, $out, $err) = as('regress_tm_app', "SELECT state FROM wxpay_wait_stop_request($id2, '0')");
	like($err, qr/stop request $id2 does not exist/, 'item 6: the session\'s other role does not');

	# a request without an enqueuer (queued before 0.4.0)
	my $id3 = $node->safe_psql($db,
		"INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, state, finished_at)"
		  . " VALUES ('default', 'tm-old', 'r', 'failed', now()) RETURNING id");
	($ret, $out, $err) = as('regress_tm_app', "SELECT state FROM wxpay_wait_stop_request($id3, '0')");
	like($err, qr/stop request $id3 does not exist/, 'item 6: a request of nobody is not the application\'s');
	is(as_ok('regress_tm_reader', "SELECT state FROM wxpay_wait_stop_request($id3, '0')", 'item 6: a reader waits'),
		'failed', 'item 6: ... for a request of nobody too');
}

# ---- the owner of the queue's database ----
# (on PostgreSQL 15 and later she also owns the extension's schema "public",
# through pg_database_owner: see the next block for what that allows)
{
	my ($f, $r) = may_use('regress_tm_dbowner');
	is($f, $pure, 'database owner: executes only the pure functions');
	is($r, '', 'database owner: no privilege on any table, view or sequence');

	as_ok(
		'regress_tm_dbowner', q{
CREATE TABLE public.tm_ran (who text, what text);
GRANT INSERT ON public.tm_ran TO PUBLIC;
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
CREATE FUNCTION evil.pwn(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING 'tm-evil-ran % as %', what, current_user;
    BEGIN
        INSERT INTO public.tm_ran VALUES (current_user, what);
    EXCEPTION WHEN others THEN NULL;
    END;
    BEGIN
        EXECUTE 'ALTER ROLE regress_tm_dbowner SUPERUSER';
    EXCEPTION WHEN others THEN NULL;
    END;
END $$;
CREATE FUNCTION evil.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.pwn('text ='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE FUNCTION evil.eq(name, name) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.pwn('name ='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE FUNCTION evil.eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.pwn('bigint ='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE FUNCTION evil.le(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.pwn('timestamptz <='); RETURN $1 OPERATOR(pg_catalog.<=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq);
CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = name, FUNCTION = evil.eq);
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.eq);
CREATE OPERATOR evil.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.le);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.pwn('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION evil.make_interval(secs double precision) RETURNS interval LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.pwn('make_interval()'); RETURN pg_catalog.make_interval(secs => secs); END $$;
CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.pwn('pg_notify()'); PERFORM pg_catalog.pg_notify($1, $2); END $$;
}, 'database owner: plants operators and functions in a schema of hers');

	# the attack on the worker's search_path
	as_ok('regress_tm_dbowner', 'ALTER DATABASE postgres SET search_path = evil, pg_catalog',
		'database owner: points the database\'s search_path at them');
	# the trap works: a superuser session on her search_path runs her code
	my $probe = $node->safe_psql($db, q{
SET search_path = evil, pg_catalog;
SELECT 'x'::text = 'x'::text;
SET search_path = pg_catalog;
SELECT count(*) FROM public.tm_ran;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_tm_dbowner';});
	is($probe, "t\n1\nt", 'database owner: a superuser on her search_path runs her operator (the probe)');
	$node->safe_psql($db, 'TRUNCATE public.tm_ran; ALTER ROLE regress_tm_dbowner NOSUPERUSER');
	my $log_from = -s $node->logfile;

	restart_worker();
	my $id = as_ok('regress_tm_app', "SELECT wxpay_stop_sign_plan_async('tm-db-1', 'r')",
		'database owner: a stop is queued after her search_path attack');
	is( as_ok('regress_tm_app', "SELECT state FROM wxpay_wait_stop_request($id, '30s')",
			'database owner: wait for it'),
		'succeeded', 'database owner: the stop succeeds under her search_path');

	# everything else a database (or her role, or its members) can set
	as_ok(
		'regress_tm_dbowner', q{
ALTER DATABASE postgres SET default_transaction_read_only = on;
ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';
ALTER DATABASE postgres SET statement_timeout = '1ms';
ALTER DATABASE postgres SET lock_timeout = '1ms';
ALTER DATABASE postgres SET idle_in_transaction_session_timeout = '1ms';
ALTER DATABASE postgres SET exit_on_error = on;
ALTER DATABASE postgres SET DateStyle = 'SQL, DMY';
ALTER DATABASE postgres SET IntervalStyle = 'sql_standard';
ALTER DATABASE postgres SET TimeZone = 'Pacific/Kiritimati';
ALTER DATABASE postgres SET extra_float_digits = -15;
ALTER DATABASE postgres SET transform_null_equals = on;
ALTER DATABASE postgres SET wxpay.request_timeout = '1ms';
ALTER DATABASE postgres SET wxpay.connect_timeout = '1ms';
ALTER DATABASE postgres SET role = 'regress_tm_dbowner';
ALTER DATABASE postgres SET session_authorization = 'regress_tm_dbowner';
}, 'database owner: sets read-only, 1 ms timeouts, odd styles and her role for the database');
	restart_worker();
	$node->safe_psql($db, "SELECT 1");
	for my $n (1 .. 3)
	{
		$id = as_ok('regress_tm_app', "SELECT wxpay_stop_sign_plan_async('tm-db-2-$n', 'r')",
			"database owner: stop $n is queued after all of it");
		is( as_ok('regress_tm_app', "SELECT state || ' ' || attempts FROM wxpay_wait_stop_request($id, '30s')",
				"database owner: wait for stop $n"),
			'succeeded 1', "database owner: stop $n succeeds at its first attempt");
	}
	like(
		$node->safe_psql($db,
			"SELECT to_char(finished_at AT TIME ZONE 'UTC', 'YYYY') FROM wxpay_stop_request WHERE id = $id"),
		qr/^20\d\d$/, 'database owner: the times the worker wrote are right');

	is($node->safe_psql($db, 'SELECT count(*) FROM public.tm_ran'),
		'0', 'database owner: none of her functions ran in the worker');
	is($node->safe_psql($db, "SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_tm_dbowner'"),
		'f', 'database owner: she did not become superuser');
	my $log = substr(slurp_file($node->logfile), $log_from);
	unlike($log, qr/WARNING:  tm-evil-ran/, 'database owner: the log shows none of her functions ran');
	like($log, qr/invalid value for parameter "wxpay\.request_timeout"/,
		'database owner: the worker refused her wxpay.request_timeout (logged)');

	as_ok('regress_tm_dbowner', 'ALTER DATABASE postgres RESET ALL', 'database owner: resets the database');
	restart_worker();
}

# ---- the owner of the extension's schema ----
# A second database, where a role that is not a superuser owns the schema
# the extension is installed into and plants look-alikes there before and
# after CREATE EXTENSION.  The extension warns at CREATE EXTENSION; its
# SECURITY DEFINER functions and views never call her objects.
{
	my $log_from = -s $node->logfile;
	my $su = $node->safe_psql($db, 'SELECT current_user');
	$node->safe_psql($db, 'CREATE DATABASE tm_schema');
	$node->safe_psql('tm_schema', 'CREATE SCHEMA wxs AUTHORIZATION regress_tm_nspowner');
	my $plant = q{
CREATE TABLE IF NOT EXISTS wxs.tm_ran (who text, what text);
GRANT INSERT ON wxs.tm_ran TO PUBLIC;
CREATE OR REPLACE FUNCTION wxs.pwn(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE WARNING 'tm-evil-ran % as %', what, current_user;
    INSERT INTO wxs.tm_ran VALUES (current_user, what);
END $$;
CREATE OR REPLACE FUNCTION wxs.eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM wxs.pwn('text ='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OR REPLACE FUNCTION wxs.ne(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM wxs.pwn('text <>'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OR REPLACE FUNCTION wxs.eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM wxs.pwn('bigint ='); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OR REPLACE FUNCTION wxs.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM wxs.pwn('now()'); RETURN pg_catalog.now(); END $$;
CREATE OR REPLACE FUNCTION wxs.lower(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM wxs.pwn('lower()'); RETURN pg_catalog.lower($1); END $$;
CREATE OR REPLACE FUNCTION wxs.substr(text, integer, integer) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM wxs.pwn('substr()'); RETURN pg_catalog.substr($1, $2, $3); END $$;
CREATE OR REPLACE FUNCTION wxs.count() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN PERFORM wxs.pwn('count()'); RETURN 0; END $$;
};
	as_ok('regress_tm_nspowner', $plant . q{
CREATE OPERATOR wxs.= (LEFTARG = text, RIGHTARG = text, FUNCTION = wxs.eq);
CREATE OPERATOR wxs.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = wxs.ne);
CREATE OPERATOR wxs.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = wxs.eq);
}, 'schema owner: plants look-alikes in the schema before CREATE EXTENSION', 'tm_schema');

	my ($ret, $out, $err) = $node->psql('tm_schema', 'CREATE EXTENSION wxpay_signplan SCHEMA wxs');
	is($ret, 0, 'schema owner: the extension installs into her schema') or diag $err;
	like($err, qr/WARNING:  roles that are not superusers can create objects in schema "wxs" of wxpay_signplan/,
		'CREATE EXTENSION warns about the schema');
	like($err, qr/DETAIL:  Roles with CREATE on the schema: regress_tm_nspowner\./,
		'the warning names her');
	like($err, qr/HINT:  .*CREATE SCHEMA wxpay AUTHORIZATION/, 'the warning says where to install');

	# more look-alikes, now that the extension's own names exist
	as_ok('regress_tm_nspowner', $plant . q{
CREATE FUNCTION wxs.wxpay_stop_request(bigint) RETURNS bigint LANGUAGE sql AS 'SELECT wxs.count()';
CREATE FUNCTION wxs.wxpay_config(text) RETURNS text LANGUAGE sql AS 'SELECT wxs.lower($1)';
}, 'schema owner: and after it', 'tm_schema');

	$node->safe_psql('tm_schema',
		'SET search_path = wxs; ' . config_insert_sql() . '; TRUNCATE wxs.tm_ran;'
		  . 'GRANT EXECUTE ON FUNCTION wxs.wxpay_stop_sign_plan(text, text, text, text),'
		  . ' wxs.wxpay_query_sign_plan(text, text, text) TO regress_tm_app;'
		  . 'GRANT USAGE ON SCHEMA wxs TO regress_tm_app;'
		  . 'ALTER ROLE regress_tm_app IN DATABASE tm_schema SET search_path = wxs, pg_catalog;'
		  . "ALTER ROLE \"$su\" IN DATABASE tm_schema SET search_path = wxs, pg_catalog;");
	delete local $ENV{PGOPTIONS};

	is(as_ok('regress_tm_app', "SELECT (wxs.wxpay_stop_sign_plan('tm-nsp-1', 'r')).cancel_sign_type",
			'schema owner: the application stops a plan', 'tm_schema'),
		'MERCHANT', 'schema owner: the stop works');
	is(as_ok('regress_tm_app', "SELECT (wxs.wxpay_query_sign_plan('tm-nsp-1')).sign_state",
			'schema owner: the application queries it', 'tm_schema'),
		'SIGN_PLAN_CANCEL', 'schema owner: the query works');
	as_ok($su, "SELECT * FROM wxs.wxpay_check_config()", 'schema owner: the check runs', 'tm_schema');
	as_ok($su, "SELECT wxs.wxpay_purge_stop_requests()", 'schema owner: the purge runs', 'tm_schema');
	as_ok($su, "SELECT * FROM wxs.wxpay_queue_status", 'schema owner: the queue view reads', 'tm_schema');
	as_ok($su, "UPDATE wxs.wxpay_config SET mchid = mchid", 'schema owner: the config trigger runs', 'tm_schema');
	is($node->safe_psql('tm_schema', 'SELECT pg_catalog.count(*) FROM wxs.tm_ran'),
		'0', 'schema owner: none of her look-alikes ran in the extension\'s functions, views or triggers');
	unlike(substr(slurp_file($node->logfile), $log_from), qr/WARNING:  tm-evil-ran/, 'schema owner: the log agrees');

	# the warning's other cases
	$node->safe_psql('tm_schema', 'CREATE SCHEMA wxpay_safe');
	($ret, $out, $err) = $node->psql('tm_schema', 'DROP EXTENSION wxpay_signplan; CREATE EXTENSION wxpay_signplan SCHEMA wxpay_safe');
	is($ret, 0, 'a superuser-owned schema: installs');
	unlike($err, qr/WARNING/, 'a superuser-owned schema: no warning');
	($ret, $out, $err) = $node->psql('tm_schema',
		'DROP EXTENSION wxpay_signplan; GRANT CREATE ON SCHEMA wxpay_safe TO PUBLIC; CREATE EXTENSION wxpay_signplan SCHEMA wxpay_safe');
	like($err, qr/DETAIL:  Roles with CREATE on the schema: PUBLIC, /, 'CREATE for PUBLIC: warned');
	# the update to 0.4.0 warns too, and runs none of her look-alikes
	$node->safe_psql('tm_schema', 'CREATE DATABASE tm_upgrade');
	$node->safe_psql('tm_upgrade', 'CREATE SCHEMA wxs AUTHORIZATION regress_tm_nspowner');
	as_ok('regress_tm_nspowner', $plant . q{
CREATE OPERATOR wxs.= (LEFTARG = text, RIGHTARG = text, FUNCTION = wxs.eq);
CREATE OPERATOR wxs.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = wxs.ne);
CREATE OPERATOR wxs.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = wxs.eq);
}, 'schema owner: plants look-alikes where 0.3.0 will be installed', 'tm_upgrade');
	($ret, $out, $err) = $node->psql('tm_upgrade', "CREATE EXTENSION wxpay_signplan VERSION '0.3.0' SCHEMA wxs");
	is($ret, 0, 'schema owner: 0.3.0 installs into her schema') or diag $err;
	($ret, $out, $err) = $node->psql('tm_upgrade', 'ALTER EXTENSION wxpay_signplan UPDATE');
	is($ret, 0, 'schema owner: the update to 0.4.0 runs') or diag $err;
	like($err, qr/WARNING:  roles that are not superusers can create objects in schema "wxs".*\n.*regress_tm_nspowner/,
		'the update warns about the schema');
	is($node->safe_psql('tm_upgrade', 'SELECT pg_catalog.count(*) FROM wxs.tm_ran'),
		'0', 'schema owner: none of her look-alikes ran during the install or the update');
	# what she can do (doc/security.md): capture the application's own calls into
	# her schema with a closer match ...
	as_ok('regress_tm_nspowner', q{
GRANT USAGE ON SCHEMA wxs TO PUBLIC;
CREATE FUNCTION wxs.wxpay_query_sign_plan(varchar) RETURNS text LANGUAGE sql AS $$SELECT 'captured'$$;
}, 'schema owner: plants a closer-matching overload', 'tm_upgrade');
	is(as_ok('regress_tm_app', "SELECT wxs.wxpay_query_sign_plan('tm-cap'::varchar)",
			'schema owner: the application calls with a varchar', 'tm_upgrade'),
		'captured', 'schema owner: can capture a call the application makes into her schema');
	# ... and drop it all, keys included, by cascade
	as_ok('regress_tm_nspowner', 'DROP SCHEMA wxs CASCADE',
		'schema owner: can drop her schema with the extension in it', 'tm_upgrade');
	is($node->safe_psql('tm_upgrade', "SELECT count(*) FROM pg_extension WHERE extname = 'wxpay_signplan'"),
		'0', 'schema owner: ... and the extension is gone (why the schema must be a superuser\'s)');

	$node->safe_psql('tm_schema', 'CREATE DATABASE tm_dbowned OWNER regress_tm_dbowner');
	($ret, $out, $err) = $node->psql('tm_dbowned', 'CREATE EXTENSION wxpay_signplan');
	like($err, qr/schema "public".*\n.*Roles with CREATE on the schema: regress_tm_dbowner\./,
		'public of a database a non-superuser owns: warned, naming the owner');
}

# ---- the queue still works for everyone it should ----
{
	my $id = as_ok('regress_tm_app', "SELECT wxpay_stop_sign_plan_async('tm-end', 'r')", 'at the end: queue');
	is(as_ok('regress_tm_app', "SELECT state FROM wxpay_wait_stop_request($id, '60s')", 'at the end: wait'),
		'succeeded', 'at the end: the stop succeeds');
}

$node->stop;
done_testing();
