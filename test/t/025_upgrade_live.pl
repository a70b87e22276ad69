
# Copyright: wxpay_signplan authors
#
# 025_upgrade_live.pl: ALTER EXTENSION wxpay_signplan UPDATE while the
# database's queue worker is in the middle of a claim.
#
# The worker's claim transaction touches wxpay_stop_request first (it
# records the outcomes gathered so far), then wxpay_config (it counts the
# configs after a config change).  The 0.3.0 -> 0.4.0 script alters both
# tables.  Taken in the other order (wxpay_config first, as its statements
# come), the update and the worker each waited for the other: "deadlock
# detected", and the update was rolled back (seen once in CI).  The script
# now locks both tables up front in the worker's order.
#
# The interleaving is made exact, not waited for by chance: a trigger on
# wxpay_stop_request stops the worker at the chosen point on an advisory
# lock this test holds, and each step polls for the state it expects.
# With wxpay.worker_concurrency = 2:
#
#   1. P0's and P1's stops are held by the simulator: both slots are busy,
#      so the worker asks for no more work;
#   2. a config changes (the next claim counts the configs) and P3 is
#      queued (a claim is wanted);
#   3. P1's answer frees a slot: the claim that follows records P1's
#      outcome first and is stopped there, holding wxpay_stop_request,
#      before it counts the configs;
#   4. the update starts and waits for wxpay_stop_request;
#   5. the worker goes on: the update must succeed, neither it nor the
#      worker may be a deadlock's victim (the log says "deadlock detected"
#      for either), and P0, P1 and P3 are each stopped exactly once.
#
# Plan numbers start with e25.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $node = PostgreSQL::Test::Cluster->new('upgradelive');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
# a deadlock, if any, is found at once
$node->append_conf('postgresql.conf', queue_test_conf(
		deadlock_timeout => "'100ms'",
		'wxpay.worker_concurrency' => 2));
$node->start;

my $db = 'e25db';
$node->safe_psql('postgres', "CREATE DATABASE $db");
$node->safe_psql($db, "CREATE EXTENSION wxpay_signplan VERSION '0.3.0'");
$node->safe_psql($db, config_insert_from_files_sql(name => 'default'));

my ($p0, $p1, $p3) = ('e25-0', 'e25-1', 'e25-3');
$node->safe_psql(
	$db, qq{
CREATE FUNCTION public.e25_stall() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(25001);
    RETURN NEW;
END \$\$;
CREATE TRIGGER e25_stall BEFORE UPDATE ON wxpay_stop_request FOR EACH ROW
    WHEN (NEW.merchant_sign_plan_no = '$p1' AND OLD.state = 'sending' AND NEW.state <> 'sending')
    EXECUTE FUNCTION public.e25_stall();
});

my $x = $node->background_psql($db);
$x->query_safe('SELECT pg_advisory_lock(25001)');

# 1. both slots busy
my %id;
for my $p ($p0, $p1)
{
	ctl_post('/faults', { plan => $p, stop => ['hold'], query => [] });
	$id{$p} = enqueue_stop($node, $p, db => $db);
	ok(wait_sim_held($p, 'stop'), "step 1: the stop of $p is in flight");
}
my $wpid = worker_pid($node, $db);

# 2. a config change and more work, noted while no slot is free
$node->safe_psql($db, "UPDATE wxpay_config SET base_url = base_url WHERE name = 'default'");
$id{$p3} = enqueue_stop($node, $p3, db => $db);

# 3. P1's answer: the claim that records it waits
ctl_post('/release', { plan => $p1 });
ok( poll_until(
		sub {
			$node->safe_psql($db,
				"SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 25001 AND NOT granted"
			) eq $wpid;
		}),
	"step 3: the worker waits while recording P1's outcome");
is($node->safe_psql($db, "SELECT query FROM pg_stat_activity WHERE pid = $wpid"),
	'claiming stop requests', 'step 3: in a claim, which counts the configs next');

# 4. the update waits for the queue table
my $offset = -s $node->logfile;
my $u = $node->background_psql($db, on_error_stop => 0);
my $tok = bg_send($u, 'ALTER EXTENSION wxpay_signplan UPDATE');
ok( poll_until(
		sub {
			$node->safe_psql($db,
				"SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
				  . " WHERE NOT l.granted AND l.relation = 'wxpay_stop_request'::regclass"
				  . " AND a.query LIKE 'ALTER EXTENSION%'") eq '1';
		}),
	'step 4: the update waits for wxpay_stop_request');

# 5. the worker goes on; the update follows it
$x->query_safe('SELECT pg_advisory_unlock(25001)');
my ($out, $err) = bg_finish($u, $tok);
unlike($err, qr/ERROR/, 'step 5: the update succeeds beside the worker (no deadlock)');
is($node->safe_psql($db, "SELECT extversion FROM pg_extension WHERE extname = 'wxpay_signplan'"),
	'0.4.0', 'step 5: the extension is at 0.4.0');
$u->quit;
$x->quit;
ctl_post('/release', { plan => $p0 });

for my $p ($p0, $p1, $p3)
{
	is(wait_stop_request($node, $id{$p}, db => $db)->{state}, 'succeeded', "$p is stopped");
	is(sim_stops($p), 1, "$p was stopped once");
	is(sim_stop_attempts($p), 1, "$p was sent once");
}
# whichever of the two finds a deadlock is its victim: the worker too
# (it would recover, but the update must never make it fail)
unlike(log_since($node, $offset), qr/deadlock detected/, 'no deadlock, no victim');

$node->stop;
done_testing();
