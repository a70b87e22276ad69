
# Copyright: wxpay_signplan authors
#
# The outbox under crashes and limits: the server killed (immediate stop)
# in the middle of a burst, the worker killed, and the per-merchant rate
# limit.  Every request must finish exactly once as seen by the simulator:
# each plan stopped once, and no stop ever sent for an already stopped plan
# (which is what a blind retry after an unknown outcome would do).

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WxpayTest;

my $node = queue_test_node('queue_crash');

sub burst
{
	my ($prefix, $n) = @_;
	$node->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('$prefix' || i, 'r') FROM generate_series(1, $n) i"
	);
	return;
}

sub all_finished
{
	my ($prefix, $n) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) = $n FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%' AND state IN ('succeeded', 'failed')"
	);
}

# Every plan stopped exactly once and never stopped blindly again.
sub exactly_once
{
	my ($prefix, $n, $what) = @_;
	is( $node->safe_psql('postgres',
			"SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%' AND state = 'succeeded' AND (result).cancel_sign_type = 'MERCHANT'"
		),
		$n,
		"$what: all $n requests succeeded with the stopped plan");
	my $st = sim_stats();
	my ($once, $blind, $extra) = (0, 0, 0);
	for my $i (1 .. $n)
	{
		my $p = "$prefix$i";
		$once++ if ($st->{stops}{$p} // 0) == 1;
		$blind += $st->{already_stopped}{$p} // 0;
	}
	is($once, $n, "$what: the simulator stopped each plan exactly once");
	is($blind, 0, "$what: no stop was sent for an already stopped plan");
	return;
}

# ---- the server killed mid-burst ----
{
	ctl_post('/settings', { latency_ms => 150 });
	burst('q11-crash-', 60);
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) FILTER (WHERE state = 'succeeded') > 0 AND count(*) FILTER (WHERE state = 'sending') > 0 FROM wxpay_stop_request"
		),
		'some requests done, some in flight');
	$node->stop('immediate');
	my $left = 0;
	$node->start;
	$left = $node->safe_psql('postgres',
		"SELECT count(*) FROM wxpay_stop_request WHERE state <> 'succeeded'");
	note("after restart: $left requests unfinished");
	ctl_post('/settings', { latency_ms => 0 });
	ok(all_finished('q11-crash-', 60), 'all requests finished after restart');
	exactly_once('q11-crash-', 60, 'server crash');
	ok( $node->safe_psql('postgres',
			"SELECT count(*) > 0 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'q11-crash-%' AND attempts > 1"),
		'the requests in flight at the crash were attempted again (after a query)');
}

# ---- the worker killed mid-burst ----
{
	ctl_post('/settings', { latency_ms => 150 });
	burst('q11-kill-', 60);
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) > 0 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'q11-kill-%' AND state = 'sending'"
		),
		'requests in flight');
	my $pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'");
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't', 'worker terminated');
	ctl_post('/settings', { latency_ms => 0 });
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND pid <> $pid"
		),
		'the launcher started a new worker');
	ok(all_finished('q11-kill-', 60), 'all requests finished');
	exactly_once('q11-kill-', 60, 'worker killed');

	# and with SIGKILL (a crash of the whole cluster's backends)
	ctl_post('/settings', { latency_ms => 150 });
	burst('q11-sigkill-', 40);
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) > 0 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'q11-sigkill-%' AND state = 'sending'"
		),
		'requests in flight');
	$pid = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'");
	kill 'KILL', $pid;
	ctl_post('/settings', { latency_ms => 0 });
	ok(all_finished('q11-sigkill-', 40), 'all requests finished after crash recovery');
	exactly_once('q11-sigkill-', 40, 'worker SIGKILLed');
}

# ---- the per-merchant rate limit ----
{
	$node->safe_psql('postgres', "ALTER SYSTEM SET wxpay.rate_limit = 10");
	$node->reload;
	# the worker reads settings between cycles; one request makes it cycle
	my $id = $node->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('q11-warm-rate', 'r')");
	$node->safe_psql('postgres', "SELECT wxpay_wait_stop_request($id, '60s')");
	my $t0 = time;
	burst('q11-rate-', 35);
	ok(all_finished('q11-rate-', 35), 'rate-limited burst finished');
	my $secs = time - $t0;
	note(sprintf("35 requests at 10/s took %.2f s", $secs));
	# at most 10 in any second: the 35th cannot start before 3 s have passed
	# since the warm-up request's window
	cmp_ok($secs, '>=', 2.0, 'the rate limit spread the burst over seconds');
	exactly_once('q11-rate-', 35, 'rate limited');
}

# no crash of our own: the only terminations are the ones we caused
my $log = slurp_file($node->logfile);
my @unexpected = grep { /signal (?!9\b)\d+/ } ($log =~ /was terminated by signal \d+/g);
is(scalar(@unexpected), 0, 'no process died of a signal we did not send');
unlike($log, qr/TRAP:|PANIC/, 'no assertion failure or PANIC');

$node->stop;
done_testing();
