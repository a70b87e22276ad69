
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
#      where the first left them;
#  (f) the config becomes unusable after the first element was sent (its
#      only platform certificate expires while the first answer is held):
#      the statement still returns every row; the first is WX003 (its
#      answer can no longer be verified), the later ones WX001 rows that
#      were never sent (issue 18, item 7).  Before anything was sent, the
#      same config is the statement's WX001.
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

# ---- (f) the config becomes unusable mid-batch ----
{
	my $n = $node->background_psql('postgres', on_error_stop => 0);
	$n->query_safe('SET wxpay.batch_concurrency = 1');
	my $serial = pki_file('platform_cert_serial.txt', chomp => 1);
	$node->safe_psql('postgres', certmode_config_sql(name => 't30cert'));
	my $rows_sql = sub {
		my (@plans) = @_;
		return
		    "SELECT merchant_sign_plan_no, ok, sqlstate, error_message FROM wxpay_stop_sign_plans(ARRAY["
		  . join(',', map { "'$_'" } @plans)
		  . "], 'expiry', 't30cert')";
	};
	my $no_key = qr/wxpay configuration "t30cert" has no key to verify WeChat Pay's answers/;

	# expired before the batch: the statement's WX001, nothing sent
	$node->safe_psql('postgres',
		"INSERT INTO wxpay_platform_certificate (config_name, serial_no, certificate, expire_time) "
		  . "VALUES ('t30cert', '$serial', " . dq(pki_file('platform_cert.crt')) . ", now() - interval '1 minute')");
	clear_session($n);
	my (undef, $failed) = $n->query($rows_sql->('t30f0-1', 't30f0-2'));
	like($n->{stderr}, qr/ERROR:  $no_key/, 'expired before the batch: the statement fails with WX001');
	is(sim_stop_attempts('t30f0-1') + sim_stop_attempts('t30f0-2'), 0,
		'expired before the batch: nothing was sent');

	# The certificate expires at T, a few seconds from now; the first answer
	# is held until T has passed.  Should the machine be so slow that even
	# the first element is signed after T (the statement's WX001, nothing
	# sent), try again with a longer delay: the outcome never depends on it.
	my ($out, $err, $p);
	for my $try (1 .. 4)
	{
		my $secs = 2 * 4**($try - 1);
		$p = "t30f$try";
		$node->safe_psql('postgres',
			"UPDATE wxpay_platform_certificate SET expire_time = clock_timestamp() + interval '$secs seconds' "
			  . "WHERE config_name = 't30cert'");
		my $t = $node->safe_psql('postgres',
			"SELECT expire_time FROM wxpay_platform_certificate WHERE config_name = 't30cert'");
		ctl_post('/faults', { plan => "$p-1", fault => 'hold' });
		my $tok = bg_send($n, $rows_sql->("$p-1", "$p-2", "$p-3"));
		if (!session_wait_until($n, 'the held first stop',
				sub { @{ sim_held("$p-1") } }))
		{
			(undef, $err) = bg_finish($n, $tok);
			like($err, qr/ERROR:  $no_key/, "try $try: expired before the first element was signed");
			next;
		}
		ok( $node->poll_query_until('postgres', "SELECT clock_timestamp() > '$t'"),
			'mid-batch: the certificate expired while the first answer is held');
		ctl_post('/release', { plan => "$p-1" });
		($out, $err) = bg_finish($n, $tok);
		last;
	}
	unlike($err // '', qr/ERROR/, 'mid-batch: the statement does not fail');
	my @rows = map { [ split /\|/, $_, 4 ] } split /\n/, $out // '';
	is(scalar(@rows), 3, 'mid-batch: one row per element');
	is(join(' ', map { "$_->[0]:$_->[1]:$_->[2]" } @rows),
		"$p-1:f:WX003 $p-2:f:WX001 $p-3:f:WX001",
		'mid-batch: the first element is WX003, the later ones WX001 rows');
	like($rows[0][3] // '', qr/failed verification: no usable key of wxpay configuration "t30cert"/,
		'mid-batch: the first answer could not be verified any more');
	like($rows[1][3] // '', qr/^$no_key: No configured platform certificate is in its validity period now\.$/,
		'mid-batch: a later row says why it was not sent');
	is(sim_stops("$p-1"), 1, 'mid-batch: the first plan was stopped');
	is(sim_stop_attempts("$p-2") + sim_stop_attempts("$p-3"), 0,
		'mid-batch: the later elements were never sent');
	$n->quit;
}

$s->quit;
$ctl->quit;
$node->stop;
done_testing();
