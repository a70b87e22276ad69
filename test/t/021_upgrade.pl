# 021_upgrade.pl: ALTER EXTENSION ... UPDATE from 0.1.0, 0.2.0 and 0.3.0 yields
# the same objects as a fresh install of the default version: function
# signatures, security, search_path, volatility, parallel safety and
# privileges (PUBLIC must get nothing new), members, columns, constraints,
# indexes, triggers, ACLs and what pg_dump keeps.
#
# 0.3.0 gives four functions a new last parameter (partner mode), which
# makes each a new function: the EXECUTE grants users gave on the old ones
# (to roles, to PUBLIC, with grant option, and granted on by other roles)
# must be on the new ones, recorded as the users' own (not as initial
# privileges, so that pg_dump keeps dumping them), and the queued rows of
# wxpay_stop_request must survive with their stored results.

use strict;
use warnings FATAL => 'all';

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
# the version a fresh install gets (the control file's default_version)
my $default_version;
$node->init;
$node->start;

# grantors are created in an order that makes the chain of grant options
# run against role oids (the upgrade must not depend on it); one name needs
# quoting
$node->safe_psql('postgres', "CREATE ROLE $_")
  for qw(regress_up_sub "regress_up_Lead" regress_up_app regress_up_nobody);

# the grants of a user, on the functions with the given signatures
my %sig_old = (
	stop => 'wxpay_stop_sign_plan(text, text, text)',
	query => 'wxpay_query_sign_plan(text, text)',
	batch => 'wxpay_stop_sign_plans(text[], text, text)',
	async => 'wxpay_stop_sign_plan_async(text, text, text)');
my %sig_new = (
	stop => 'wxpay_stop_sign_plan(text, text, text, text)',
	query => 'wxpay_query_sign_plan(text, text, text)',
	batch => 'wxpay_stop_sign_plans(text[], text, text, text)',
	async => 'wxpay_stop_sign_plan_async(text, text, text, text)');

sub grants_sql
{
	my ($sig, @which) = @_;
	my %g = (
		stop => "GRANT EXECUTE ON FUNCTION $sig->{stop} TO regress_up_app;",
		query => "GRANT EXECUTE ON FUNCTION $sig->{query} TO \"regress_up_Lead\" WITH GRANT OPTION;\n"
		  . "SET ROLE \"regress_up_Lead\";\n"
		  . "GRANT EXECUTE ON FUNCTION $sig->{query} TO regress_up_sub;\n"
		  . "RESET ROLE;",
		batch => "GRANT EXECUTE ON FUNCTION $sig->{batch} TO PUBLIC, regress_up_app;",
		async => "GRANT EXECUTE ON FUNCTION $sig->{async} TO \"regress_up_Lead\" WITH GRANT OPTION;\n"
		  . "SET ROLE \"regress_up_Lead\";\n"
		  . "GRANT EXECUTE ON FUNCTION $sig->{async} TO regress_up_sub WITH GRANT OPTION;\n"
		  . "SET ROLE regress_up_sub;\n"
		  . "GRANT EXECUTE ON FUNCTION $sig->{async} TO regress_up_app;\n"
		  . "RESET ROLE;");
	return join("\n", map { $g{$_} } @which);
}

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION wxpay_signplan');
$default_version = $node->safe_psql('fresh',
	"SELECT extversion FROM pg_extension WHERE extname = 'wxpay_signplan'");
$node->safe_psql('fresh', grants_sql(\%sig_new, qw(stop query batch async)));

# queued rows of 0.2.0, one with a stored result
my $rows_sql = q{
SELECT id, (to_jsonb(r) - 'result' - 'sub_mchid' - 'outcome_unknown' - 'enqueued_by' - 'timeline')::text,
       (to_jsonb(result) - 'sub_openid' - 'sub_mchid' - 'sub_appid')::text
FROM wxpay_stop_request r ORDER BY id};
my $rows_before;
# (0.3.0 adds sub_openid, sub_mchid and sub_appid at the end: NULL here)
my $plan_row = "ROW('SP1', 'o1', '500001', '1900000001', 'wx1', 'up-2', 'https://m.example', "
  . "'10001', 2, 'SIGN_PLAN_CANCEL', '2026-01-15 10:20:30.12+08', 'MERCHANT', 'r', 'Monthly', "
  . "'2027-01-15 10:20:30+08', 30000, 3, 27000, '[]', '2025-12-15 09:00:00+00')::wxpay_sign_plan";
# the same plan as 0.3.0 spells it (partner mode's three fields, NULL)
(my $plan_row_partner = $plan_row) =~ s/'2025-12-15 09:00:00\+00'\)/'2025-12-15 09:00:00+00', NULL, NULL, NULL)/;

# from each earlier release
my @from = ('0.1.0', '0.2.0', '0.3.0');
for my $v (@from)
{
	(my $db = "upgraded_$v") =~ tr/./_/;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION wxpay_signplan VERSION '$v'");
	if ($v eq '0.1.0')
	{
		$node->safe_psql($db, grants_sql(\%sig_old, qw(stop query)));
		$node->safe_psql($db, 'ALTER EXTENSION wxpay_signplan UPDATE');
		# the functions 0.1.0 did not have get their grants now
		$node->safe_psql($db, grants_sql(\%sig_new, qw(batch async)));
		next;
	}
	$node->safe_psql($db,
		grants_sql($v eq '0.2.0' ? \%sig_old : \%sig_new, qw(stop query batch async)));
	$node->safe_psql($db,
		"INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason) "
		  . "VALUES ('default', 'up-1', 'queued before the upgrade');"
		  . "INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, "
		  . " state, attempts, finished_at, http_status, request_id, result) "
		  . "VALUES ('default', 'up-2', 'done before the upgrade', 'succeeded', 1, now(), 200, "
		  . " 'abc-0', " . ($v eq '0.2.0' ? $plan_row : $plan_row_partner) . ");"
		  . "INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, "
		  . " state, attempts, error_code, error_message) "
		  . "VALUES ('other', 'up-3', 'retrying', 'queued', 2, 'WX003', 'unknown');");
	$rows_before = $node->safe_psql($db, $rows_sql);
	$node->safe_psql($db, 'ALTER EXTENSION wxpay_signplan UPDATE');

	# the rows, every column and the stored result as they were
	is($node->safe_psql($db, $rows_sql), $rows_before, 'queued rows survive the upgrade');
	# issue 10: an unfinished request attempted under 0.2.0 may have reached
	# WeChat Pay (0.2.0 could lose that fact): it queries before any stop
	is( $node->safe_psql($db,
			"SELECT string_agg(id || ':' || outcome_unknown, ' ' ORDER BY id) FROM wxpay_stop_request"),
		$v eq '0.2.0' ? '1:false 2:false 3:true' : '1:false 2:false 3:false',
		'the upgrade from 0.2.0 marks the unfinished, attempted request outcome-unknown');
	is( $node->safe_psql($db,
			"SELECT count(*) FROM wxpay_stop_request WHERE sub_mchid IS NULL"),
		'3', 'they are direct-merchant requests');
	# issue 18: nobody is recorded as having queued them (only roles that
	# may read the table wait for them)
	is( $node->safe_psql($db,
			"SELECT count(*) FROM wxpay_stop_request WHERE enqueued_by IS NULL"),
		'3', 'rows queued before 0.4.0 have no enqueuer');
	# issue 18: of no timeline, so their next claim queries first
	is( $node->safe_psql($db,
			"SELECT count(*) FROM wxpay_stop_request WHERE timeline IS NULL"),
		'3', 'they have no timeline (queried before any stop)');
	is( $node->safe_psql($db,
			"SELECT (result).cancel_sign_type || '|' || (result).total_actual_price || '|'"
			  . " || ((result).sub_mchid IS NULL) FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'up-2'"),
		'MERCHANT|27000|true', 'a stored result reads back, the new fields NULL');
	is( $node->safe_psql($db,
			"SELECT nextval('wxpay_stop_request_id_seq') > max(id) FROM wxpay_stop_request"),
		't', 'the id sequence goes on');

	# the grants, by role
	is( $node->safe_psql($db,
			"SELECT string_agg(r || ':' || f || ':' || has_function_privilege(r, f, 'EXECUTE'), ',' ORDER BY r, f)"
			  . " FROM unnest(ARRAY['regress_up_app', 'regress_up_sub', 'regress_up_Lead', 'regress_up_nobody']) r,"
			  . " unnest(ARRAY['$sig_new{stop}', '$sig_new{query}', '$sig_new{batch}', '$sig_new{async}']) f"),
		$node->safe_psql('fresh',
			"SELECT string_agg(r || ':' || f || ':' || has_function_privilege(r, f, 'EXECUTE'), ',' ORDER BY r, f)"
			  . " FROM unnest(ARRAY['regress_up_app', 'regress_up_sub', 'regress_up_Lead', 'regress_up_nobody']) r,"
			  . " unnest(ARRAY['$sig_new{stop}', '$sig_new{query}', '$sig_new{batch}', '$sig_new{async}']) f"),
		'every role can execute what it could');
	is( $node->safe_psql($db,
			"SELECT has_function_privilege('regress_up_app', '$sig_new{stop}', 'EXECUTE')"
			  . " AND has_function_privilege('regress_up_sub', '$sig_new{query}', 'EXECUTE')"
			  . " AND has_function_privilege('regress_up_app', '$sig_new{async}', 'EXECUTE')"
			  . " AND has_function_privilege('regress_up_sub', '$sig_new{async}', 'EXECUTE WITH GRANT OPTION')"
			  . " AND has_function_privilege('public', '$sig_new{batch}', 'EXECUTE')"
			  . " AND NOT has_function_privilege('regress_up_nobody', '$sig_new{stop}', 'EXECUTE')"),
		't', 'the grants given before the upgrade are there, and nothing more');
}

# an object of the user's that depends on an old signature stops the update
# (doc/operations.md "Upgrading", from 0.2.0), and the failed update changes nothing
{
	$node->safe_psql('postgres', 'CREATE DATABASE upgraded_dep');
	$node->safe_psql('upgraded_dep', "CREATE EXTENSION wxpay_signplan VERSION '0.2.0'");
	$node->safe_psql('upgraded_dep',
		"CREATE FUNCTION plan_state(text) RETURNS text BEGIN ATOMIC SELECT (wxpay_query_sign_plan(\$1)).sign_state; END");
	my ($ret, $out, $err) = $node->psql('upgraded_dep', 'ALTER EXTENSION wxpay_signplan UPDATE');
	isnt($ret, 0, 'a dependent SQL function stops the update');
	like($err, qr/function plan_state\(text\) depends on function wxpay_query_sign_plan\(text,text\)/,
		'the error names the dependent object');
	is( $node->safe_psql('upgraded_dep',
			"SELECT extversion FROM pg_extension WHERE extname = 'wxpay_signplan'"),
		'0.2.0', 'the failed update left 0.2.0 as it was');
	$node->safe_psql('upgraded_dep', 'DROP FUNCTION plan_state(text); ALTER EXTENSION wxpay_signplan UPDATE');
	is( $node->safe_psql('upgraded_dep',
			"SELECT extversion FROM pg_extension WHERE extname = 'wxpay_signplan'"),
		$default_version, 'without it the update goes through');
}

my $q = q{
SELECT p.oid::regprocedure, p.prorettype::regtype, p.prosecdef, p.proconfig,
       p.provolatile, p.proparallel, p.proisstrict, p.proacl
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'wxpay_signplan'
ORDER BY p.oid::regprocedure::text};

my @dbs = map { (my $d = "upgraded_$_") =~ tr/./_/; $d } @from;

my $fresh = $node->safe_psql('fresh', $q);
is($node->safe_psql($_, $q), $fresh, "same functions after the upgrade ($_)") for @dbs;
like($fresh, qr/wxpay_refresh_platform_certificates\(text\)/, 'the refresh function is there');
like($fresh, qr/wxpay_check_config\(text,boolean\)/, 'the check function is there');

# every other object, and what the tables are made of
my %checks = (
	'member objects' => q{
SELECT pg_describe_object(d.classid, d.objid, 0)
FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'wxpay_signplan'
WHERE d.deptype = 'e' ORDER BY 1},
	'columns' => q{
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(ad.adbin, ad.adrelid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
WHERE c.relname LIKE 'wxpay%' ORDER BY 1, 2},
	'constraints' => q{
SELECT conrelid::regclass, conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid::regclass::text LIKE 'wxpay%' ORDER BY conrelid::regclass::text, 2},
	'indexes' => q{
SELECT indexrelid::regclass, pg_get_indexdef(indexrelid)
FROM pg_index WHERE indrelid::regclass::text LIKE 'wxpay%' ORDER BY indexrelid::regclass::text},
	'triggers' => q{
SELECT tgrelid::regclass, tgname, pg_get_triggerdef(oid)
FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'wxpay%'
ORDER BY tgrelid::regclass::text, 2},
	'privileges' => q{
SELECT relname, relacl FROM pg_class WHERE relname LIKE 'wxpay%' ORDER BY 1},
	'initial privileges' => q{
SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid), i.privtype, i.initprivs
FROM pg_init_privs i JOIN pg_depend d ON d.classid = i.classoid AND d.objid = i.objoid
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'wxpay_signplan' AND d.deptype = 'e'
ORDER BY 1},
	'role dependencies' => q{
SELECT pg_describe_object(s.classid, s.objid, s.objsubid), s.refobjid::regrole, s.deptype
FROM pg_shdepend s JOIN pg_database db ON db.oid = s.dbid AND db.datname = current_database()
WHERE s.refobjid::regrole::text LIKE 'regress_up%' ORDER BY 1, 2, 3},
	'composite types' => q{
SELECT t.typname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
WHERE t.typname LIKE 'wxpay%' AND t.typtype = 'c' ORDER BY 1, 2},
	'dumped configuration' => q{
SELECT (SELECT array_agg(x::regclass::text ORDER BY x::regclass::text) FROM unnest(extconfig) x),
       extcondition
FROM pg_extension WHERE extname = 'wxpay_signplan'});

for my $what (sort keys %checks)
{
	my $f = $node->safe_psql('fresh', $checks{$what});
	is($node->safe_psql($_, $checks{$what}), $f, "same $what after the upgrade ($_)")
	  for @dbs;
}
like($node->safe_psql('fresh', $checks{'member objects'}),
	qr/table wxpay_stop_request/, 'the queue table is there');
like($node->safe_psql('fresh', $checks{'role dependencies'}),
	qr/regress_up_app/, 'the grants are role dependencies');

# pg_dump keeps the users' grants of an upgraded install, as of a fresh one
sub dumped_grants
{
	my ($db) = @_;
	my ($stdout, $stderr);
	IPC::Run::run([ 'pg_dump', '--schema-only', '-d', $node->connstr($db) ],
		'>', \$stdout, '2>', \$stderr)
	  or die "pg_dump failed: $stderr";
	return join("\n", sort grep { /^(GRANT|REVOKE) .* FUNCTION / } split /\n/, $stdout);
}
my $fresh_grants = dumped_grants('fresh');
like($fresh_grants, qr/GRANT ALL ON FUNCTION public\.wxpay_stop_sign_plan\(.*\) TO regress_up_app/,
	'pg_dump dumps a grant of a fresh install');
is(dumped_grants($_), $fresh_grants, "pg_dump dumps the same grants ($_)") for @dbs;

$node->stop;
done_testing();
