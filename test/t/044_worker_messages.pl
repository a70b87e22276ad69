
# 044_worker_messages.pl: the launcher and the worker say why they do not
# serve (issue 19, item 7).
#
#  (a) wxpay.database_name names a database that does not exist: the
#      launcher starts no worker (no FATAL "database ... does not exist"
#      from a worker, no worker started at all) and logs one line with
#      SQLSTATE 3D000, what to do, and when it looks again; the looks back
#      off (1 s, 2 s, 4 s, ...: each delay is announced once, never repeated);
#  (b) the database is created, without the extension: the worker logs
#      that the extension is not installed there (42704, with the CREATE
#      EXTENSION hint) and stops, once: it is not restarted until asked;
#  (c) CREATE EXTENSION there and an enqueue: a worker serves the queue,
#      and the "not installed" line was still logged only once.
#
# Plan numbers start with e44.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $node = PostgreSQL::Test::Cluster->new('workermsg');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf('postgresql.conf',
	queue_test_conf(
		'wxpay.database_name' => "'wx44db'",
		log_error_verbosity => 'verbose'));
$node->start;

sub log_from { return log_since($node, $_[0]); }

# ---- (a) no such database ----

my $missing = qr/LOG:  3D000: wxpay_signplan worker not started: database "wx44db" does not exist\n[^\n]*DETAIL:  wxpay\.database_name names it\.  The launcher looks again in (\d+) s\./;

# the second look announces 2 s: both looks are in the log then
$node->wait_for_log(
	qr/wxpay_signplan worker not started: database "wx44db" does not exist\n[^\n]*DETAIL:  [^\n]* looks again in 2 s\./, 0);
my $log = log_from(0);
my @delays = $log =~ /$missing/g;
# (a later look may have come by now on a slow machine: 1, 2, 4, ...)
my @doubling = map { 2**$_ } 0 .. $#delays;
is(join(',', @delays), join(',', @doubling),
	'missing database: one line per look, the looks back off 1 s, 2 s, ...');
like($log,
	qr/HINT:  Create that database and run CREATE EXTENSION wxpay_signplan in it, or set wxpay\.database_name to the database where the extension is installed and restart the server\./,
	'missing database: the hint says what to do');
unlike($log, qr/FATAL:  (?:3D000: )?database "wx44db" does not exist/,
	'missing database: no worker dies connecting to it');
unlike($log, qr/wxpay_signplan worker \d+ started serving/,
	'missing database: no worker is started');

# ---- (b) the database without the extension ----

my $offset = length(slurp_file($node->logfile));
$node->safe_psql('postgres', 'CREATE DATABASE wx44db');
my $not_installed = qr/LOG:  42704: wxpay_signplan worker stops: the extension is not installed in database "wx44db"\n/;
$node->wait_for_log($not_installed, $offset);
$log = log_from($offset);
like($log,
	qr/$not_installed(?:[^\n]*DETAIL:  [^\n]*\n)?[^\n]*HINT:  Run CREATE EXTENSION wxpay_signplan in database "wx44db", or set wxpay\.database_name to the database where it is installed and restart the server\./,
	'no extension: the worker says why it stops and what to do');
$node->wait_for_log(qr/wxpay_signplan worker \d+ stopped serving database "wx44db"/, $offset);

# ---- (c) the extension created, a request queued: served ----

# from before the extension exists: the config's insert already wakes a
# worker, which may start before the request is queued
my $served_from = length(slurp_file($node->logfile));
$node->safe_psql('wx44db', 'CREATE EXTENSION wxpay_signplan');
$node->safe_psql('wx44db', config_insert_sql());
my $id = $node->safe_psql('wx44db',
	"SELECT wxpay_stop_sign_plan_async('e44-1', 'subscription ended')");
$node->wait_for_log(qr/wxpay_signplan worker \d+ started serving database "wx44db"/, $served_from);
ok( $node->poll_query_until('wx44db',
		"SELECT state NOT IN ('queued', 'sending') FROM wxpay_stop_request WHERE id = $id"),
	'with the extension: the worker serves the queue');
is(count_of(qr/worker stops: the extension is not installed/, log_from($offset)), 1,
	'no extension: said once, the worker not restarted until asked');

$node->stop;
done_testing();
