
# 003_sessions.pl: what a backend keeps between calls, and what several
# backends do together.
#
#  (a) keep-alive: 20 calls in one session use one TLS connection;
#  (b) config cache: a committed change to wxpay_config reaches a session
#      that has the old config cached (and an uncommitted one does not);
#  (c) memory: 1000 mixed calls (successes and every kind of failure) leave
#      the backend's memory contexts flat;
#  (d) concurrency: 4 sessions stopping 25 plans each at the same time all
#      succeed, each plan stopped exactly once.
#
# Counters of the shared simulator are compared before/after, which assumes
# that prove runs the test files one at a time (the default).

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use WxpayTest;

my $node = new_node('sessions');
my $serial = pki_file('merchant_serial.txt', chomp => 1);

sub stops_of
{
	my ($st, $plan) = @_;
	return $st->{stops}{$plan} // 0;
}

sub attempts_of
{
	my ($st, $plan) = @_;
	return $st->{stop_attempts}{$plan} // 0;
}

my $E = qr/(?:psql:<stdin>:\d+: )?ERROR:  /;

# ---------------------------------------------------------------------------
# (a) keep-alive
{
	my @plans = map { "t3-ka-$_" } 1 .. 20;
	my $before = sim_stats();
	my $out = $node->safe_psql('postgres',
		join('',
			map { "SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('$_', 'keepalive');\n" }
			  @plans));
	my $after = sim_stats();
	is($out, join("\n", @plans), 'keep-alive: 20 sequential stops in one session');
	is($after->{requests} - $before->{requests},
		20, 'keep-alive: the simulator got 20 requests');
	is($after->{tls_connections} - $before->{tls_connections},
		1, 'keep-alive: over exactly one new TLS connection');
	is(scalar(grep { stops_of($after, $_) == 1 } @plans),
		20, 'keep-alive: every plan stopped once');
}

# ---------------------------------------------------------------------------
# (b) the config cache follows committed changes
{
	my $sa = $node->background_psql('postgres', on_error_stop => 0);
	my $sb = $node->background_psql('postgres', on_error_stop => 0);
	$sb->query_safe('\set VERBOSITY verbose');

	# returns (stdout, stderr) of one stop in session B
	my $b_stop = sub {
		my ($plan) = @_;
		return bg_finish($sb,
			bg_send($sb,
				"SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('$plan', 'cache');"
			));
	};
	my $a_run = sub {
		my ($sql) = @_;
		my ($out, $err) = bg_finish($sa, bg_send($sa, $sql));
		is($err, '', "cache: session A: $sql");
		return $out;
	};

	my ($out, $err) = $b_stop->('t3-cache-1');
	is("$out$err", 't3-cache-1|SIGN_PLAN_CANCEL',
		'cache: B stops a plan (config cached)');

	# an uncommitted change is invisible to B, and B does not block on it
	$a_run->('BEGIN');
	$a_run->("UPDATE wxpay_config SET serial_no = '0123ABCD'");
	($out, $err) = $b_stop->('t3-cache-open');
	is("$out$err", 't3-cache-open|SIGN_PLAN_CANCEL',
		'cache: B still uses the committed config while A has not committed');

	# the committed change reaches B's cache
	$a_run->('COMMIT');
	is($a_run->('SELECT serial_no FROM wxpay_config'), '0123ABCD',
		'cache: the wrong serial is committed');
	($out, $err) = $b_stop->('t3-cache-2');
	is($out, '', 'cache: B gets no row with the wrong serial');
	like($err, qr/^${E}WX002: could not stop sign plan "t3-cache-2"$/m,
		'cache: B fails with WX002 once the wrong serial is committed');
	like($err, qr/^DETAIL:  WeChat Pay answered HTTP 401 with code "SIGN_ERROR"/m,
		'cache: the platform code is SIGN_ERROR');
	my @reqs = sim_requests_for_path(plan_path('t3-cache-2', 'stop'));
	like($reqs[-1]{headers}{authorization} // '',
		qr/,serial_no="0123ABCD"\z/, 'cache: B sent the new serial_no');
	is(stops_of(sim_stats(), 't3-cache-2'), 0,
		'cache: the rejected call did not stop t3-cache-2');

	# restoring the serial is seen as well
	$a_run->("UPDATE wxpay_config SET serial_no = '$serial'");
	($out, $err) = $b_stop->('t3-cache-2');
	is("$out$err", 't3-cache-2|SIGN_PLAN_CANCEL',
		'cache: after the serial is restored B stops t3-cache-2');
	is(stops_of(sim_stats(), 't3-cache-2'), 1,
		'cache: t3-cache-2 stopped exactly once');

	$sa->quit;
	$sb->quit;
}

# ---------------------------------------------------------------------------
# (c) memory stays flat over many calls, successes and failures alike
{
	# one call of each kind per i, by i % 6; returns counts by outcome
	$node->safe_psql(
		'postgres', q{
CREATE FUNCTION t3_mix(prefix text, n int) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    ok int := 0; wx002 int := 0; wx003 int := 0; e22023 int := 0; e42704 int := 0;
    other text := '';
    plan text; reason text; cfg text; st text; r wxpay_sign_plan;
BEGIN
    FOR i IN 1..n LOOP
        reason := 'mem ' || i;
        cfg := 'default';
        CASE i % 6
            WHEN 0 THEN plan := prefix || '-ok-' || i;
            WHEN 1 THEN plan := 'fault-http500-' || prefix || i;
            WHEN 2 THEN plan := 'fault-bad_signature-' || prefix || i;
            WHEN 3 THEN plan := 'fault-http400-' || prefix || i;
            WHEN 4 THEN plan := CASE WHEN i % 12 = 4 THEN 'bad plan ' || i ELSE prefix || '-e-' || i END;
                        reason := CASE WHEN i % 12 = 4 THEN reason ELSE U&'\+01F600' END;
            ELSE        plan := prefix || '-nc-' || i; cfg := 'nope';
        END CASE;
        BEGIN
            r := wxpay_stop_sign_plan(plan, reason, cfg);
            IF r.merchant_sign_plan_no = plan AND r.sign_state = 'SIGN_PLAN_CANCEL' THEN
                ok := ok + 1;
            ELSE
                other := other || ' bad-row:' || plan;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
            CASE st
                WHEN 'WX002' THEN wx002 := wx002 + 1;
                WHEN 'WX003' THEN wx003 := wx003 + 1;
                WHEN '22023' THEN e22023 := e22023 + 1;
                WHEN '42704' THEN e42704 := e42704 + 1;
                ELSE other := other || ' ' || st || ':' || plan;
            END CASE;
        END;
    END LOOP;
    RETURN format('ok=%s WX002=%s WX003=%s 22023=%s 42704=%s other=%s',
                  ok, wx002, wx003, e22023, e42704, other);
END
$fn$});

	my $expect = sub {
		my ($n) = @_;
		my %c;
		$c{ $_ % 6 }++ for 1 .. $n;
		return sprintf('ok=%d WX002=%d WX003=%d 22023=%d 42704=%d other=',
			$c{0} // 0, $c{3} // 0, ($c{1} // 0) + ($c{2} // 0), $c{4} // 0,
			$c{5} // 0);
	};

	my $s = $node->background_psql('postgres');
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	my $mem_sql = 'SELECT sum(total_bytes) FROM pg_backend_memory_contexts';
	my $rss = sub {
		my $st = slurp_file("/proc/$pid/status");
		return $st =~ /^VmRSS:\s+(\d+) kB/m ? $1 : -1;
	};

	is($s->query_safe("SELECT t3_mix('t3w', 60)"),
		$expect->(60), 'memory: warm-up calls classified as expected');
	my $mem0 = $s->query_safe($mem_sql);
	my $rss0 = $rss->();
	cmp_ok($rss0, '>', 0, "memory: VmRSS of backend $pid is readable");

	my $before = sim_stats();
	my $t0 = time();
	is($s->query_safe("SELECT t3_mix('t3m', 1000)"),
		$expect->(1000), 'memory: 1000 mixed calls classified as expected');
	note(sprintf('memory: 1000 calls took %.1f s', time() - $t0));
	my $mem1 = $s->query_safe($mem_sql);
	my $rss1 = $rss->();
	# kinds 0 to 3 reach the network, 4 and 5 fail before it
	is(sim_stats()->{requests} - $before->{requests},
		scalar(grep { $_ % 6 <= 3 } 1 .. 1000),
		'memory: the calls that pass the checks reached the simulator');

	note("memory: memory contexts $mem0 -> $mem1 bytes ("
		  . ($mem1 - $mem0)
		  . "), VmRSS $rss0 -> $rss1 kB");
	cmp_ok($mem1 - $mem0, '<', 256 * 1024,
		'memory: memory contexts grew less than 256 kB over 1000 calls');
	# OpenSSL and libcurl allocate with malloc, which memory contexts do not
	# see: a leak of 2 kB a call would show here
	SKIP:
	{
		# AddressSanitizer holds freed memory in quarantine; under it
		# (test/sanitize.sh) LeakSanitizer checks malloc'd memory instead
		skip 'resident size is not meaningful under AddressSanitizer', 1
		  if $ENV{WXPAY_SANITIZER};
		cmp_ok($rss1 - $rss0, '<', 2048,
			'memory: resident size grew less than 2 MB over 1000 calls');
	}
	$s->quit;
}

# ---------------------------------------------------------------------------
# (d) 4 sessions at once, 25 plans each
{
	my $nw = 4;
	my $per = 25;
	my @plans;
	for my $w (1 .. $nw)
	{
		push @plans, map { "t3-cc-$w-$_" } 1 .. $per;
	}

	my $ctl = $node->background_psql('postgres');
	my @workers = map { $node->background_psql('postgres') } 1 .. $nw;
	my $before = sim_stats();

	# a barrier: the workers queue on an advisory lock that $ctl holds
	$ctl->query_safe('SELECT pg_advisory_lock(3003)');
	my @tok;
	for my $w (1 .. $nw)
	{
		push @tok,
		  bg_send(
			$workers[ $w - 1 ],
			"SELECT 1 FROM pg_advisory_lock_shared(3003);\n"
			  . "SELECT count(*) FROM generate_series(1, $per) g, "
			  . "LATERAL wxpay_stop_sign_plan(format('t3-cc-$w-%s', g), 'concurrent') s "
			  . "WHERE s.merchant_sign_plan_no = format('t3-cc-$w-%s', g) "
			  . "AND s.sign_state = 'SIGN_PLAN_CANCEL';");
	}
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
			  . "AND objid = 3003 AND NOT granted",
			$nw),
		"concurrency: the $nw workers wait at the barrier");
	$ctl->query_safe('SELECT pg_advisory_unlock(3003)');

	for my $w (1 .. $nw)
	{
		my ($out, $err) = bg_finish($workers[ $w - 1 ], $tok[ $w - 1 ]);
		is("$out$err", "1\n$per", "concurrency: worker $w stopped its $per plans");
		$workers[ $w - 1 ]->quit;
	}
	$ctl->quit;

	my $after = sim_stats();
	is(scalar(grep { stops_of($after, $_) == 1 } @plans),
		$nw * $per, 'concurrency: the simulator stopped every plan exactly once');
	is(scalar(grep { attempts_of($after, $_) == 1 } @plans),
		$nw * $per, 'concurrency: every plan was attempted exactly once');
	is($after->{requests} - $before->{requests},
		$nw * $per, 'concurrency: no other request was made');
	is($after->{tls_connections} - $before->{tls_connections},
		$nw, 'concurrency: one kept-alive TLS connection per session');
}

$node->stop;
done_testing();
