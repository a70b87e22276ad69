# 021_upgrade.pl: ALTER EXTENSION ... UPDATE from 0.1.0 and from 0.2.0 yields
# the same objects as a fresh install of the default version: function
# signatures, security, search_path, volatility, parallel safety and
# privileges (PUBLIC must get nothing new), members, columns, constraints,
# indexes, triggers, ACLs and what pg_dump keeps.

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION wxpay_signplan');
# from each earlier release
my @from = ('0.1.0', '0.2.0');
for my $v (@from)
{
	(my $db = "upgraded_$v") =~ tr/./_/;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION wxpay_signplan VERSION '$v'");
	$node->safe_psql($db, 'ALTER EXTENSION wxpay_signplan UPDATE');
}

my $q = q{
SELECT p.oid::regprocedure, p.prorettype::regtype, p.prosecdef, p.proconfig,
       p.provolatile, p.proparallel, p.proisstrict, p.proacl
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'wxpay_signplan'
ORDER BY 1::text};

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
FROM pg_constraint WHERE conrelid::regclass::text LIKE 'wxpay%' ORDER BY 1::text, 2},
	'indexes' => q{
SELECT indexrelid::regclass, pg_get_indexdef(indexrelid)
FROM pg_index WHERE indrelid::regclass::text LIKE 'wxpay%' ORDER BY 1::text},
	'triggers' => q{
SELECT tgrelid::regclass, tgname, pg_get_triggerdef(oid)
FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'wxpay%'
ORDER BY 1::text, 2},
	'privileges' => q{
SELECT relname, relacl FROM pg_class WHERE relname LIKE 'wxpay%' ORDER BY 1},
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

$node->stop;
done_testing();
