
# 030_batch.pl: wxpay_stop_sign_plans() keeps several requests in flight,
# obeys PostgreSQL's interrupts, reuses its connections and leaves memory
# flat.
#
#  (a) concurrency: with wxpay.batch_concurrency = 4, four stalled requests
#      are at the simulator at the same time and a fifth is not started;
#      pg_cancel_backend() then ends the call with 57014 within 1 second;
#  (b) statement_timeout ends a batch of stalled requests the same way;
#  (c) cancel while the batch is still signing (no request in flight yet
#      beyond the first few) is also prompt;
#  (d) connections: a batch at concurrency 4 opens exactly 4 TLS
#      connections, a second batch and a sequential call in the same
#      session open none;
#  (e) memory: a second batch of 400 leaves the backend's memory contexts
#      where the first left them.
#
# Simulator counters are compared before/after (prove runs files one at a
# time); plan numbers start with t30.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WxpayTest;

my $node = new_node('batch');

my $s = $node->background_psql('postgres', on_error_stop => 0);
my $ctl = $node->background_psql('postgres');
$s->query_safe('\set VERBOSITY verbose');
my $pid = $s->query_safe('SELECT pg_backend_pid()');
like($pid, qr/^\d+$/, "backend pid $pid");

my $E = qr/^(?:psql:<stdin>:\d+: )?ERROR:  /m;

# SQL for a batch stop of @plans, one line per row: no|ok|sqlstate
sub batch_sql
{
	my ($reason, @plans) = @_;
	return
	    "SELECT merchant_sign_plan_no, ok, sqlstate FROM wxpay_stop_sign_plans(ARRAY["
	  . join(',', map { "'$_'" } @plans)
	  . "], '$reason')";
}

sub session_recovers
{
	my ($label, @fresh) = @_;
	session_ok_query($s, 'SELECT 1', '1', "$label: the session then runs SELECT 1");
	session_ok_query($s, batch_sql('after', @fresh),
		join("\n", map { "$_|t|" } @fresh),
		"$label: the session then stops fresh plans in a batch");
	return;
}

# ---- (a) four in flight at once, then pg_cancel_backend() ----
{
	my @stall = map { "fault-stall-t30a$_" } 1 .. 4;
	my $fifth = 't30a-fifth';
	session_ok_query($s, "SET wxpay.batch_concurrency = 4; SET wxpay.request_timeout = '60s'",
		'', 'concurrency: set 4 and a long request timeout');
	my $tok = bg_send($s, batch_sql('stall', @stall, $fifth));

	ok( session_wait_until($s,
			'four stalled requests at the simulator',
			sub { (grep { sim_stop_attempts($_) == 1 } @stall) == 4 }),
		'concurrency: four requests are at the simulator at the same time');
	is(sim_stop_attempts($fifth), 0,
		'concurrency: the fifth is not started while four are in flight');
	ok( $node->poll_query_until(
			'postgres',
			"SELECT wait_event_type = 'Extension' AND state = 'active' "
			  . "FROM pg_stat_activity WHERE pid = $pid"),
		'concurrency: the backend waits on an Extension wait event');

	my $t0 = time();
	is($ctl->query_safe("SELECT pg_cancel_backend($pid)"),
		't', 'cancel: pg_cancel_backend() sent');
	my (undef, $err) = bg_finish($s, $tok);
	my $elapsed = time() - $t0;
	note(sprintf('cancel: error %.3f s after the cancel', $elapsed));
	like($err, qr/${E}57014: canceling statement due to user request$/m,
		'cancel: the batch ended with 57014');
	cmp_ok($elapsed, '<', 1.0, 'cancel: within 1 s of the cancel');
	is(scalar(grep { sim_stops($_) == 0 } @stall),
		4, 'cancel: no stalled plan was stopped');
	is(sim_stop_attempts($fifth), 0, 'cancel: the fifth was never sent');
	session_recovers('cancel', 't30a-after-1', 't30a-after-2');
}

# ---- (b) statement_timeout ----
{
	my @stall = map { "fault-stall-t30b$_" } 1 .. 6;
	session_ok_query($s, "SET statement_timeout = '300ms'", '', 'statement_timeout: set 300ms');
	my $t0 = time();
	my $tok = bg_send($s, batch_sql('timeout', @stall));
	my (undef, $err) = bg_finish($s, $tok);
	my $elapsed = time() - $t0;
	note(sprintf('statement_timeout: error %.3f s after sending', $elapsed));
	like($err, qr/${E}57014: canceling statement due to statement timeout$/m,
		'statement_timeout: the batch ended with 57014');
	cmp_ok($elapsed, '<', 0.3 + 1.0,
		'statement_timeout: within 1 s of the timeout');
	session_ok_query($s, 'RESET statement_timeout', '', 'statement_timeout: reset');
	session_recovers('statement_timeout', 't30b-after-1');
}

# ---- (c) cancel while there are still thousands of elements to sign ----
{
	# 4 stalled requests occupy the slots; 20000 more wait to be signed.
	# The cancel comes while the loop waits; it must not sign the rest.
	session_ok_query($s, "SET wxpay.batch_concurrency = 4", '', 'long batch: concurrency 4');
	my $tok = bg_send($s,
		    "SELECT count(*) FROM wxpay_stop_sign_plans("
		  . "ARRAY['fault-stall-t30c1','fault-stall-t30c2','fault-stall-t30c3','fault-stall-t30c4']"
		  . " || ARRAY(SELECT 't30c-' || i FROM generate_series(1, 20000) i), 'long')");
	ok(session_wait_until($s, 'the stalled requests', sub { sim_stop_attempts('fault-stall-t30c4') == 1 }),
		'long batch: the first four requests are in flight');
	my $t0 = time();
	$ctl->query_safe("SELECT pg_cancel_backend($pid)");
	my (undef, $err) = bg_finish($s, $tok);
	my $elapsed = time() - $t0;
	like($err, qr/${E}57014: canceling statement due to user request$/m,
		'long batch: ended with 57014');
	cmp_ok($elapsed, '<', 1.0, 'long batch: within 1 s of the cancel');
	is(sim_stop_attempts('t30c-1'), 0, 'long batch: nothing after the stalled four was sent');
	session_ok_query($s, 'RESET wxpay.batch_concurrency; RESET wxpay.request_timeout',
		'', 'long batch: reset');
}

# ---- (d) connections: one per slot, kept for the session ----
{
	my $n = $node->background_psql('postgres');
	$n->query_safe('SET wxpay.batch_concurrency = 4');
	my @p1 = map { "t30d-a$_" } 1 .. 40;
	my @p2 = map { "t30d-b$_" } 1 .. 40;

	my $before = sim_stats();
	my $out = $n->query_safe(batch_sql('conn', @p1));
	my $mid = sim_stats();
	is($out, join("\n", map { "$_|t|" } @p1), 'connections: 40 plans stopped in order');
	is($mid->{tls_connections} - $before->{tls_connections},
		4, 'connections: concurrency 4 opened exactly 4 TLS connections');

	$out = $n->query_safe(batch_sql('conn', @p2));
	$n->query_safe("SELECT wxpay_stop_sign_plan('t30d-seq', 'conn')");
	my $after = sim_stats();
	is($out, join("\n", map { "$_|t|" } @p2), 'connections: 40 more stopped');
	is($after->{tls_connections} - $mid->{tls_connections},
		0, 'connections: a second batch and a sequential call reuse them');
	is($after->{requests} - $before->{requests}, 81, 'connections: 81 requests in all');
	$n->quit;
}

# ---- (e) memory stays flat ----
{
	my $n = $node->background_psql('postgres');
	my $mem_sql = 'SELECT sum(total_bytes) FROM pg_backend_memory_contexts';
	# a mix: successes, rejections, bad signatures, invalid and duplicates
	my $batch = sub {
		my ($tag) = @_;
		return
		    "SELECT count(*) FILTER (WHERE ok) || '/' || count(*) FROM wxpay_stop_sign_plans(ARRAY("
		  . "SELECT CASE i % 5 WHEN 0 THEN 'fault-http400-t30e$tag' || i "
		  . "WHEN 1 THEN 'fault-bad_signature-t30e$tag' || i "
		  . "WHEN 2 THEN 'bad plan' WHEN 3 THEN 't30e$tag-dup' "
		  . "ELSE 't30e$tag-' || i END FROM generate_series(1, 400) i), 'mem')";
	};
	# 80 successes plus the first 't30e?-dup'
	is($n->query_safe($batch->('w')), '81/400', 'memory: warm-up batch');
	my $mem0 = $n->query_safe($mem_sql);
	is($n->query_safe($batch->('m')), '81/400', 'memory: second batch');
	my $mem1 = $n->query_safe($mem_sql);
	note("memory: contexts $mem0 -> $mem1 bytes");
	cmp_ok($mem1 - $mem0, '<=', 0, 'memory: contexts did not grow');
	$n->quit;
}

$s->quit;
$ctl->quit;
$node->stop;
done_testing();
