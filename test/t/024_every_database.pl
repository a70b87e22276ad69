
# 024_every_database.pl: the queue in every database that installs the
# extension, with no database named anywhere (issue 21).
#
#  (a) two databases made before the server started, each with the
#      extension: both drained, each plan stopped once, and both workers in
#      flight at once (a hung merchant in one beside fast stops in the
#      other);
#  (b) a database created while the server runs (CREATE DATABASE, CREATE
#      EXTENSION, a config) is served;
#  (c) more databases with work than wxpay.max_workers: all served, never
#      more workers than the cap;
#  (d) CREATE DATABASE ... TEMPLATE, ALTER DATABASE ... RENAME / SET
#      TABLESPACE and DROP DATABASE of served databases while their workers
#      run are not blocked;
#  (e) no worker ever in a template, in a database that does not allow
#      connections, and only once (the first check) in a database without
#      the extension;
#  (f) wxpay.rate_limit holds per mchid across databases: one merchant
#      configured in two databases shares one budget;
#  (g) wxpay_queue_workers() shows the launcher and each database's worker
#      or why none runs;
#  (h) one database's worker killed with a request in flight: that request
#      is settled by a query and stopped once; the other database's worker
#      is not disturbed;
#  (i) a worker started on demand downloads no platform certificate that
#      is not due (the schedule outlives each worker), and after a config
#      change made while no worker ran, the next one refreshes at once;
#      wxpay_queue_status says why no worker runs;
#  (j) taking turns: with one place, a database whose backlog outlasts a
#      turn (10 s) gives its place to another database with work, which is
#      served before that backlog ends; never more workers than the place;
#  (k) one database's worker failing at every round (its queue table
#      renamed away) does not stop another database's stops;
#  (l) max_worker_processes exhausted: the launcher says so once, tries
#      again, and the request is served once there is room.
#
# Plan numbers start with e24.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WxpayTest;

my $node = PostgreSQL::Test::Cluster->new('everydb');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf('postgresql.conf',
	queue_test_conf(
		'wxpay.max_workers' => 2,
		'wxpay.worker_idle_timeout' => "'1s'",
		'wxpay.request_timeout' => "'30s'"));
$node->start;

sub log_from { return log_since($node, $_[0]); }

sub setup_db
{
	my ($db) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION wxpay_signplan');
	$node->safe_psql($db, config_insert_sql());
	return;
}

# ids of plans queued in one statement
sub enqueue
{
	my ($db, @plans) = @_;
	my $list = join(', ', map { "'$_'" } @plans);
	return split /\n/, $node->safe_psql($db,
		"SELECT wxpay_stop_sign_plan_async(p, 'subscription ended') FROM unnest(ARRAY[$list]) p");
}

sub all_done
{
	my ($db) = @_;
	return $node->poll_query_until($db,
		"SELECT count(*) = 0 FROM wxpay_stop_request WHERE state IN ('queued', 'sending')");
}

sub states
{
	my ($db) = @_;
	return $node->safe_psql($db,
		"SELECT state, count(*) FROM wxpay_stop_request GROUP BY state ORDER BY state");
}

sub workers_in
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = '$db'");
}

# databases made before the server starts, of every kind
setup_db('e24a');
setup_db('e24b');
$node->safe_psql('postgres', 'CREATE DATABASE e24plain');
setup_db('e24tpl');
$node->safe_psql('postgres', 'ALTER DATABASE e24tpl IS_TEMPLATE true');
setup_db('e24noconn');
$node->safe_psql('postgres', 'ALTER DATABASE e24noconn ALLOW_CONNECTIONS false');
$node->restart;
my $start = length(slurp_file($node->logfile));

# ---- (a) two databases at once; a hung merchant beside fast stops ----
{
	my @a = map { "e24-a-$_" } 1 .. 12;
	my @b = map { "e24-b-$_" } 1 .. 12;
	enqueue('e24a', 'fault-hold-e24-a');
	enqueue('e24b', 'fault-hold-e24-b');
	# both held at the simulator together: two workers in flight at once
	my $held = 0;
	for (1 .. 600)
	{
		$held = grep { $_->{plan} =~ /^fault-hold-e24-[ab]$/ } @{ ctl_get('/held') };
		last if $held == 2;
		select(undef, undef, undef, 0.1);
	}
	is($held, 2, 'both databases have a request in flight at once');

	# beside e24a's hung merchant, e24b's other stops go through
	enqueue('e24b', @b);
	ok( $node->poll_query_until('e24b',
			"SELECT count(*) = 12 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'e24-b-%' AND state = 'succeeded'"),
		'a hung merchant in one database does not delay another database');
	enqueue('e24a', @a);
	ctl_post('/release', {});
	ok(all_done('e24a') && all_done('e24b'), 'both databases drained');
	is(states('e24a'), 'succeeded|13', 'e24a: every request succeeded');
	is(states('e24b'), 'succeeded|13', 'e24b: every request succeeded');
	my $st = sim_stats();
	my @twice = grep { ($st->{stop_attempts}{$_} // 0) != 1 || ($st->{stops}{$_} // 0) != 1 }
	  (@a, @b, 'fault-hold-e24-a', 'fault-hold-e24-b');
	is(join(',', @twice), '', 'each plan stopped once, with one stop request');
}

# ---- (b) a database created while the server runs ----
{
	setup_db('e24c');
	my @ids = enqueue('e24c', map { "e24-c-$_" } 1 .. 3);
	ok(all_done('e24c'), 'a database created while the server runs is served');
	is(states('e24c'), 'succeeded|3', 'e24c: every request succeeded');
}

# ---- (c) more databases with work than wxpay.max_workers (2) ----
{
	setup_db('e24d');
	my %plans;
	for my $db (qw(e24a e24b e24c e24d))
	{
		$plans{$db} = [ map { "e24-m-$db-$_" } 1 .. 8 ];
	}
	enqueue($_, @{ $plans{$_} }) for sort keys %plans;
	my $most = 0;
	my $done = 0;
	for (1 .. 1200)
	{
		my $n = $node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'");
		$most = $n if $n > $most;
		$done = 1;
		for my $db (sort keys %plans)
		{
			$done = 0
			  if $node->safe_psql($db,
				"SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'e24-m-%' AND state IN ('queued', 'sending')") != 0;
		}
		last if $done;
		select(undef, undef, undef, 0.1);
	}
	ok($done, 'four databases with work, two places: all served');
	ok($most <= 2, "never more workers than wxpay.max_workers (saw $most)");
	my $st = sim_stats();
	my @twice = grep { ($st->{stops}{$_} // 0) != 1 } map { @$_ } values %plans;
	is(join(',', @twice), '', 'each plan stopped once');
}

# ---- (d) CREATE DATABASE ... TEMPLATE, RENAME, DROP of served databases ----
{
	# workers that stay, so that each command meets one
	$node->safe_psql('postgres', "ALTER SYSTEM SET wxpay.worker_idle_timeout = 0");
	$node->reload;
	enqueue('e24a', 'e24-d-1');
	ok(all_done('e24a'), 'e24a served');
	ok($node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24a'"),
		'a worker serves e24a');
	# an unfinished request in e24a (due tomorrow): the copy must not send it
	$node->safe_psql('e24a',
		"INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, next_attempt_at, timeline)"
		  . " VALUES ('default', 'e24-d-copied', 'r', now() + interval '1 day',"
		  . " (SELECT max(timeline) FROM wxpay_stop_request))");
	my $offset = -s $node->logfile;
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE e24copy TEMPLATE e24a');
	is($ret, 0, 'CREATE DATABASE ... TEMPLATE of a served database succeeds');
	ok(time - $t0 < 4, 'CREATE DATABASE ... TEMPLATE did not wait for the worker');
	$node->safe_psql('e24a', "DELETE FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'e24-d-copied'");

	# the copy holds e24a's unfinished request: its queue is e24a's, so
	# nothing of it is sent and nothing is added to it until it is adopted
	$node->safe_psql('e24copy',
		"UPDATE wxpay_stop_request SET next_attempt_at = now() WHERE merchant_sign_plan_no = 'e24-d-copied'");
	($ret, $out, $err) = $node->psql('e24copy',
		"SELECT wxpay_stop_sign_plan_async('e24-d-copy', 'r')");
	like($err, qr/ERROR:  the stop request queue of database "e24copy" belongs to another database/,
		'a copy holding unfinished requests refuses to queue more');
	ok( eval {
			$node->wait_for_log(
				qr/WARNING:  the stop request queue of database "e24copy" belongs to another database/,
				$offset);
			1;
		},
		"the copy's worker says whose queue it holds, and sends nothing");
	is(sim_count('stop_attempts', 'e24-d-copied') + sim_count('queries', 'e24-d-copied'), 0,
		'nothing of the copied request was sent');
	is($node->safe_psql('e24copy', 'SELECT wxpay_adopt_stop_requests()'), '1',
		'wxpay_adopt_stop_requests() marks the one unfinished request');
	ok(all_done('e24copy'), 'the adopted request is served');
	is(sim_count('queries', 'e24-d-copied') >= 1 ? 'queried' : 'not queried', 'queried',
		'the adopted request was queried before anything was sent');
	is(sim_count('stops', 'e24-d-copied'), 1, 'and stopped once');

	# the adopted copy is served like any other
	enqueue('e24copy', 'e24-d-copy');
	ok(all_done('e24copy'), 'the copy is served');
	ok($node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24copy'"),
		'a worker serves the copy');
	$t0 = time;
	($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE e24copy RENAME TO e24renamed');
	is($ret, 0, 'ALTER DATABASE RENAME of a served database succeeds');
	ok(time - $t0 < 4, 'ALTER DATABASE RENAME did not wait for the worker');
	enqueue('e24renamed', 'e24-d-renamed');
	ok(all_done('e24renamed'), 'the renamed database is served again');
	ok($node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24renamed'"),
		'a worker serves the renamed database');
	$t0 = time;
	($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE e24renamed');
	is($ret, 0, 'DROP DATABASE of a served database succeeds');
	ok(time - $t0 < 4, 'DROP DATABASE did not wait for the worker');

	# the template's source is served again
	enqueue('e24a', 'e24-d-2');
	ok(all_done('e24a'), 'e24a is served again after the copy');

	# ALTER DATABASE ... SET TABLESPACE needs the database to itself, too
	ok($node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24a'"),
		'a worker serves e24a again');
	my $tsdir = PostgreSQL::Test::Utils::tempdir_short();
	$node->safe_psql('postgres', "CREATE TABLESPACE e24ts LOCATION '$tsdir'");
	$t0 = time;
	($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE e24a SET TABLESPACE e24ts');
	is($ret, 0, 'ALTER DATABASE ... SET TABLESPACE of a served database succeeds');
	ok(time - $t0 < 4, 'ALTER DATABASE ... SET TABLESPACE did not wait for the worker');
	enqueue('e24a', 'e24-d-3');
	ok(all_done('e24a'), 'e24a is served again after the move');
	my $st = sim_stats();
	is(join(',', map { $st->{stops}{$_} // 0 } qw(e24-d-1 e24-d-copy e24-d-renamed e24-d-2 e24-d-3)),
		'1,1,1,1,1', 'each plan stopped once');
	$node->safe_psql('postgres', "ALTER SYSTEM RESET wxpay.worker_idle_timeout");
	$node->reload;
}

# ---- (e) no worker in templates, plain or closed databases ----
{
	# more looks: a new database, and time for idle workers to come and go
	my $off = length(slurp_file($node->logfile));
	$node->safe_psql('postgres', 'CREATE DATABASE e24later');
	$node->wait_for_log(qr/wxpay_signplan worker \d+ stopped serving database "e24later"/, $off);
	pass('a new database without the extension is checked once');
	enqueue('e24b', 'e24-e-1');
	ok(all_done('e24b'), 'e24b served');
	my $log = log_from($start);
	for my $db (qw(template0 template1 e24tpl e24noconn))
	{
		is(count_of(qr/wxpay_signplan worker \d+ started serving database "$db"/, $log), 0,
			"no worker ever in $db");
	}
	is(count_of(qr/wxpay_signplan worker \d+ started serving database "e24plain"/, $log), 1,
		'one check of the database without the extension, and no more');
	is(count_of(qr/wxpay_signplan worker \d+ started serving database "e24later"/, $log), 1,
		'one check of the new database without the extension, and no more');
	unlike($log, qr/FATAL:  [^\n]*(?:database|connections)/,
		'no worker failed to connect anywhere');
}

# ---- (f) one merchant in two databases: one rate budget ----
{
	$node->safe_psql('postgres', 'ALTER SYSTEM SET wxpay.rate_limit = 2');
	$node->reload;
	my @a = map { "e24-f-a-$_" } 1 .. 10;
	my @b = map { "e24-f-b-$_" } 1 .. 10;
	enqueue('e24a', @a);
	enqueue('e24b', @b);
	ok(all_done('e24a') && all_done('e24b'), 'rate limited: both databases drained');
	# when each stop reached the simulator
	my @at;
	for my $p (@a, @b)
	{
		for my $ev (@{ ctl_get("/events?plan=$p") })
		{
			next unless $ev->{op} eq 'stop';
			my ($h, $m, $sec) = $ev->{at} =~ /T(\d+):(\d+):([\d.]+)Z$/;
			push @at, $h * 3600 + $m * 60 + $sec;
		}
	}
	@at = sort { $a <=> $b } @at;
	is(scalar(@at), 20, 'rate limited: twenty stops, one each');
	# At most 2 starts in any second for the one mchid: the 20 starts span
	# at least 9 s; with a budget per database (4 a second in all) they would
	# span 4.5 s.  Arrival times at the simulator carry each request's delay
	# (a loaded machine, a new connection's handshake), which can shorten the
	# span seen there by the first request's delay only: judged against 6.5 s,
	# that leaves 2.5 s for it, and still tells one budget from two.
	my $span = $at[-1] - $at[0];
	cmp_ok($span, '>=', 6.5,
		'rate limited: never more than wxpay.rate_limit stops of one mchid in a second, across both databases');
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET wxpay.rate_limit');
	$node->reload;
}

# ---- (g) wxpay_queue_workers() ----
{
	$node->safe_psql('postgres', "ALTER SYSTEM SET wxpay.worker_idle_timeout = 0");
	$node->reload;
	enqueue('e24b', 'e24-g-1');
	ok(all_done('e24b'), 'e24b served');
	my $q = "SELECT coalesce(datname::text, ''), backend_type, pid IS NOT NULL, state FROM wxpay_queue_workers() ORDER BY 1";
	my %row;
	ok( $node->poll_query_until('e24b',
			"SELECT pid IS NOT NULL FROM wxpay_queue_workers() WHERE datname = 'e24b'"),
		'wxpay_queue_workers: the worker of e24b shows');
	for (split /\n/, $node->safe_psql('e24b', $q))
	{
		my ($db, $type, $haspid, $state) = split /\|/;
		$row{$db} = "$type|$haspid|$state";
	}
	is($row{''}, 'wxpay_signplan launcher|t|running', 'wxpay_queue_workers: the launcher');
	is($row{e24b}, 'wxpay_signplan worker|t|serving', 'wxpay_queue_workers: e24b is served');
	is($node->safe_psql('e24b', 'SELECT DISTINCT worker_status FROM wxpay_queue_status'),
		'serving', 'wxpay_queue_status: worker_status says e24b is served');
	is($row{e24plain}, 'wxpay_signplan worker|f|not served: the extension is not installed',
		'wxpay_queue_workers: e24plain has no extension');
	ok(!exists $row{e24tpl} && !exists $row{template1},
		'wxpay_queue_workers: templates are not tracked');
	$node->safe_psql('e24b', 'CREATE ROLE regress_e24 LOGIN');
	my ($ret, $out, $err) = $node->psql('e24b', 'SELECT * FROM wxpay_queue_workers()',
		extra_params => [ '-U', 'regress_e24' ]);
	like($err, qr/permission denied for function wxpay_queue_workers/,
		'wxpay_queue_workers: not for PUBLIC');
	$node->safe_psql('e24b', 'GRANT pg_monitor TO regress_e24');
	($ret, $out, $err) = $node->psql('e24b', 'SELECT count(*) > 0 FROM wxpay_queue_workers()',
		extra_params => [ '-U', 'regress_e24' ]);
	is($out, 't', 'wxpay_queue_workers: for pg_monitor');
	$node->safe_psql('postgres', "ALTER SYSTEM RESET wxpay.worker_idle_timeout");
	$node->reload;
}

# ---- (h) a worker killed with a request in flight ----
{
	# the stops held (acted on, unanswered); queries answered
	ctl_post('/faults', { plan => $_, stop => ['hold'] }) for qw(e24-h-a e24-h-b);
	my ($ia) = enqueue('e24a', 'e24-h-a');
	my ($ib) = enqueue('e24b', 'e24-h-b');
	my $held = 0;
	for (1 .. 600)
	{
		$held = grep { $_->{plan} =~ /^e24-h-[ab]$/ } @{ ctl_get('/held') };
		last if $held == 2;
		select(undef, undef, undef, 0.1);
	}
	is($held, 2, 'killed worker: both databases have a request in flight');
	my $wa = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24a'");
	my $wb = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24b'");
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($wa)");
	ok( $node->poll_query_until('e24a',
			"SELECT state = 'succeeded' FROM wxpay_stop_request WHERE id = $ia"),
		'killed worker: its request in flight is settled by the next worker');
	is($node->safe_psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24b'"),
		$wb, 'killed worker: the other database\'s worker was not disturbed');
	ctl_post('/release', { plan => 'e24-h-b' });
	ok( $node->poll_query_until('e24b',
			"SELECT state = 'succeeded' FROM wxpay_stop_request WHERE id = $ib"),
		'killed worker: the other database\'s request finished');
	my $st = sim_stats();
	is(join(',', map { ($st->{stop_attempts}{$_} // 0) . '/' . ($st->{stops}{$_} // 0) }
			qw(e24-h-a e24-h-b)),
		'1/1,1/1', 'killed worker: each plan sent and stopped once');
	cmp_ok($st->{queries}{'e24-h-a'} // 0, '>=', 1,
		'killed worker: the unknown outcome was settled by a query');
}

# ---- (i) a worker started on demand downloads no certificate before it is due ----
{
	setup_db('e24cert');
	$node->safe_psql('e24cert', certmode_config_sql(name => 'e24i'));
	ok( $node->poll_query_until('e24cert',
			"SELECT count(*) > 0 FROM wxpay_platform_certificate WHERE config_name = 'e24i'"),
		'certificates: a new config got its certificates at once');
	my $gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker' AND datname = 'e24cert'";
	ok($node->poll_query_until('postgres', $gone), 'certificates: the idle worker left');
	is( $node->safe_psql('e24cert',
			'SELECT DISTINCT worker_status || \'|\' || (worker_next_start_at > now()) FROM wxpay_queue_status'),
		'idle: nothing to do|true',
		'wxpay_queue_status: no worker runs, worker_status says why, and when one is next due');
	my $before = sim_stats()->{certificate_downloads};
	for my $round (1 .. 2)
	{
		my ($id) = enqueue('e24cert', "e24-i-$round");
		ok( $node->poll_query_until('e24cert',
				"SELECT state = 'succeeded' FROM wxpay_stop_request WHERE id = $id"),
			"certificates: round $round: a worker started on demand served the stop");
		ok($node->poll_query_until('postgres', $gone), "certificates: round $round: the worker left again");
	}
	is(sim_stats()->{certificate_downloads}, $before,
		'certificates: two workers started on demand downloaded nothing that was not due (12 h interval)');
	# a config changed while no worker runs: the next worker refreshes at once
	$node->safe_psql('e24cert',
		"UPDATE wxpay_config SET backup_base_url = " . dq(sim_url()) . " WHERE name = 'e24i'");
	ok(poll_until(sub { sim_stats()->{certificate_downloads} > $before }),
		'certificates: a config changed while no worker ran: the next worker refreshed them at once');
}

# ---- (j) taking turns: a backlog longer than a turn does not hold the only place ----
{
	# one place; every answer takes 400 ms, 4 in flight: e24a's 160 stops
	# need at least 16 s of one worker, longer than a turn (10 s)
	$node->safe_psql('postgres', 'ALTER SYSTEM SET wxpay.max_workers = 1');
	$node->reload;
	ctl_post('/settings', { latency_ms => 400 });
	my @a = map { "e24-j-a-$_" } 1 .. 160;
	my @b = map { "e24-j-b-$_" } 1 .. 12;
	enqueue('e24a', @a);
	ok( $node->poll_query_until('e24a',
			"SELECT count(*) > 0 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'e24-j-a-%' AND state = 'succeeded'"),
		'turns: e24a\'s backlog is being served');
	enqueue('e24b', @b);
	my $most = 0;
	my $a_left;
	for (1 .. 1200)
	{
		my $n = $node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'");
		$most = $n if $n > $most;
		my $b_done = $node->safe_psql('e24b',
			"SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'e24-j-b-%' AND state = 'succeeded'");
		if ($b_done == 12)
		{
			$a_left = $node->safe_psql('e24a',
				"SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'e24-j-a-%' AND state IN ('queued', 'sending')");
			last;
		}
		select(undef, undef, undef, 0.1);
	}
	ok(defined $a_left, 'turns: e24b was served while e24a had a backlog');
	cmp_ok($a_left // 0, '>', 0,
		'turns: e24b\'s stops finished before e24a\'s backlog did (it got a turn, it did not wait for the end)');
	ok($most <= 1, "turns: never more workers than wxpay.max_workers = 1 (saw $most)");
	ok(all_done('e24a'), 'turns: e24a\'s backlog finished after its turn came back');
	my $st = sim_stats();
	my @twice = grep { ($st->{stops}{$_} // 0) != 1 || ($st->{stop_attempts}{$_} // 0) != 1 } (@a, @b);
	is(join(',', @twice), '', 'turns: each plan sent and stopped once');
	ctl_post('/settings', { latency_ms => 0 });
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET wxpay.max_workers');
	$node->reload;
}

# ---- (k) one database's errors never stop another's ----
{
	# e24c's worker fails at every round: its queue table is gone (renamed
	# in the transaction that queued three requests)
	my $offset = -s $node->logfile;
	$node->safe_psql('e24c',
		"BEGIN; SELECT wxpay_stop_sign_plan_async(p, 'r') FROM unnest(ARRAY['e24-k-c-1', 'e24-k-c-2', 'e24-k-c-3']) p;"
		  . " ALTER TABLE wxpay_stop_request RENAME TO wxpay_stop_request_away; COMMIT;");
	$node->wait_for_log(qr/ERROR: .*wxpay_stop_request/, $offset);
	my @d = map { "e24-k-d-$_" } 1 .. 5;
	enqueue('e24d', @d);
	ok( $node->poll_query_until('e24d',
			"SELECT count(*) = 5 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'e24-k-d-%' AND state = 'succeeded'"),
		'errors: e24d is served while e24c\'s worker fails at every round');
	$node->safe_psql('e24c', 'ALTER TABLE wxpay_stop_request_away RENAME TO wxpay_stop_request');
	ok( $node->poll_query_until('e24c',
			"SELECT count(*) = 3 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'e24-k-c-%' AND state = 'succeeded'"),
		'errors: e24c is served again once its table is back');
	my $st = sim_stats();
	my @twice = grep { ($st->{stops}{$_} // 0) != 1 } (@d, map { "e24-k-c-$_" } 1 .. 3);
	is(join(',', @twice), '', 'errors: each plan stopped once');
}

# ---- (l) max_worker_processes exhausted: said once, tried again, served once there is room ----
{
	# one slot, taken by the launcher (the logical replication launcher,
	# which registers first, kept out): no queue worker can start
	$node->append_conf('postgresql.conf',
		"max_worker_processes = 1\nmax_logical_replication_workers = 0\nlog_min_messages = debug1\n");
	# (the launcher's first try comes as it starts)
	my $offset = -s $node->logfile;
	$node->restart;
	my ($id) = enqueue('e24a', 'e24-l-1');
	# the launcher's second try (EXHAUSTED_RETRY_MS later) says so only at DEBUG1
	$node->wait_for_log(qr/max_worker_processes is still exhausted/, $offset);
	my $log = log_from($offset);
	is(count_of(qr/LOG: .*could not start a wxpay_signplan worker: max_worker_processes is exhausted/, $log), 1,
		'exhausted: said once at LOG, though tried again');
	like($log, qr/HINT: .*Raise max_worker_processes/, 'exhausted: the hint says what to do');
	is($node->safe_psql('e24a', "SELECT state FROM wxpay_stop_request WHERE id = $id"), 'queued',
		'exhausted: the request waits');
	is($node->safe_psql('e24a', 'SELECT worker_status FROM wxpay_queue_status'),
		'waiting: max_worker_processes is exhausted', 'exhausted: wxpay_queue_status says why');
	$node->append_conf('postgresql.conf', "max_worker_processes = 8\nmax_logical_replication_workers = 4\nlog_min_messages = warning\n");
	$node->restart;
	ok( $node->poll_query_until('e24a', "SELECT state = 'succeeded' FROM wxpay_stop_request WHERE id = $id"),
		'exhausted: served once there is room');
}

$node->stop;
done_testing();
