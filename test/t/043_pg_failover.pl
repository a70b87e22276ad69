
# Copyright: wxpay_signplan authors
#
# 043_pg_failover.pl: the queue across a PostgreSQL failover.  For each
# replication mode (synchronous, asynchronous): a primary with a streaming
# standby drains a queue with stops in flight; its WAL sender is frozen
# (SIGSTOP: a network partition), the worker goes on for a while, then the
# primary is killed (immediate) and the standby promoted.  On the new
# primary every request must finish, every plan be stopped exactly once per
# the simulator, no stop be sent for a stopped plan and no request end
# failed.  The asynchronous run must actually have lost claims: stops the
# simulator performed whose rows the standby still had queued and unmarked
# (the timeline rule of queue.c queries them first).  Synchronous: there is
# no such row.  Also: neither the launcher nor the worker runs on a standby,
# a standby refuses to queue, and both serve after the promotion.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $N = 200;	# requests per mode
my $C = 10;		# worker_concurrency

sub count_on
{
	my ($node, $prefix, $where) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%' AND $where"
	);
}

sub wxpay_processes
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ('wxpay_signplan launcher', 'wxpay_signplan worker')"
	);
}

sub failover
{
	my ($mode) = @_;
	my $sync = $mode eq 'sync';
	my $prefix = "q43$mode-";
	my $what = "$mode replication";

	my $primary = PostgreSQL::Test::Cluster->new("pgfo_${mode}_primary");
	$primary->init(
		allows_streaming => 1,
		extra => [ '--encoding=UTF8', '--locale=C' ]);
	$primary->append_conf('postgresql.conf',
		queue_test_conf('wxpay.worker_concurrency' => $C));
	$primary->start;
	$primary->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');
	$primary->safe_psql('postgres', config_insert_sql());
	$primary->backup('bk');

	# the same settings (the backup's postgresql.conf), streaming
	my $standby = PostgreSQL::Test::Cluster->new("pgfo_${mode}_standby");
	$standby->init_from_backup($primary, 'bk', has_streaming => 1);
	$standby->start;
	my $sname = $standby->name;
	if ($sync)
	{
		$primary->safe_psql('postgres',
			"ALTER SYSTEM SET synchronous_standby_names = '\"$sname\"'");
		$primary->reload;
		ok( $primary->poll_query_until('postgres',
				"SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = '$sname'"
			),
			"$what: the standby is synchronous");
	}
	else
	{
		ok( $primary->poll_query_until('postgres',
				"SELECT count(*) = 1 FROM pg_stat_replication WHERE application_name = '$sname' AND sync_state = 'async'"
			),
			"$what: the standby streams asynchronously");
	}

	is(wxpay_processes($standby), '0',
		"$what: no wxpay_signplan launcher or worker on the standby");
	my ($ret, $out, $err) = $standby->psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('${prefix}x', 'r')",
		on_error_stop => 0, extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
	like($err, qr/25006/, "$what: a standby refuses to queue (25006)");

	# a drain with stops in flight
	ctl_post('/settings', { latency_ms => 300 });
	$primary->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('$prefix' || i, 'r') FROM generate_series(1, $N) i"
	);
	ok( $standby->poll_query_until('postgres',
			"SELECT count(*) = $N FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%'"
		),
		"$what: the standby has the $N requests");
	ok( $primary->poll_query_until('postgres',
			"SELECT count(*) FILTER (WHERE state = 'succeeded') >= $C AND count(*) FILTER (WHERE state = 'sending') > 0 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%'"
		),
		"$what: some requests done, some in flight");

	# the partition: the WAL sender frozen
	my $walsender = $primary->safe_psql('postgres',
		"SELECT pid FROM pg_stat_replication WHERE application_name = '$sname'");
	ok($walsender =~ /^\d+$/, "$what: the WAL sender found");
	kill 'STOP', $walsender;
	my $s0 = count_on($primary, $prefix, "state = 'succeeded'");
	if ($sync)
	{
		# the worker's next commit waits for the standby; nothing is sent
		# after that
		ok( $primary->poll_query_until('postgres',
				"SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'"
			),
			"$what: the worker waits for the frozen standby");
	}
	else
	{
		# more than the requests claimed before the freeze finish: the
		# later ones were claimed and sent in commits the standby never gets
		my $enough = $s0 + 2 * $C + 10;
		ok( $primary->poll_query_until('postgres',
				"SELECT count(*) >= $enough FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%' AND state = 'succeeded'"
			),
			"$what: the primary goes on alone");
	}
	ok(count_on($primary, $prefix, "state = 'queued'") > 0,
		"$what: requests still queued on the primary");

	# the crash; the frozen WAL sender dies by the postmaster's SIGKILL
	$primary->stop('immediate');
	# what the standby will start from: everything it received, replayed
	# (no WAL receiver any more, and the startup process waits for more WAL;
	# the last received record may be incomplete, so the replay position
	# need not reach the receive position)
	ok( $standby->poll_query_until('postgres',
			"SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver)"
			  . " AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'startup'"
			  . " AND wait_event IN ('RecoveryWalStream', 'RecoveryRetrieveRetryInterval'))"),
		"$what: the standby replayed what it received");
	is(wxpay_processes($standby), '0',
		"$what: still no wxpay_signplan process on the standby");

	# rows the old primary claimed and sent whose claim the standby lacks
	my %queued_unmarked = map { $_ => 1 } split /\n/,
	  $standby->safe_psql('postgres',
		"SELECT merchant_sign_plan_no FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%' AND state = 'queued' AND NOT outcome_unknown"
	  );
	my $in_flight_rows = count_on($standby, $prefix, "state = 'sending'");
	my $st = sim_stats();
	my @lost = grep { ($st->{stops}{$_} // 0) > 0 } sort keys %queued_unmarked;
	my $standby_succeeded = count_on($standby, $prefix, "state = 'succeeded'");
	my $stopped = grep { ($st->{stops}{"$prefix$_"} // 0) > 0 } 1 .. $N;
	note("$what: stopped per the simulator $stopped, succeeded on the standby $standby_succeeded, "
		  . "sending there $in_flight_rows, queued unmarked but stopped "
		  . scalar(@lost));
	cmp_ok($stopped, '>', $standby_succeeded,
		"$what: stops the standby does not know as finished (in flight at the crash)");
	if ($sync)
	{
		is(scalar(@lost), 0,
			"$what: every stop sent has its claim on the standby");
	}
	else
	{
		cmp_ok(scalar(@lost), '>', 0,
			"$what: the standby lost claims of stops that were sent");
	}

	# the promotion; the stops go quickly now
	ctl_post('/settings', { latency_ms => 0 });
	$standby->promote;
	ok( $standby->poll_query_until('postgres',
			"SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type IN ('wxpay_signplan launcher', 'wxpay_signplan worker')"
		),
		"$what: the launcher and the worker serve the new primary");
	ok( $standby->poll_query_until('postgres',
			"SELECT count(*) = $N FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE '$prefix%' AND state IN ('succeeded', 'failed')"
		),
		"$what: every request finished on the new primary");

	is(count_on($standby, $prefix,
			"state = 'succeeded' AND (result).cancel_sign_type = 'MERCHANT'"),
		$N, "$what: all $N requests succeeded with the stopped plan");
	is(count_on($standby, $prefix, "state = 'failed'"),
		'0', "$what: no failed request");
	$st = sim_stats();
	my ($once, $blind, $queried) = (0, 0, 0);
	for my $i (1 .. $N)
	{
		my $p = "$prefix$i";
		$once++ if ($st->{stops}{$p} // 0) == 1;
		$blind += $st->{already_stopped}{$p} // 0;
	}
	$queried++ for grep { ($st->{queries}{$_} // 0) > 0 } @lost;
	is($once, $N, "$what: the simulator stopped each plan exactly once");
	is($blind, 0, "$what: no stop was sent for an already stopped plan");
	is($queried, scalar(@lost),
		"$what: each request whose claim was lost was queried on the new primary");

	# a request queued after the promotion is sent as usual
	my $id = $standby->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('${prefix}after', 'r')");
	is( $standby->safe_psql('postgres',
			"SELECT state FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded',
		"$what: a request queued on the new primary succeeds");
	is(($st = sim_stats())->{queries}{"${prefix}after"} // 0,
		0, "$what: ... without a query first (it is of the current timeline)");

	is( $standby->safe_psql('postgres',
			"SELECT timeline = 2 FROM wxpay_stop_request WHERE id = $id"),
		't', "$what: ... recorded on the new timeline");

	# a row of no timeline (queued before 0.4.0, or inserted by hand) is
	# queried first
	$id = $standby->safe_psql('postgres',
		"BEGIN;"
		  . " DO \$\$ BEGIN PERFORM wxpay_stop_sign_plan_async('${prefix}null', 'r'); END \$\$;"
		  . " UPDATE wxpay_stop_request SET timeline = NULL"
		  . "  WHERE merchant_sign_plan_no = '${prefix}null' RETURNING id;"
		  . " COMMIT;");
	is( $standby->safe_psql('postgres',
			"SELECT state FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded',
		"$what: a request of no timeline succeeds");
	$st = sim_stats();
	is( ($st->{queries}{"${prefix}null"} // 0) . '/' . ($st->{stops}{"${prefix}null"} // 0),
		'1/1', "$what: ... after a query first");

	my $log = slurp_file($standby->logfile);
	unlike($log, qr/TRAP:|PANIC/, "$what: no assertion failure or PANIC");
	$standby->stop;
	return;
}

failover('sync');
failover('async');

# The library before ALTER EXTENSION ... UPDATE: a 0.3.0 queue (no timeline
# column) is still served, and after the update its rows, of no timeline,
# are queried first.
{
	my $node = PostgreSQL::Test::Cluster->new('pgfo_old_schema');
	$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	$node->append_conf('postgresql.conf', queue_test_conf());
	$node->start;
	$node->safe_psql('postgres', "CREATE EXTENSION wxpay_signplan VERSION '0.3.0'");
	$node->safe_psql('postgres', config_insert_sql());
	my $id = $node->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('q43old-1', 'r')");
	is( $node->safe_psql('postgres',
			"SELECT state FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded', 'a 0.3.0 queue: a request is queued and sent');
	$id = $node->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('q43old-2', 'r', 'default', '1230000431')");
	is( $node->safe_psql('postgres',
			"SELECT state FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded', 'a 0.3.0 queue: a partner request is queued and sent');

	# queued before the update, claimed after it
	$node->safe_psql('postgres',
		"BEGIN; SELECT wxpay_stop_sign_plan_async('q43old-3', 'r');"
		  . " UPDATE wxpay_stop_request SET next_attempt_at = now() + '1 hour'"
		  . "  WHERE merchant_sign_plan_no = 'q43old-3'; COMMIT;");
	$node->safe_psql('postgres', 'ALTER EXTENSION wxpay_signplan UPDATE');
	# due now; a request queued with it wakes the worker
	$id = $node->safe_psql('postgres',
		"BEGIN; DO \$\$ BEGIN PERFORM wxpay_stop_sign_plan_async('q43old-4', 'r'); END \$\$;"
		  . " UPDATE wxpay_stop_request SET next_attempt_at = now()"
		  . "  WHERE merchant_sign_plan_no = 'q43old-3' RETURNING id; COMMIT;");
	is( $node->safe_psql('postgres',
			"SELECT state || ' ' || (timeline IS NOT NULL) FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded true', 'after the update: a request queued before it is sent, its timeline recorded');
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 4 FROM wxpay_stop_request WHERE state = 'succeeded'"),
		'all four requests succeeded');
	my $st = sim_stats();
	is( join(' ', map { ($st->{queries}{"q43old-$_"} // 0) . '/' . ($st->{stops}{"q43old-$_"} // 0) } 1, 3, 4),
		'0/1 1/1 0/1',
		'... and only the one queued before the update and claimed after it was queried first');
	$node->stop;
}

done_testing();
