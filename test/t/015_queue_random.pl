
# Copyright: wxpay_signplan authors
#
# The queue under random faults, in two databases of one cluster
# (`postgres` and `t15_other`, each with the extension, the same two
# configs, its own queue and its own worker).  Each schedule enqueues stop
# requests in transactions that commit, roll back, roll back to a savepoint
# or go through two-phase commit, each transaction in one of the two
# databases, over two configs (public-key and certificate mode), while a
# private simulator follows a per-plan fault script (answers lost after the
# stop was applied, 5xx before or after applying, 429 on stops and on
# queries, timeouts, resets, bad signatures, slow answers, requests held
# in flight, stops applied late after a 403), and the test
# kills one database's queue worker (SIGKILL, SIGTERM), cancels it
# (pg_cancel_backend), terminates the launcher, stops the server in
# immediate mode, breaks and restores a config's key (in both databases),
# runs an unprivileged DROP DATABASE of either database and fails the
# primary over to its asynchronous streaming standby (which replicates
# both).  Plan numbers are unique across the two databases.  After both
# queues drained, every plan is checked, in its own database, against the
# simulator's own event record:
#
#  I1  nothing of a rolled-back transaction (or savepoint, or ROLLBACK
#      PREPARED) reached WeChat Pay;
#  I2  no stop was sent after an attempt whose outcome was unknown to the
#      client without a settling query in between (and no stop ever found
#      its plan already stopped);
#  I3  a `succeeded` row is a stopped plan; a `failed` row with WeChat
#      Pay's code is a plan this request did not stop; a stopped plan's
#      request is never `failed` with anything but WX003;
#  I4  never two queue workers of one database at once (pg_stat_activity
#      sampled at every step, per datname, and the workers' "started
#      serving" / "stopped serving" lines in the server log);
#  I5  every committed request finished, within wxpay.max_attempts (one
#      committed, or prepared, beyond what the standby had replayed when
#      it was promoted may have no row: lost in the failover);
#  I6  an unprivileged DROP DATABASE fails ("must be owner") and leaves
#      that database's queue worker alone;
#  I7  a request has rows only in the database that enqueued it.
#
# Every random choice comes from a small PRNG seeded with the printed seed;
# each schedule's generator is derived from (seed, schedule number), and the
# whole schedule is drawn before it runs, so the same seed gives the same
# requests, fault scripts and actions whatever the timing.  The cancels of
# the worker are drawn from a second stream of their own (seed, schedule
# number + 2^20), and the late stops from a third (seed, schedule number +
# 2^21), so a seed of a run before they existed still draws the same
# requests, scripts and other actions, now with cancels and late stops in
# between.  Failovers come from a fourth stream (seed, schedule number +
# 2^22), likewise, and the databases from a fifth (seed, schedule number +
# 2^23): each transaction's database (so all its requests share it), the
# database whose worker a kill or cancel aims at (a kill while a request is
# held in flight aims at that request's worker) and the database an
# unprivileged DROP DATABASE names.  A seed of a run before there were two
# databases draws the same schedules, now spread over the two.
#
# Failovers: in about one schedule in five, the primary (streaming to an
# asynchronous standby) is stopped in immediate mode after a random step or
# in the middle of the drain, usually after its WAL sender was frozen
# (SIGSTOP) up to two steps before, so that what it committed meanwhile
# never reached the standby.  The standby is promoted and becomes the
# test's server (every helper talks to $node); two-phase decisions (each in
# its own database) and keys (in both) the new primary lacks are taken
# again, and it gets a new standby from a
# base backup.  The old primary is never started again.  A request whose
# commit LSN lies beyond the promoted standby's replay LSN may have been
# lost: no row is then allowed (I5), its stops are still judged by I2; a
# request with a row is judged in full.  Rows whose claim or outcome was
# lost are queued again on the new primary; the timeline rule (src/queue.c)
# has them queried before any stop, or I2/I3 would catch a blind second
# stop.
#
# Late stops: a request's first stop may be one the platform applies only
# later ("defer": the worker gives up waiting, the outcome is unknown), and
# its next stop may then be refused with 403 NO_AUTH while the plan is still
# active; the deferred stops are released at random steps (and after the
# drain), so they land after whatever the worker did in the meantime.  A
# request that was refused after such an unknown outcome must never end
# failed with WeChat Pay's code once the late stop landed (I3).
#
#   WXPAY_RANDOM_SEED=N          replay a seed (printed at the start)
#   WXPAY_RANDOM_SCHEDULES=N     number of schedules (default 12; a soak: 1000)
#   WXPAY_RANDOM_FIRST=K         start at schedule K (replay one schedule:
#                                WXPAY_RANDOM_FIRST=K WXPAY_RANDOM_SCHEDULES=1)
#
# The workers stay (wxpay.worker_idle_timeout = 0), as the single worker of
# wxpay.database_name did before: a kill or cancel finds its database's
# worker.  Synchronisation is by polling for conditions with timeouts
# (queue rows, pg_stat_activity, the simulator's held requests), never by
# sleeping.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WxpayTest;

BAIL_OUT('the PRNG needs 64-bit Perl integers') unless ~0 > 0xFFFFFFFF;

# ---------------------------------------------------------------------------
# A deterministic PRNG (xorshift32 over a mixed seed): the same numbers on
# every Perl, unlike rand().

sub mix32
{
	my ($h) = @_;
	$h &= 0xFFFFFFFF;
	$h ^= $h >> 16;
	$h = ($h * 0x45d9f3b) & 0xFFFFFFFF;
	$h ^= $h >> 16;
	$h = ($h * 0x45d9f3b) & 0xFFFFFFFF;
	$h ^= $h >> 16;
	return $h;
}

sub prng_new
{
	my ($seed, $stream) = @_;
	my $x = mix32(mix32($seed) ^ mix32(($stream + 0x9E3779B9) & 0xFFFFFFFF));
	$x ||= 0x6D2B79F5;
	return { x => $x };
}

sub rnd
{
	my ($r) = @_;
	my $x = $r->{x};
	$x ^= ($x << 13) & 0xFFFFFFFF;
	$x ^= $x >> 17;
	$x ^= ($x << 5) & 0xFFFFFFFF;
	return $r->{x} = $x;
}

sub rint { my ($r, $n) = @_; return rnd($r) % $n; }
sub chance { my ($r, $pct) = @_; return rint($r, 100) < $pct; }
sub pick { my ($r, @a) = @_; return $a[ rint($r, scalar @a) ]; }

# pick from [item, weight] pairs
sub wpick
{
	my ($r, @pairs) = @_;
	my $total = 0;
	$total += $_->[1] for @pairs;
	my $n = rint($r, $total);
	for my $p (@pairs)
	{
		return $p->[0] if $n < $p->[1];
		$n -= $p->[1];
	}
	die 'unreachable';
}

my $seed =
  defined $ENV{WXPAY_RANDOM_SEED} && $ENV{WXPAY_RANDOM_SEED} ne ''
  ? $ENV{WXPAY_RANDOM_SEED}
  : mix32(int(time() * 1000) ^ ($$ << 8));
die "WXPAY_RANDOM_SEED must be an integer 0..4294967295"
  unless $seed =~ /^\d+$/ && $seed <= 0xFFFFFFFF;
my $schedules = $ENV{WXPAY_RANDOM_SCHEDULES} // 12;
my $first = $ENV{WXPAY_RANDOM_FIRST} // 1;
die 'WXPAY_RANDOM_SCHEDULES and WXPAY_RANDOM_FIRST must be positive integers'
  unless $schedules =~ /^\d+$/ && $first =~ /^[1-9]\d*$/;
diag("random fault test: WXPAY_RANDOM_SEED=$seed, schedules $first.."
	  . ($first + $schedules - 1)
	  . " (replay: WXPAY_RANDOM_SEED=$seed WXPAY_RANDOM_FIRST=<n> WXPAY_RANDOM_SCHEDULES=1)");

# ---------------------------------------------------------------------------
# The server and a private simulator (its event record is ours alone)

my $MAX_ATTEMPTS = 10;
my $WORKER_TYPE = 'wxpay_signplan worker';
my $LAUNCHER_TYPE = 'wxpay_signplan launcher';
my $WAIT = $ENV{WXPAY_RANDOM_WAIT} // 300;    # seconds, per wait

my $sim = start_sim();
my $json = JSON::PP->new->utf8->canonical;
sub sim_get { return ctl_get_at($sim, @_); }
sub sim_post { return ctl_post_at($sim, @_); }

my $node = PostgreSQL::Test::Cluster->new('queue_random');
$node->init(allows_streaming => 1, extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', qq{
max_connections = 40
shared_buffers = 16MB
shared_preload_libraries = 'wxpay_signplan'
wxpay.worker_idle_timeout = 0
max_prepared_transactions = 20
wxpay.retry_base_delay = '20ms'
wxpay.retry_max_delay = '200ms'
wxpay.reconcile_delay = '50ms'
wxpay.request_timeout = '2s'
wxpay.max_attempts = $MAX_ATTEMPTS
wxpay.worker_concurrency = 4
wxpay.rate_limit = 0
restart_after_crash = on
log_line_prefix = '%m [%p] '
log_statement = 'none'
});
$node->start;
# two databases of the cluster, each with the extension and the same two
# configs; each has its own queue and its own worker
my @DBS = ('postgres', 't15_other');
$node->safe_psql('postgres', "CREATE DATABASE $DBS[1]");
for my $db (@DBS)
{
	$node->safe_psql($db, 'CREATE EXTENSION wxpay_signplan');
	$node->safe_psql($db, config_insert_sql(name => 'pk', base_url => $sim->{url}));
	$node->safe_psql($db, certmode_config_sql(name => 'cert', base_url => $sim->{url}));
}
# a role that owns nothing
$node->safe_psql('postgres', 'CREATE ROLE t15_mallory LOGIN');
for my $db (@DBS)
{
	ok( $node->poll_query_until($db,
			"SELECT count(*) > 0 FROM wxpay_platform_certificate WHERE config_name = 'cert'"),
		"the certificate-mode config has its platform certificate in $db");
}

# The streaming standby (asynchronous) that a failover promotes; each
# promotion makes the promoted node $node and gives it a new standby from a
# base backup.  A discarded primary is never started again (it may have
# commits the new one lacks); its log is still checked at the end.
my $standby;
my $standbys = 0;
my @retired;    # discarded primaries

sub new_standby
{
	my $bk = 'bk' . ++$standbys;
	$node->backup($bk);
	$standby = PostgreSQL::Test::Cluster->new("queue_random_sb$standbys");
	$standby->init_from_backup($node, $bk, has_streaming => 1);
	$standby->start;
	my $name = $standby->name;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_replication WHERE application_name = '$name' AND state = 'streaming'")
	  or die "the standby $name does not stream";
	return;
}
new_standby();

my %good_key = (pk => pki_file('merchant.key'), cert => pki_file('merchant.key'));
my $invalid_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
my $wrong_key = pki_file('wrong_merchant.key');

# ---------------------------------------------------------------------------
# Talking to the server while it may be down or restarting

# psql that never dies; returns (ok, stdout, stderr)
sub try_sql
{
	my ($sql, %o) = @_;
	my ($ret, $out, $err);
	# psql exiting before it read its input (server restarting) makes
	# IPC::Run die with a broken pipe: that is a failed attempt too
	my $lived = eval {
		($ret, $out, $err) = $node->psql($o{db} // 'postgres', $sql,
			extra_params => $o{extra} // [], on_error_stop => 1);
		1;
	};
	return (0, '', "psql: $@") unless $lived;
	return ($ret == 0, $out, $err);
}

# wait until the server answers queries (after a crash restart)
sub wait_server
{
	my $t0 = time;
	while (time - $t0 < $WAIT)
	{
		my ($ok, $out) = try_sql('SELECT 1');
		return 1 if $ok && $out eq '1';
		Time::HiRes::sleep(0.05);    # polling interval
	}
	return 0;
}

# run SQL that must succeed, retrying only while the server is not up
sub must_sql
{
	my ($sql, $db) = @_;
	for (1 .. 3)
	{
		my ($ok, $out, $err) = try_sql($sql, db => $db);
		return $out if $ok;
		die "SQL failed: $err\n$sql"
		  unless $err =~ /connection|recovery mode|shutting down|starting up|terminat|^psql: /i;
		wait_server() or die "server did not come back";
	}
	die "SQL kept failing on connection errors: $sql";
}

# ---------------------------------------------------------------------------
# Violations

my @violations;    # of the current schedule
my ($cur_sched, $plans_by_no) = (0, {});

sub events_text
{
	my ($plan) = @_;
	my $ev = sim_get("/events?plan=$plan");
	return join("\n",
		map {
			sprintf('      #%d %s fault=%s verified=%s applied=%s already_stopped=%s state_after=%s status=%s intact=%s held=%s',
				$_->{seq}, $_->{op}, $_->{fault} // '-', ($_->{verified} ? 1 : 0),
				($_->{applied} ? 1 : 0), ($_->{already_stopped} ? 1 : 0),
				$_->{state_after} // '-', $_->{status} // '-',
				($_->{delivered_intact} ? 1 : 0), ($_->{held} ? 1 : 0))
		} @$ev);
}

sub violation
{
	my ($inv, $plan, $msg, $row) = @_;
	my $text = "$inv violated (seed $seed, schedule $cur_sched";
	$text .= ", plan $plan" if defined $plan;
	$text .= "): $msg";
	if (defined $plan)
	{
		my $p = $plans_by_no->{$plan};
		$text .= "\n    script: " . $json->encode($p->{script}) if $p;
		$text .= "\n    row: $row" if defined $row;
		$text .= "\n    events:\n" . (events_text($plan) || '      (none)');
	}
	push @violations, $text;
	return;
}

# ---------------------------------------------------------------------------
# I4: the queue workers seen at once, per database

my $max_workers_seen = 0;    # in one database
my %overlap;    # of the current schedule: { n, first, samples }

sub sample_workers
{
	my ($where) = @_;
	my ($ok, $out) = try_sql(
		"SELECT coalesce(datname, '-') || ' ' || count(*) || ' ' || string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = '$WORKER_TYPE' GROUP BY datname ORDER BY 1"
	);
	return undef unless $ok;
	my $most = 0;
	for my $line (split /\n/, $out)
	{
		my ($db, $n, $pids) = split / /, $line, 3;
		$most = $n if $n > $most;
		next unless $n > 1;
		# reported once per schedule, with the first and the largest sample
		$overlap{samples}++;
		$overlap{first} //= "$n in $db (pids $pids) $where";
		$overlap{max} = "$n in $db (pids $pids) $where" if $n > ($overlap{n} // 0);
		$overlap{n} = $n if $n > ($overlap{n} // 0);
	}
	$max_workers_seen = $most if $most > $max_workers_seen;
	return $most;
}

# the newest process of a type (a worker: the one of database $db)
sub pid_of
{
	my ($type, $db) = @_;
	my $where = defined $db ? " AND datname = '$db'" : '';
	my ($ok, $out) = try_sql(
		"SELECT pid FROM pg_stat_activity WHERE backend_type = '$type'$where ORDER BY backend_start DESC LIMIT 1");
	return $ok && $out ne '' ? $out : undef;
}

# the queue worker's pid in database $db, waiting for one to run
sub wait_worker
{
	my ($db) = @_;
	my $t0 = time;
	while (time - $t0 < $WAIT)
	{
		sample_workers('while waiting for a worker');
		my $pid = pid_of($WORKER_TYPE, $db);
		return $pid if $pid;
		Time::HiRes::sleep(0.05);
	}
	return undef;
}

# ---------------------------------------------------------------------------
# Drawing a schedule

# faults on stops: [name, weight]; on queries likewise
my @STOP_FAULTS = (
	[ ok => 30 ], [ stop_then_reset => 8 ], [ http500 => 6 ], [ stop_then_500 => 8 ],
	[ http429 => 6 ], [ stall => 3 ], [ reset => 5 ], [ bad_signature => 6 ],
	[ slow_ok => 3 ]);
my @QUERY_FAULTS = (
	[ ok => 30 ], [ http429 => 10 ], [ http500 => 5 ], [ stall => 2 ],
	[ reset => 4 ], [ bad_signature => 4 ], [ slow_ok => 2 ]);
my @ACTIONS = (
	[ sigkill_worker => 3 ], [ sigterm_worker => 3 ], [ terminate_launcher => 3 ],
	[ restart_immediate => 2 ], [ break_key => 3 ], [ drop_database => 2 ]);
my @KILLS = qw(sigkill_worker sigterm_worker terminate_launcher restart_immediate);

sub draw_script
{
	my ($r) = @_;
	my (@stop, @query);
	push @stop, wpick($r, @STOP_FAULTS) for 1 .. rint($r, 4);
	push @query, wpick($r, @QUERY_FAULTS) for 1 .. rint($r, 4);
	return { stop => \@stop, query => \@query };
}

# A schedule: a list of steps.  Requests are { plan, config, script,
# committed }; steps are { do => 'txn', kind, parts } or { do => <action> }.
sub draw_schedule
{
	my ($n) = @_;
	my $r = prng_new($seed, $n);
	my (@steps, @reqs, @prepared);
	my $k = 0;
	my $broken;    # the config whose key is broken
	# enqueueing checks the key, so requests go to unbroken configs; those
	# queued before the break meet it in the worker
	my $newreq = sub {
		my $c = pick($r, 'pk', 'cert');
		$c = $c eq 'pk' ? 'cert' : 'pk' if defined $broken && $c eq $broken;
		my $req = {
			plan => sprintf('t15-%d-%d', $n, ++$k),
			config => $c,
			script => draw_script($r),
		};
		push @reqs, $req;
		return $req;
	};
	my $held = 0;
	my $ntxn = 4 + rint($r, 5);
	for my $t (1 .. $ntxn)
	{
		my $kind = wpick($r, [ commit => 5 ], [ rollback => 2 ], [ savepoint => 2 ],
			[ prepare_commit => 2 ], [ prepare_rollback => 1 ]);
		my @before = map { $newreq->() } 1 .. 1 + rint($r, 4);
		my @after = $kind eq 'savepoint' ? map { $newreq->() } 1 .. 1 + rint($r, 2) : ();
		my @tail = $kind eq 'savepoint' && chance($r, 50) ? ($newreq->()) : ();
		my $keep = $kind =~ /^(commit|savepoint|prepare_commit)$/;
		$_->{committed} = $keep for @before, @tail;
		$_->{committed} = 0 for @after;
		# one request of a committing transaction may be held in flight
		# while the test kills something
		my $hold;
		if (!$held && $kind =~ /^(commit|savepoint)$/ && chance($r, 35))
		{
			$hold = $before[0];
			unshift @{ $hold->{script}{stop} }, 'hold';
			$held = 1;
		}
		push @steps,
		  { do => 'txn', kind => $kind, before => \@before, after => \@after, tail => \@tail, gid => "t15_${n}_$t" };
		if ($kind =~ /^prepare_/)
		{
			push @prepared, $steps[-1];
			# resolve now or after a later step
			if (chance($r, 50)) { push @steps, { do => 'resolve', txn => pop @prepared }; }
		}
		push @steps, { do => 'hold_kill', plan => $hold->{plan}, kill => pick($r, @KILLS) } if $hold;
		if (chance($r, 40))
		{
			my $a = wpick($r, @ACTIONS);
			if ($a eq 'break_key')
			{
				if ($broken)
				{
					push @steps, { do => 'restore_key', config => $broken };
					$broken = undef;
				}
				else
				{
					$broken = pick($r, 'pk', 'cert');
					push @steps, { do => 'break_key', config => $broken,
						key => wpick($r, [ invalid => 3 ], [ wrong => 1 ]) };
				}
			}
			elsif ($a eq 'drop_database')
			{
				# its probe request is enqueued, which checks the key
				push @steps, { do => $a,
					config => defined $broken && $broken eq 'pk' ? 'cert' : 'pk' };
			}
			else
			{
				push @steps, { do => $a };
			}
		}
		if (@prepared && chance($r, 50)) { push @steps, { do => 'resolve', txn => shift @prepared }; }
	}
	push @steps, { do => 'resolve', txn => $_ } for @prepared;
	# the drain may start with the key still broken; it is restored part way
	my $mid = chance($r, 50) ? { do => pick($r, @KILLS) } : undef;
	push @steps, { do => 'restore_key', config => $broken } if $broken;
	add_cancels($n, \@steps, \$mid);
	add_late_stops($n, \@steps, \@reqs);
	my $fo_drain = add_failover($n, \@steps);
	add_databases($n, \@steps, \@reqs, $mid);
	return { steps => \@steps, reqs => \@reqs, mid_drain => $mid, fo_drain => $fo_drain };
}

# The database of each transaction (and so of its requests), of each step
# aimed at a worker (which database's worker it signals) and of each
# unprivileged DROP DATABASE, from a stream of its own (seed, schedule
# number + 2^23), so the other streams draw what they drew before there
# were two databases.  A kill while a request is held in flight signals the
# worker of that request's database.  A key broken or restored is so in
# both databases (the same configs); restarts, the launcher and failovers
# are the cluster's.
sub add_databases
{
	my ($n, $steps, $reqs, $mid) = @_;
	my $r = prng_new($seed, $n + (1 << 23));
	my %db_of;
	for my $s (@$steps, $mid // ())
	{
		if ($s->{do} eq 'txn')
		{
			$s->{db} = pick($r, @DBS);
			$_->{db} = $s->{db} for @{ $s->{before} }, @{ $s->{after} }, @{ $s->{tail} };
			$db_of{ $_->{plan} } = $s->{db} for @{ $s->{before} };
		}
		elsif ($s->{do} eq 'hold_kill')
		{
			$s->{db} = $db_of{ $s->{plan} } // die "the held plan $s->{plan} has no transaction before its kill";
		}
		elsif ($s->{do} =~ /^(sigkill_worker|sigterm_worker|cancel_worker|drop_database)$/)
		{
			$s->{db} = pick($r, @DBS);
		}
	}
	$_->{db} // die "request $_->{plan} has no database" for @$reqs;
	return;
}

# A primary failover, from a stream of its own (seed, schedule number +
# 2^22), in about one schedule in five: after a random step or in the middle
# of the drain, the primary is stopped (immediate) and its asynchronous
# standby promoted.  Most of the time its WAL sender is frozen (SIGSTOP, a
# partition) first, up to two steps before: what the primary commits after
# that is lost with it.  Returns the steps run in the drain, if any.
sub add_failover
{
	my ($n, $steps) = @_;
	my $r = prng_new($seed, $n + (1 << 22));
	return undef unless chance($r, 20);
	my $at = rint($r, @$steps + 1);    # before step $at; @$steps: in the drain
	my $freeze = chance($r, 70) ? rint($r, 3) : undef;    # steps before
	my $fo = { do => 'failover' };
	if ($at == @$steps)
	{
		my @drain = ($fo);
		if (defined $freeze && $freeze == 0) { unshift @drain, { do => 'freeze' }; }
		elsif (defined $freeze) { splice(@$steps, @$steps - $freeze + 1, 0, { do => 'freeze' }); }
		return \@drain;
	}
	splice(@$steps, $at, 0, $fo);
	if (defined $freeze)
	{
		my $f = $at - $freeze;
		splice(@$steps, $f < 0 ? 0 : $f, 0, { do => 'freeze' });
	}
	return undef;
}

# Stops applied late, from a stream of their own: a committed request's
# first stop deferred (and, half the time, its next stop refused with 403),
# and a release of every deferred stop after some steps.  A request held in
# flight by the test keeps its own script.
sub add_late_stops
{
	my ($n, $steps, $reqs) = @_;
	my $r = prng_new($seed, $n + (1 << 21));
	for my $q (@$reqs)
	{
		next if !$q->{committed} || grep { $_ eq 'hold' } @{ $q->{script}{stop} };
		next unless chance($r, 12);
		splice(@{ $q->{script}{stop} }, 0, 0, 'defer', chance($r, 50) ? ('http403') : ());
	}
	my @out;
	for my $s (@$steps)
	{
		push @out, $s;
		push @out, { do => 'release_deferred' } if chance($r, 10);
	}
	@$steps = @out;
	return;
}

# The worker cancelled (pg_cancel_backend) at random points, from a stream
# of its own: after a step, instead of the kill while a request is held in
# flight, and in the middle of the drain.  A cancel is an error of the
# worker: it records what was decided, puts back what it had claimed but not
# sent, leaves what was in flight to reconcile, and goes on.
sub add_cancels
{
	my ($n, $steps, $mid) = @_;
	my $r = prng_new($seed, $n + (1 << 20));
	my @out;
	for my $s (@$steps)
	{
		$s->{kill} = 'cancel_worker' if $s->{do} eq 'hold_kill' && chance($r, 30);
		push @out, $s;
		push @out, { do => 'cancel_worker' } if chance($r, 15);
	}
	$$mid = { do => 'cancel_worker' } if !$$mid && chance($r, 30);
	@$steps = @out;
	return;
}

# ---------------------------------------------------------------------------
# Running the steps

sub enqueue_sql
{
	my (@reqs) = @_;
	return join('',
		map { "SELECT wxpay_stop_sign_plan_async('$_->{plan}', 'random fault test', '$_->{config}');\n" } @reqs);
}

my %key_now = %good_key;
my $drop_probes = 0;
my $cancels = 0;	# pg_cancel_backend calls that reached a worker

# in both databases (the same configs)
sub set_key
{
	my ($config, $key) = @_;
	must_sql("UPDATE wxpay_config SET private_key = " . dq($key) . " WHERE name = '$config'", $_) for @DBS;
	$key_now{$config} = $key;
	return;
}

# $db: the database whose worker a worker-targeted kill signals
sub do_kill
{
	my ($what, $db) = @_;
	if ($what eq 'sigkill_worker' || $what eq 'sigterm_worker')
	{
		my $pid = wait_worker($db) or return note("no worker to kill in $db");
		kill($what eq 'sigkill_worker' ? 'KILL' : 'TERM', $pid);
		note("$what: pid $pid ($db)");
		# gone before the next step looks at the workers (a worker still
		# exiting is not the one a later step should find: I6 compared
		# such a pid with its successor once, on a loaded machine)
		my $t0 = time;
		Time::HiRes::sleep(0.02) while kill(0, $pid) && time - $t0 < $WAIT;
		if ($what eq 'sigkill_worker')
		{
			# once the postmaster reaped it, it refuses connections until
			# it has restarted every process
			wait_server() or die 'the server did not come back after a worker crash';
		}
	}
	elsif ($what eq 'cancel_worker')
	{
		my $pid = wait_worker($db) or return note("no worker to cancel in $db");
		my ($ok, $out) = try_sql("SELECT pg_cancel_backend($pid)");
		note("worker $pid ($db) cancelled: " . ($ok ? $out : 'the server was not up'));
		$cancels++ if $ok && $out eq 't';
	}
	elsif ($what eq 'terminate_launcher')
	{
		my $pid = pid_of($LAUNCHER_TYPE) or return note("no launcher to terminate");
		try_sql("SELECT pg_terminate_backend($pid)");
		note("launcher $pid terminated");
		# the postmaster starts a new launcher
		my $t0 = time;
		while (time - $t0 < $WAIT)
		{
			sample_workers('after the launcher was terminated');
			my $new = pid_of($LAUNCHER_TYPE);
			last if $new && $new != $pid;
			Time::HiRes::sleep(0.05);
		}
	}
	elsif ($what eq 'restart_immediate')
	{
		$node->stop('immediate');
		$node->start;
		note('server restarted after an immediate stop');
	}
	else { die "unknown kill $what" }
	sample_workers("after $what");
	return;
}

sub lsn_num
{
	my ($lsn) = @_;
	my ($hi, $lo) = $lsn =~ m{^([0-9A-F]+)/([0-9A-F]+)$} or die "not an LSN: $lsn";
	return (hex($hi) << 32) | hex($lo);
}

# The primary stopped (immediate) and its standby promoted; the promoted
# node becomes $node and gets a standby of its own.  A request whose commit
# (or PREPARE) lies beyond what the standby replayed may be lost: see
# judge_plan.  Decisions the old primary took that the new one lacks are
# taken again, as an operator would: COMMIT/ROLLBACK PREPARED of a
# transaction still prepared there, and the keys the schedule has set.
my $log_offset = 0;    # of I4's check of $node's log
my %log_live;
my $frozen;       # pid of the frozen WAL sender
my $failovers = 0;
my $lost_total = 0;

sub failover
{
	my $old = $node;
	if ($frozen)
	{
		# the primary writes on alone for a moment (the worker's claims
		# and outcomes, if it is working)
		my $t0 = time;
		while (time - $t0 < 5)
		{
			my ($ok, $out) = try_sql(
				"SELECT pg_current_wal_lsn() > sent_lsn FROM pg_stat_replication WHERE pid = $frozen");
			last if !$ok || $out ne 'f';    # written past it, or no sender
			Time::HiRes::sleep(0.05);
		}
	}
	check_log();
	$old->stop('immediate');
	$frozen = undef;
	# everything the standby received, replayed (the last record received
	# may be incomplete: the replay position need not reach it)
	$standby->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver)"
		  . " AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'startup'"
		  . " AND wait_event IN ('RecoveryWalStream', 'RecoveryRetrieveRetryInterval'))")
	  or die 'the standby did not settle after the primary stopped';
	my $replay = $standby->safe_psql('postgres', 'SELECT pg_last_wal_replay_lsn()');
	$standby->promote;
	push @retired, $old;
	$node = $standby;
	$standby = undef;
	($log_offset, %log_live) = (0);
	wait_server() or die 'the promoted standby does not answer';
	$failovers++;

	# a PREPARE beyond the replay position may be lost (whichever way the
	# transaction was to be resolved)
	for my $q (values %$plans_by_no)
	{
		my $t = $q->{txn} or next;
		$t->{prep_lost} = 1 if defined $t->{prep_lsn} && lsn_num($t->{prep_lsn}) > lsn_num($replay);
	}
	my $lost = 0;
	for my $q (values %$plans_by_no)
	{
		next unless $q->{committed};
		if (defined $q->{lsn})
		{
			$q->{may_be_lost} = 1 if lsn_num($q->{lsn}) > lsn_num($replay);
		}
		elsif ($q->{txn} && $q->{txn}{prep_lost})
		{
			$q->{may_be_lost} = 1;
		}
		$lost++ if $q->{may_be_lost};
	}
	my %resolved = map { $_->{txn}{gid} => $_->{txn} } grep { $_->{txn} && $_->{txn}{resolved} } values %$plans_by_no;
	# (in the database that prepared it)
	for my $line (split /\n/, must_sql("SELECT gid || ' ' || database FROM pg_prepared_xacts WHERE gid LIKE 't15\\_${cur_sched}\\_%'"))
	{
		my ($gid, $db) = split / /, $line;
		my $t = $resolved{$gid} or next;
		my $verb = $t->{kind} eq 'prepare_commit' ? 'COMMIT PREPARED' : 'ROLLBACK PREPARED';
		must_sql("$verb '$gid'", $db);
		note("$gid resolved again on the new primary ($db)");
	}
	set_key($_, $key_now{$_}) for sort keys %key_now;
	note("failover: primary stopped, standby promoted at replay LSN $replay; $lost committed request(s) beyond it");
	new_standby();
	return;
}

sub run_step
{
	my ($s) = @_;
	my $do = $s->{do};
	if ($do eq 'txn')
	{
		my $sql = "BEGIN;\n" . enqueue_sql(@{ $s->{before} });
		if ($s->{kind} eq 'savepoint')
		{
			$sql .= "SAVEPOINT sp;\n" . enqueue_sql(@{ $s->{after} }) . "ROLLBACK TO SAVEPOINT sp;\n"
			  . enqueue_sql(@{ $s->{tail} }) . "COMMIT;\n";
		}
		elsif ($s->{kind} eq 'commit') { $sql .= "COMMIT;\n"; }
		elsif ($s->{kind} eq 'rollback') { $sql .= "ROLLBACK;\n"; }
		else { $sql .= "PREPARE TRANSACTION '$s->{gid}';\n"; }
		# where the WAL was once it committed (or prepared): a failover
		# may lose it if the standby had not replayed that far
		my ($lsn) = must_sql($sql . "SELECT pg_current_wal_lsn();\n", $s->{db}) =~ /([0-9A-F]+\/[0-9A-F]+)\s*\z/
		  or die 'no WAL position after the transaction';
		$_->{txn} = $s for @{ $s->{before} }, @{ $s->{after} }, @{ $s->{tail} };
		if ($s->{kind} =~ /^prepare_/) { $s->{prep_lsn} = $lsn; }
		else { $_->{lsn} = $lsn for @{ $s->{before} }, @{ $s->{tail} }; }
	}
	elsif ($do eq 'resolve')
	{
		my $t = $s->{txn};
		my $verb = $t->{kind} eq 'prepare_commit' ? 'COMMIT PREPARED' : 'ROLLBACK PREPARED';
		my ($ok, $out, $err) = try_sql("$verb '$t->{gid}';\nSELECT pg_current_wal_lsn();", db => $t->{db});
		if (!$ok && $t->{prep_lost} && $err =~ /prepared transaction with identifier .* does not exist/)
		{
			# its PREPARE was lost in a failover: so are its requests
			note("$t->{gid} was lost in the failover");
		}
		else
		{
			$out = must_sql("$verb '$t->{gid}';\nSELECT pg_current_wal_lsn();", $t->{db}) unless $ok;
			my ($lsn) = $out =~ /([0-9A-F]+\/[0-9A-F]+)\s*\z/ or die "no WAL position after $verb";
			$_->{lsn} = $lsn for @{ $t->{before} }, @{ $t->{tail} };
		}
		$t->{resolved} = 1;
	}
	elsif ($do eq 'freeze')
	{
		# a partition: the standby receives nothing more
		my $name = $standby->name;
		my $pid = must_sql("SELECT pid FROM pg_stat_replication WHERE application_name = '$name'");
		if ($pid =~ /^\d+$/)
		{
			kill 'STOP', $pid;
			$frozen = $pid;
			note("WAL sender $pid frozen");
		}
		else { note('no WAL sender to freeze'); }
	}
	elsif ($do eq 'failover')
	{
		failover();
	}
	elsif ($do eq 'hold_kill')
	{
		# wait until the held stop is in flight, then kill while it is
		my $t0 = time;
		my $in_flight = 0;
		while (time - $t0 < $WAIT)
		{
			if (grep { $_->{plan} eq $s->{plan} } @{ sim_get('/held') }) { $in_flight = 1; last; }
			# (a request that ends before sending, e.g. on a broken key,
			# never arrives; nor does one whose row was lost with an old
			# primary, or is not visible: no row, no wait)
			my ($ok, $out) = try_sql(
				"SELECT state FROM wxpay_stop_request WHERE merchant_sign_plan_no = '$s->{plan}'", db => $s->{db});
			last if $ok && ($out eq '' || $out eq 'succeeded' || $out eq 'failed');
			sample_workers('while waiting for the held request');
			Time::HiRes::sleep(0.02);
		}
		note($in_flight ? "$s->{plan} held in flight: $s->{kill}" : "$s->{plan} never arrived; $s->{kill} anyway");
		do_kill($s->{kill}, $s->{db});
		sim_post('/release', { plan => $s->{plan} });
	}
	elsif ($do eq 'release_deferred')
	{
		# the platform applies the stops it deferred, now, after whatever
		# came for those plans in the meantime
		my $rel = sim_post('/release', {});
		note("released $rel->{released} held or deferred request(s)");
	}
	elsif ($do eq 'break_key')
	{
		set_key($s->{config}, $s->{key} eq 'wrong' ? $wrong_key : $invalid_key);
		note("key of $s->{config} broken ($s->{key})");
	}
	elsif ($do eq 'restore_key')
	{
		set_key($s->{config}, $good_key{ $s->{config} });
		note("key of $s->{config} restored");
	}
	elsif ($do eq 'drop_database')
	{
		my $db = $s->{db};
		my $before = wait_worker($db);
		my ($ok, $out, $err) = try_sql("DROP DATABASE $db",
			db => 'template1', extra => [ '-U', 't15_mallory' ]);
		violation('I6', undef, "an unprivileged DROP DATABASE $db did not fail with \"must be owner\": "
			  . ($ok ? 'it succeeded' : $err))
		  unless !$ok && $err =~ /must be owner of database $db/;
		# a request enqueued after it finishes: had the worker been told to
		# leave, another worker (a new pid) would serve it
		my $probe = sprintf('t15-%d-drop%d', $cur_sched, ++$drop_probes);
		$plans_by_no->{$probe} = { plan => $probe, config => $s->{config}, committed => 1,
			probe => 1, db => $db, script => { stop => [], query => [] } };
		my $id = must_sql("SELECT wxpay_stop_sign_plan_async('$probe', 'probe', '$s->{config}')", $db);
		$plans_by_no->{$probe}{lsn} = must_sql('SELECT pg_current_wal_lsn()', $db);
		my ($wok) = try_sql("SELECT state FROM wxpay_wait_stop_request($id, '${WAIT}s')", db => $db);
		my $after = pid_of($WORKER_TYPE, $db);
		violation('I6', undef, "an unprivileged DROP DATABASE $db disturbed its queue worker: pid "
			  . ($before // 'none') . ' before, ' . ($after // 'none') . ' after')
		  if defined $before && (!defined $after || $after != $before);
	}
	else
	{
		do_kill($do, $s->{db});
	}
	sample_workers("after step $do");
	return;
}

# ---------------------------------------------------------------------------
# Draining and checking

# wait until nothing of this schedule is queued or sending in either
# database
sub drain
{
	my ($n, $mid, $fo) = @_;
	my $t0 = time;
	my $did_mid = !$mid;
	while (time - $t0 < $WAIT)
	{
		sample_workers('while draining');
		my ($ok, $busy) = (1, 0);
		for my $db (@DBS)
		{
			my ($dok, $out) = try_sql(
				"SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 't15-$n-%' AND state IN ('queued', 'sending')",
				db => $db);
			$ok &&= $dok;
			$busy += $out if $dok;
		}
		# a failover drawn for the drain happens even if the queue drained
		# first (a WAL sender may be frozen), and the new primary drains
		if ($ok && $busy == 0 && !$fo) { return 1; }
		if (!$did_mid && $ok)
		{
			run_step($mid);
			$did_mid = 1;
		}
		elsif ($fo && $ok)
		{
			run_step($_) for @$fo;
			$fo = undef;
		}
		Time::HiRes::sleep(0.1);    # polling interval
	}
	return 0;
}

sub is_wechat_code
{
	my ($code) = @_;
	return $code ne '' && $code !~ /^WX\d{3}$/ && $code !~ /^[0-9A-Z]{5}$/;
}

sub check_schedule
{
	my ($n, $sched, $drained) = @_;
	my %rows;    # database => plan => rows
	for my $db (@DBS)
	{
		for my $line (split /\n/, must_sql(
				"SELECT merchant_sign_plan_no, id, config_name, state, attempts, coalesce(error_code, ''), coalesce(http_status::text, ''), coalesce((result).cancel_sign_type, '') FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 't15-$n-%' ORDER BY id",
				$db))
		{
			my @f = split /\|/, $line, -1;
			push @{ $rows{$db}{ $f[0] } }, { line => "$db: $line", id => $f[1], config => $f[2], state => $f[3],
				attempts => $f[4], error_code => $f[5], http_status => $f[6], cancel => $f[7] };
		}
	}
	my $all_events = sim_get('/events');

	for my $p (sort keys %$plans_by_no)
	{
		my $req = $plans_by_no->{$p};
		my @foreign = map { @{ $rows{$_}{$p} // [] } } grep { $_ ne $req->{db} } @DBS;
		violation($_->[0], $p, $_->[1], $_->[2])
		  for judge_plan($req, $rows{ $req->{db} }{$p} // [], $all_events->{$p} // [], \@foreign);
	}
	return;
}

# The invariants I1, I2, I3, I5 and I7 for one plan: its request ($req:
# committed or not), its rows in its own database and in the other
# ($foreign), and the simulator's events.  Returns [invariant, message, row]
# for each violation.
sub judge_plan
{
	my ($req, $rs, $events, $foreign) = @_;
	my @v;

	# I7
	push @v, [ 'I7', scalar(@$foreign) . " row(s) in a database other than its own ($req->{db})", $foreign->[0]{line} ]
	  if $foreign && @$foreign;

	# I1
	if (!$req->{committed})
	{
		push @v, [ 'I1', scalar(@$events) . ' request(s) of a rolled-back enqueue reached WeChat Pay' ]
		  if @$events;
		push @v, [ 'I1', 'a rolled-back enqueue left a row', $rs->[0]{line} ] if @$rs;
		return @v;
	}

	# I5; an enqueue committed (or prepared) beyond what the standby had
	# replayed when it was promoted may be lost with asynchronous
	# replication: no row, and whatever stops the old primary sent for it
	# are still judged by I2 (I3 needs a row)
	my $row;
	if (!@$rs && $req->{may_be_lost})
	{
		$row = { line => '(no row: its enqueue was lost in a failover)', state => 'lost', attempts => 0 };
		$lost_total++;
	}
	else
	{
		return (@v, [ 'I5', 'a committed enqueue has ' . scalar(@$rs) . ' rows' ]) if @$rs != 1;
		$row = $rs->[0];
		push @v, [ 'I5', "not finished after draining (state $row->{state})", $row->{line} ]
		  unless $row->{state} eq 'succeeded' || $row->{state} eq 'failed';
		push @v, [ 'I5', "$row->{attempts} attempts, more than wxpay.max_attempts = $MAX_ATTEMPTS", $row->{line} ]
		  if $row->{attempts} > $MAX_ATTEMPTS;
	}

	# I2: walk the record; after a stop whose answer the client could not
	# trust (not delivered intact, or 5xx) only a query answered 200 intact
	# settles the plan
	my $unknown;
	my $stopped = 0;
	my $late = 0;    # a query after an applied stop still found the plan active
	for my $e (@$events)
	{
		if ($e->{op} eq 'stop')
		{
			push @v,
			  [ 'I2', "stop #$e->{seq} sent while the outcome of stop #$unknown was unknown, with no settling query between",
				$row->{line} ]
			  if defined $unknown;
			# a stop that arrives after one of ours was applied and finds the
			# plan stopped is a second stop; a first stop whose own (slow)
			# application came after a later, properly settled one is the
			# platform's race, not a blind resend (the order check above
			# judges that sequence), and so is a stop sent after a settling
			# query that the platform answered before applying the earlier
			# (slow) stop: the client was told the plan was active
			push @v, [ 'I2', "stop #$e->{seq} found the plan already stopped (a blind second stop)", $row->{line} ]
			  if $e->{already_stopped} && $stopped && !$late;
			$stopped = 1 if $e->{applied};
			my $known = $e->{delivered_intact} && defined $e->{status} && $e->{status} < 500;
			$unknown = $known ? undef : $e->{seq};
		}
		elsif ($e->{op} eq 'query')
		{
			my $answered = $e->{delivered_intact} && defined $e->{status} && $e->{status} == 200;
			$unknown = undef if $answered;
			$late = 1 if $answered && $stopped && ($e->{state_after} // '') eq 'active';
		}
	}

	# I3
	if ($row->{state} eq 'succeeded')
	{
		push @v, [ 'I3', 'succeeded, but WeChat Pay never stopped the plan', $row->{line} ] unless $stopped;
	}
	elsif ($row->{state} eq 'failed' && $stopped)
	{
		push @v, [ 'I3', "failed with WeChat Pay's code $row->{error_code}, but this request stopped the plan", $row->{line} ]
		  if is_wechat_code($row->{error_code});
		push @v, [ 'I3', "the plan was stopped, but the request failed with $row->{error_code}, not WX003", $row->{line} ]
		  if $row->{error_code} ne 'WX003' && !is_wechat_code($row->{error_code});
	}
	return @v;
}

# I4 from the server log: each worker writes "wxpay_signplan worker N
# started serving database "D"" once it holds D's place, and "... stopped
# serving ..." before it lets go of it; a second "started" for D while
# another pid has not stopped there is a violation.  A worker that died
# without its "stopped" line is over when the postmaster logs its exit, a
# crash restart or a shutdown.
sub check_log
{
	my $log = slurp_file($node->logfile, $log_offset);
	$log_offset += length($log);
	for my $line (split /\n/, $log)
	{
		if ($line =~ /wxpay_signplan worker (\d+) (started|stopped) serving database "([^"]*)"/)
		{
			my ($pid, $what, $db) = ($1, $2, $3);
			my $live = $log_live{$db} //= {};
			if ($what eq 'started')
			{
				violation('I4', undef, "the log shows queue worker $pid started in $db while "
					  . join(', ', sort keys %$live) . " had not stopped: $line")
				  if %$live && !$live->{$pid};
				$live->{$pid} = 1;
			}
			else { delete $live->{$pid}; }
		}
		elsif ($line =~ /\(PID (\d+)\) (?:exited with exit code|was terminated by signal)/)
		{
			delete $_->{$1} for values %log_live;
		}
		elsif ($line =~ /all server processes terminated; reinitializing|database system is shut down|starting PostgreSQL/)
		{
			%log_live = ();
		}
	}
	return;
}

# ---------------------------------------------------------------------------
# The judge itself must be able to fail: synthetic records, each with the
# invariants it breaks

{
	my $ev = sub {
		my ($seq, $op, %o) = @_;
		return { seq => $seq, op => $op, applied => 0, already_stopped => 0,
			status => 200, delivered_intact => 1, %o };
	};
	my $row = sub {
		my ($state, $attempts, $code) = @_;
		return [ { line => "synthetic|$state|$attempts|$code", state => $state,
			attempts => $attempts, error_code => $code } ];
	};
	my @cases = (
		[ 'clean: answer lost, settled by a query',
			1, $row->('succeeded', 2, ''),
			[ $ev->(1, 'stop', applied => 1, status => undef, delivered_intact => 0), $ev->(2, 'query') ], '' ],
		[ 'clean: 429, then the stop again', 1, $row->('succeeded', 2, ''),
			[ $ev->(1, 'stop', status => 429), $ev->(2, 'stop', applied => 1) ], '' ],
		[ 'rolled back, yet sent', 0, [], [ $ev->(1, 'stop', applied => 1) ], 'I1' ],
		[ 'blind stop after a 500', 1, $row->('failed', 2, 'INVALID_REQUEST'),
			[ $ev->(1, 'stop', applied => 1, status => 500), $ev->(2, 'stop', already_stopped => 1, status => 400) ],
			'I2 I2 I3' ],
		[ 'blind stop after a query answered 429', 1, $row->('succeeded', 3, ''),
			[ $ev->(1, 'stop', status => undef, delivered_intact => 0), $ev->(2, 'query', status => 429),
			  $ev->(3, 'stop', applied => 1) ], 'I2' ],
		[ 'bad signature, then a stop', 1, $row->('succeeded', 2, ''),
			[ $ev->(1, 'stop', applied => 1, delivered_intact => 0), $ev->(2, 'stop', already_stopped => 1, status => 400) ],
			'I2 I2' ],
		[ 'clean: a slow stop applied after the query that found the plan active',
			1, $row->('succeeded', 3, ''),
			[ $ev->(1, 'stop', applied => 1, status => undef, delivered_intact => 0),
			  $ev->(2, 'query', state_after => 'active'), $ev->(3, 'stop', status => 429),
			  $ev->(4, 'stop', already_stopped => 1, status => 400), $ev->(5, 'query', state_after => 'stopped') ],
			'' ],
		[ 'the same race, but failed with the refusal', 1, $row->('failed', 3, 'INVALID_REQUEST'),
			[ $ev->(1, 'stop', applied => 1, status => undef, delivered_intact => 0),
			  $ev->(2, 'query', state_after => 'active'), $ev->(3, 'stop', status => 429),
			  $ev->(4, 'stop', already_stopped => 1, status => 400) ],
			'I3' ],
		[ 'succeeded, never stopped', 1, $row->('succeeded', 1, ''), [ $ev->(1, 'query') ], 'I3' ],
		[ 'stopped, failed with WX001', 1, $row->('failed', 10, 'WX001'),
			[ $ev->(1, 'stop', applied => 1, status => undef, delivered_intact => 0), $ev->(2, 'query', status => 429) ],
			'I3' ],
		[ 'unfinished, too many attempts', 1, $row->('queued', $MAX_ATTEMPTS + 1, ''), [], 'I5 I5' ],
		[ 'committed, no row', 1, [], [], 'I5' ],
		[ 'clean: committed after the promoted standby\'s replay position, lost', 1, [],
			[ $ev->(1, 'stop', applied => 1) ], '', 1 ],
		[ 'lost in a failover, yet stopped blindly twice by the old primary', 1, [],
			[ $ev->(1, 'stop', applied => 1, status => 500), $ev->(2, 'stop', already_stopped => 1, status => 400) ],
			'I2 I2', 1 ],
		[ 'may have been lost in a failover, but has a row: judged in full', 1, $row->('succeeded', 1, ''),
			[ $ev->(1, 'query') ], 'I3', 1 ],
		[ 'a row in the other database too', 1, $row->('succeeded', 1, ''),
			[ $ev->(1, 'stop', applied => 1) ], 'I7', undef, $row->('queued', 0, '') ],
		[ 'queued in the other database only', 1, [],
			[], 'I7 I5', undef, $row->('succeeded', 1, '') ],
		[ 'rolled back here, committed in the other database', 0, [],
			[ $ev->(1, 'stop', applied => 1) ], 'I7 I1', undef, $row->('succeeded', 1, '') ],
	);
	for my $c (@cases)
	{
		my ($name, $committed, $rows, $events, $want, $lost, $foreign) = @$c;
		my $got = join ' ', map { $_->[0] } judge_plan({ committed => $committed, may_be_lost => $lost, db => 'postgres' },
			$rows, $events, $foreign);
		is($got, $want, "the judge on a synthetic record: $name");
	}
	$lost_total = 0;    # counted by the synthetic records too
}

# ---------------------------------------------------------------------------
# The schedules

my ($total_reqs, $total_violations, $t_start) = (0, 0, time);
for my $n ($first .. $first + $schedules - 1)
{
	$cur_sched = $n;
	@violations = ();
	%overlap = ();
	my $sched = draw_schedule($n);
	$plans_by_no = { map { $_->{plan} => $_ } @{ $sched->{reqs} } };
	$total_reqs += @{ $sched->{reqs} };

	for my $r (@{ $sched->{reqs} })
	{
		sim_post('/faults', { plan => $r->{plan}, stop => $r->{script}{stop}, query => $r->{script}{query} })
		  if @{ $r->{script}{stop} } || @{ $r->{script}{query} };
	}
	my $t0 = time;
	my $drained = eval {
		run_step($_) for @{ $sched->{steps} };
		drain($n, $sched->{mid_drain}, $sched->{fo_drain});
	};
	if (!defined $drained)
	{
		fail("schedule $n (seed $seed) could not run: $@");
		last;
	}
	# anything still held (a hold whose kill came first) is let go
	sim_post('/release', {});
	violation('I5', undef, "the queue did not drain within ${WAIT} s") unless $drained;
	check_schedule($n, $sched, $drained);
	check_log();
	violation('I4', undef,
		"$overlap{samples} samples of pg_stat_activity saw more than one queue worker; first: $overlap{first}; most: $overlap{max}"
	) if %overlap;

	# each step with the database it went to (a = postgres, b = t15_other)
	my $at = sub { my ($s) = @_; return defined $s->{db} ? ($s->{db} eq $DBS[0] ? '@a' : '@b') : ''; };
	my $desc = join(' ', map { ($_->{do} eq 'txn' ? $_->{kind} : $_->{do}) . $at->($_) } @{ $sched->{steps} });
	$desc .= " | drain+$sched->{mid_drain}{do}" . $at->($sched->{mid_drain}) if $sched->{mid_drain};
	$desc .= ' | drain+' . join('+', map { $_->{do} } @{ $sched->{fo_drain} }) if $sched->{fo_drain};
	note(sprintf('schedule %d: %d requests (%d in %s), %.1f s: %s', $n, scalar @{ $sched->{reqs} },
			scalar(grep { $_->{db} eq $DBS[1] } @{ $sched->{reqs} }), $DBS[1], time - $t0, $desc));
	ok(!@violations, "schedule $n (seed $seed): invariants I1-I7 hold")
	  or diag(join("\n", @violations));
	$total_violations += @violations;
}

cmp_ok($max_workers_seen, '<=', 1, 'never two queue workers of one database at once in pg_stat_activity');
note("$failovers failover(s), $lost_total committed request(s) lost in them");
cmp_ok($cancels, '>', 0, 'the worker was cancelled in some schedule')
  if $schedules >= 6;
note(sprintf('%d schedules, %d requests, %d violations, %d worker cancels in %.0f s (seed %s)',
		$schedules, $total_reqs, $total_violations, $cancels, time - $t_start, $seed));

for my $n ($node, @retired)
{
	my $log = slurp_file($n->logfile);
	unlike($log, qr/TRAP:|PANIC|server process .* was terminated by signal (?!9\b)\d+/,
		'no assertion failure, PANIC or crash we did not cause (' . $n->name . ')');
}

$node->stop('fast');
$standby->stop('fast');
stop_sim($sim);
done_testing();
