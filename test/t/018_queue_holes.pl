
# Copyright: wxpay_signplan authors
#
# Issue 18, items 1 to 5: holes in the queue.  One block per numbered item,
# each named in its test descriptions; each failed against the code before
# the fix.
#
#   1  a cancel (or SIGTERM) of the worker while its claim's commit waits
#      for the synchronous standby sends nothing until the standby has it;
#   2  a refusal of a stop after an unknown outcome never ends the request
#      "failed" with WeChat Pay's code: the earlier stop may land later;
#   3  outcomes recorded in a claim transaction that then fails are
#      recorded again, not sent back through reconcile;
#   4  at the smallest allowed wxpay.worker_concurrency a hung merchant,
#      its certificate refresh included, never holds the slot another
#      merchant's next stop needs;
#   5  a config change while the worker sleeps refreshes its certificates
#      in the next run, not after wxpay.certificate_refresh_interval.
#
# Synchronisation is by the server's state (rows, pg_stat_activity, log
# lines) and the simulator's (held requests, counters), never by sleeping.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use WxpayTest;

# Requests hang as long as a test needs (item 4): an unknown outcome is made
# by cancelling the worker instead of by a timeout (item 2).
my $node = PostgreSQL::Test::Cluster->new('queue_holes');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ], allows_streaming => 1);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'wxpay_signplan'
wxpay.database_name = 'postgres'
wxpay.retry_base_delay = '20ms'
wxpay.retry_max_delay = '100ms'
wxpay.reconcile_delay = '1s'
wxpay.request_timeout = '60s'
wxpay.rate_limit = 0
wxpay.max_attempts = 3
wxpay.worker_concurrency = 2
wxpay.certificate_refresh_interval = '1h'
synchronous_commit = local
log_statement = 'none'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');
$node->safe_psql('postgres', config_insert_sql());

# the synchronous standby of item 1, streaming from the start
$node->backup('q18b');
my $standby = PostgreSQL::Test::Cluster->new('queue_holes_standby');
$standby->init_from_backup($node, 'q18b', has_streaming => 1);
$standby->start;

sub row
{
	my ($id) = @_;
	my $out = $node->safe_psql(
		'postgres', qq{
SELECT state, attempts, coalesce(http_status::text, ''), coalesce(error_code, ''),
       outcome_unknown, coalesce((result).cancel_sign_type, '')
  FROM wxpay_stop_request WHERE id = $id});
	my @f = split /\|/, $out;
	return {
		state => $f[0],
		attempts => $f[1],
		http_status => $f[2],
		error_code => $f[3],
		unknown => $f[4],
		cancel_sign_type => $f[5],
	};
}

sub wait_req
{
	my ($id, $timeout) = @_;
	$timeout //= '60s';
	$node->safe_psql('postgres', "SELECT 1 FROM wxpay_wait_stop_request($id, '$timeout')");
	return row($id);
}

sub worker_waits_for
{
	my ($event) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND wait_event = '$event'"
	);
}

# the worker runs and serves
is(wait_req(enqueue_stop($node, 'q18-warm'))->{state}, 'succeeded', 'the worker serves');

# ---- item 5: a config change while the worker sleeps refreshes its certificates ----
{
	$node->safe_psql('postgres', certmode_config_sql(name => 'q18cert'));
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) > 0 FROM wxpay_platform_certificate WHERE config_name = 'q18cert'"),
		'item 5: the new config got its certificates');
	# (asleep for a moment: its own write of the certificates woke it once more)
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND state = 'idle' AND state_change < now() - interval '300 ms'"
		),
		'item 5: the worker sleeps, nothing to do');
	my $before = sim_stats()->{certificate_downloads};
	$node->safe_psql('postgres',
		"UPDATE wxpay_config SET backup_base_url = " . dq(sim_url()) . " WHERE name = 'q18cert'");
	ok(poll_until(sub { sim_stats()->{certificate_downloads} > $before }),
		'item 5: a URL changed while the worker slept: its certificates were refreshed at once, not after the 1 h interval'
	);
}

# ---- item 3: outcomes recorded in a claim transaction that fails are not lost ----
# Request A's stop is held in flight; B, a second request of the same plan,
# cannot be claimed while A is in flight.  When A's answer comes, the next
# claim records A's outcome and claims B in one transaction, which a trigger
# then fails.  A's verified success must be recorded all the same: no
# reconcile, no query.
{
	my $p = 'q18-3';
	$node->safe_psql(
		'postgres', q{
CREATE FUNCTION q18_fail_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'q18: the claim of request % fails', NEW.id;
END $$;
CREATE TRIGGER q18_fail_claim BEFORE UPDATE ON wxpay_stop_request FOR EACH ROW
    WHEN (NEW.state = 'sending' AND NEW.stop_reason = 'fail the claim')
    EXECUTE FUNCTION q18_fail_claim();
});
	ctl_post('/faults', { plan => $p, stop => ['hold'], query => [] });
	my $a = enqueue_stop($node, $p);
	ok(poll_until(sub { @{ sim_held($p, 'stop') } == 1 }), "item 3: A's stop is in flight");
	my $b = enqueue_stop($node, $p, cfg => 'default', reason => 'fail the claim');
	my $offset = -s $node->logfile;
	ctl_post('/release', { plan => $p });
	ok( eval {
			$node->wait_for_log(qr/ERROR:  q18: the claim of request $b fails/, $offset);
			1;
		},
		"item 3: the claim transaction that recorded A's outcome failed");
	my $r = wait_req($a);
	is($r->{state}, 'succeeded', 'item 3: A succeeded') or diag explain $r;
	is($r->{error_code}, '', 'item 3: ... with no reconcile (no WX003 on the way)');
	is($r->{attempts}, 1, 'item 3: ... in one attempt');
	is(sim_count('queries', $p), 0, 'item 3: ... and no query: the verified answer was recorded');
	is(sim_count('stop_attempts', $p), 1, 'item 3: one stop sent');
	$node->safe_psql('postgres', "DELETE FROM wxpay_stop_request WHERE id = $b");
	$node->safe_psql('postgres',
		'DROP TRIGGER q18_fail_claim ON wxpay_stop_request; DROP FUNCTION q18_fail_claim()');
}

# ---- item 2: a refusal after an unknown outcome is not a decided failure ----
# The exact race: attempt 1's stop reaches WeChat Pay, which holds it
# (defer); the worker is cancelled, so that attempt's outcome is unknown.
# Attempt 2's query finds the plan active, its stop is refused with 403
# NO_AUTH, and the recheck still finds the plan active.  Then WeChat Pay
# applies attempt 1's stop.  The row must not have ended "failed" with
# NO_AUTH: it stays unknown, and the next attempt finds the plan stopped.
{
	my $p = 'q18-2';
	ctl_post('/faults',
		{ plan => $p, stop => [ 'defer', 'http403' ], query => [ 'ok', 'ok', 'defer' ] });
	my $id = enqueue_stop($node, $p);
	ok(poll_until(sub { @{ sim_held($p, 'stop') } == 1 }), 'item 2: the first stop is held by WeChat Pay');
	my $first = sim_held($p, 'stop')->[0];
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', 'SELECT pg_cancel_backend(' . worker_pid($node) . ')');
	ok( eval {
			$node->wait_for_log(qr/ERROR:  canceling statement due to user request/, $offset);
			1;
		},
		'item 2: the worker was cancelled with the stop in flight (outcome unknown)');
	# attempt 2 decided: queued again (or, a moment later, attempt 3 in
	# flight, its query held), or failed
	ok( $node->poll_query_until('postgres',
			"SELECT (state = 'queued' AND attempts = 2) OR (state = 'sending' AND attempts = 3) OR state IN ('failed', 'succeeded') FROM wxpay_stop_request WHERE id = $id"
		),
		'item 2: the second attempt was decided');
	is(sim_count('stop_attempts', $p), 2, 'item 2: its stop was sent (and refused)');
	cmp_ok(sim_count('queries', $p), '>=', 2, 'item 2: after a query, and rechecked with a query');
	my $r = row($id);
	isnt($r->{state}, 'failed', "item 2: the refusal after an unknown outcome did not fail the request")
	  or diag explain $r;
	is($r->{error_code}, 'WX003', 'item 2: ... it stays unknown (WX003), not NO_AUTH');
	is($r->{unknown}, 't', 'item 2: ... the mark kept');
	# WeChat Pay applies attempt 1's stop now; attempt 3's query answers after
	ctl_post('/release', { plan => $p, seq => $first });
	ok(poll_until(sub { @{ sim_held($p, 'query') } == 1 }), "item 2: attempt 3 queries first");
	ctl_post('/release', { plan => $p });
	$r = wait_req($id);
	is($r->{state}, 'succeeded', 'item 2: the request succeeded: its first stop stopped the plan')
	  or diag explain $r;
	is($r->{cancel_sign_type}, 'MERCHANT', 'item 2: ... found by the query');
	is($r->{attempts}, 3, 'item 2: ... in the third attempt');
	is(sim_count('stop_attempts', $p), 2, 'item 2: no third stop');
	is(sim_count('already_stopped', $p), 0, 'item 2: no blind stop');

	# attempts run out while the outcome is unknown: WX003, never NO_AUTH
	my $p2 = 'q18-2b';
	ctl_post('/faults',
		{ plan => $p2, stop => [ 'http500', 'http403', 'http403' ], query => [ 'ok', 'ok', 'ok', 'ok' ] });
	$r = wait_req(enqueue_stop($node, $p2));
	is($r->{state}, 'failed', 'item 2: refused in every later attempt: failed') or diag explain $r;
	is($r->{error_code}, 'WX003', 'item 2: ... with WX003 (may or may not be stopped), not NO_AUTH');
	is($r->{unknown}, 't', 'item 2: ... the mark kept');
	is($r->{attempts}, 3, 'item 2: ... after wxpay.max_attempts attempts');
	my $msg = $node->safe_psql('postgres',
		"SELECT error_message FROM wxpay_stop_request WHERE merchant_sign_plan_no = '$p2'");
	like($msg, qr/NO_AUTH/, "item 2: ... the message names the last refusal");
}

# ---- item 1: nothing is sent before the synchronous standby has the claim ----
{
	my $p = 'q18-1';
	set_conf($node, "ALTER SYSTEM SET synchronous_standby_names = '*'");
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_replication WHERE sync_state = 'sync'"),
		'item 1: the standby is synchronous');
	is(wait_req(enqueue_stop($node, 'q18-1-warm'))->{state}, 'succeeded', 'item 1: served with the standby up');
	$standby->stop;
	my $id = enqueue_stop($node, $p);    # synchronous_commit = local: does not wait
	my $w = worker_pid($node);
	ok(worker_waits_for('SyncRep'), "item 1: the claim's commit waits for the standby");
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($w)");
	my $cancelled = qr/canceling the wait for synchronous replication of 1 claimed stop request$/m;
	ok( poll_until(
			sub {
				return 1 if sim_count('stop_attempts', $p) > 0;
				return 0 unless slurp_file($node->logfile, $offset) =~ $cancelled;
				return $node->safe_psql('postgres',
					"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $w AND wait_event = 'SyncRep'");
			}),
		'item 1: after the cancel, the worker is back waiting for the standby (or it sent the stop)');
	is(sim_count('stop_attempts', $p), 0, 'item 1: a cancelled wait for the standby sent nothing');
	my $log = slurp_file($node->logfile, $offset);
	like($log, qr/WARNING:  canceling wait for synchronous replication due to user request/,
		'item 1: PostgreSQL cut the wait short');
	like($log, qr/ERROR:  $cancelled/, "item 1: ... which the worker made its own error");
	is($node->safe_psql('postgres', "SELECT state || '|' || attempts FROM wxpay_stop_request WHERE id = $id"),
		'queued|0', 'item 1: the claim was released as it was');

	# SIGTERM in the same wait: the worker exits; the next one sends nothing
	# either before the standby has its claim
	$offset = -s $node->logfile;
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($w)");
	ok(eval { $node->wait_for_log(qr/worker $w stopped serving/, $offset); 1 },
		'item 1: the terminated worker exited');
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND pid <> $w AND wait_event = 'SyncRep'"
		),
		"item 1: the next worker's claim waits for the standby");
	is(sim_count('stop_attempts', $p), 0, 'item 1: still nothing sent');
	is(sim_count('queries', $p), 0, 'item 1: not even a query');

	$standby->start;
	my $r = wait_req($id);
	is($r->{state}, 'succeeded', 'item 1: sent once the standby was back') or diag explain $r;
	is(sim_count('stop_attempts', $p), 1, 'item 1: one stop');
	is(sim_count('already_stopped', $p), 0, 'item 1: no blind second stop');
	ok( $standby->poll_query_until('postgres',
			"SELECT state = 'succeeded' FROM wxpay_stop_request WHERE id = $id"),
		'item 1: the standby has the outcome');
	set_conf($node, "ALTER SYSTEM RESET synchronous_standby_names");
}

# ---- item 4: a hung merchant, its refresh included, at the smallest concurrency ----
# The hung merchant's API (a second simulator) never answers anything, its
# certificate download included; it is in public-key mode with an APIv3 key,
# so its stops need no certificates.  At wxpay.worker_concurrency = 2 (the
# least allowed) it may hold one slot, whatever it sends.
{
	my ($ret, $out, $err) = $node->psql('postgres', 'ALTER SYSTEM SET wxpay.worker_concurrency = 1');
	like($err, qr/1 is outside the valid range/, 'item 4: wxpay.worker_concurrency = 1 is refused');
	is($node->safe_psql('postgres', 'SHOW wxpay.worker_concurrency'), '2', 'item 4: the worker runs at 2');

	my $hung = start_sim();
	ctl_post_at($hung, '/faults', { plan => '*', fault => 'stall', times => 1000 });
	my $hstats = sub { return ctl_get_at($hung, '/stats'); };
	$node->safe_psql('postgres',
		config_insert_sql(
			name => 'q18hung',
			base_url => $hung->{url},
			apiv3_key => pki_file('apiv3_key.txt', chomp => 1)));
	ok(poll_until(sub { $hstats->()->{certificate_downloads} >= 1 }),
		"item 4: the hung merchant's certificate download hangs");
	my @plans = map { "q18-4-hung-$_" } 1 .. 2;
	enqueue_stop($node, $_, cfg => 'q18hung') for @plans;
	# claimed, and whatever the worker lets the hung merchant send has gone
	ok( poll_until(
			sub {
				return 0
				  unless $node->safe_psql('postgres',
					"SELECT count(*) = 2 FROM wxpay_stop_request WHERE config_name = 'q18hung' AND state = 'sending'"
				  );
				return 1 if scalar(keys %{ $hstats->()->{stop_attempts} }) > 0;
				return $node->safe_psql('postgres',
					"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND query LIKE 'waiting for answers%'"
				);
			}),
		'item 4: the hung merchant holds what it may');
	my $id = enqueue_stop($node, 'q18-4-fast');
	my $r = wait_req($id, '20s');
	is($r->{state}, 'succeeded', "item 4: the other merchant's stop went through") or diag explain $r;
	is( $node->safe_psql('postgres',
			"SELECT count(*) FROM wxpay_stop_request WHERE config_name = 'q18hung' AND (state <> 'sending' OR attempts <> 1)"
		),
		0,
		'item 4: ... while nothing of the hung merchant was answered');
	my $s = $hstats->();
	my $sent = 0;
	$sent += $_ for values %{ $s->{stop_attempts} };
	is($s->{certificate_downloads} + $sent, 1,
		'item 4: the hung merchant held one slot of two, its refresh included');
	stop_sim($hung);
}

# no crash of our own
my $log = slurp_file($node->logfile);
unlike($log, qr/was terminated by signal (?!15\b)\d+/, 'no process died of a signal');
unlike($log, qr/TRAP:|PANIC/, 'no assertion failure or PANIC');

$standby->stop;
$node->stop;
done_testing();
