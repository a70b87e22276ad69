# 021_upgrade.pl: ALTER EXTENSION ... UPDATE from 0.1.0 yields the same
# functions as a fresh 0.2.0 install: signatures, security, search_path,
# volatility, parallel safety and privileges (PUBLIC must get nothing new).

use strict;
use warnings FATAL => 'all';

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('fresh', 'CREATE EXTENSION wxpay_signplan');
$node->safe_psql('upgraded', "CREATE EXTENSION wxpay_signplan VERSION '0.1.0'");
$node->safe_psql('upgraded', "ALTER EXTENSION wxpay_signplan UPDATE TO '0.2.0'");

my $q = q{
SELECT p.oid::regprocedure, p.prorettype::regtype, p.prosecdef, p.proconfig,
       p.provolatile, p.proparallel, p.proisstrict, p.proacl
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'wxpay_signplan'
ORDER BY 1::text};

my $fresh = $node->safe_psql('fresh', $q);
is($node->safe_psql('upgraded', $q), $fresh, 'same functions after the upgrade');
like($fresh, qr/wxpay_refresh_platform_certificates\(text\)/, 'the refresh function is there');
like($fresh, qr/wxpay_check_config\(text,boolean\)/, 'the check function is there');

$node->stop;
done_testing();
