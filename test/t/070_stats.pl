# 070_stats.pl: the statistics views (wxpay_stat, wxpay_queue_status) and
# wxpay_stat_reset(), on a cluster that preloads the library.
#
# Each door gets a config of its own, so that after a reset every row can be
# compared exactly: N successful stops, M rejections, K timeouts, a
# failover, a config error and a cancel, through the synchronous function,
# the batch, the queue worker, query, refresh and check.  Input errors and
# an unknown config name must not be counted.  A private simulator with a
# fixed latency proves that the percentiles measure the HTTP exchange and
# stay ordered.  A second cluster without the preload shows the one way the
# views say that statistics need it.
#
# No sleeps: the worker's results are awaited with wxpay_wait_stop_request
# or poll_query_until.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $LATENCY_MS = 300;

my $closed = refusing_port();    # connecting fails at once (nothing sent)
my $closed_url = 'https://127.0.0.1:' . $closed->sockport;

my $slow = start_sim();
ctl_post_at($slow, '/settings', { latency_ms => $LATENCY_MS });

my $node = PostgreSQL::Test::Cluster->new('stats');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'wxpay_signplan'
# only postgres served: st_other below is a queue no worker serves
wxpay.database_name = 'postgres'
wxpay.retry_base_delay = '20ms'
wxpay.retry_max_delay = '100ms'
wxpay.reconcile_delay = '0'
wxpay.request_timeout = '1s'
wxpay.rate_limit = 0
wxpay.max_attempts = 2
wxpay.certificate_refresh_interval = 0
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');

my %configs = (
	st_sync => {},
	st_batch => {},
	st_queue => {},
	st_query => {},
	st_check => {},
	st_cancel => {},
	st_fo => { base_url => $closed_url, backup_base_url => sim_url() },
	st_down => { base_url => $closed_url },
	st_badkey => { private_key => "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n" },
	st_slow => { base_url => $slow->{url} },
	st_wcfg => {},
);
$node->safe_psql('postgres', config_insert_sql(name => $_, %{ $configs{$_} }))
  for sort keys %configs;
# platform-certificate mode, for a refresh (mchid 1900000002, apiv3_key)
$node->safe_psql('postgres',
	config_insert_from_files_sql(
		name => 'st_refresh',
		mchid => '1900000002',
		wechatpay_public_key_id => undef,
		wechatpay_public_key => undef,
		backup_base_url => undef));

# A unique plan number per run of this file.
my $run = sprintf('%x', $$);
sub pn { return "st60-$run-$_[0]"; }

sub sql { return $node->safe_psql('postgres', $_[0]); }

# Run $sql expecting an error; returns its SQLSTATE.
sub fails
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\n$sql", on_error_stop => 1);
	return $err =~ /ERROR:  ([0-9A-Z]{5}):/ ? $1 : "no error ($rc): $err";
}

# One row of wxpay_stat as "calls succ rej unk notsent err failovers timed"
sub counts
{
	my ($cfg, $op, $source) = @_;
	my $out = sql(
		"SELECT calls, succeeded, rejected, unknown, not_sent, errors, failovers, timed_calls
		   FROM wxpay_stat
		  WHERE config_name = '$cfg' AND operation = '$op' AND source = '$source'");
	return $out eq '' ? 'none' : join(' ', split /\|/, $out);
}

# ---- a reset starts from nothing ----

my $reset_at = sql('SELECT wxpay_stat_reset()');
sql("SELECT wxpay_query_sign_plan('" . pn('warm') . "', 'st_query')");
sql('SELECT wxpay_stat_reset()');
is(sql('SELECT count(*) FROM wxpay_stat'), '0', 'a reset leaves no rows');

# ---- synchronous stops: 3 succeed, 2 rejected, 2 time out ----

sql("SELECT wxpay_stop_sign_plan('" . pn("ok$_") . "', 'stats', 'st_sync')") for 1 .. 3;
is(fails("SELECT wxpay_stop_sign_plan('" . pn('ok1') . "', 'again', 'st_sync')"),
	'WX002', 'stopping a stopped plan is rejected');
is(fails("SELECT wxpay_stop_sign_plan('fault-http400-" . pn('r') . "', 'x', 'st_sync')"),
	'WX002', 'a 400 is rejected');
is(fails("SELECT wxpay_stop_sign_plan('fault-stall-" . pn("t$_") . "', 'x', 'st_sync')"),
	'WX003', "a stall times out ($_)") for 1 .. 2;

# not calls: input errors and an unknown config
is(fails("SELECT wxpay_stop_sign_plan('bad plan!', 'x', 'st_sync')"),
	'22023', 'an invalid plan number');
is(fails("SELECT wxpay_stop_sign_plan('" . pn('n') . "', '', 'st_sync')"),
	'22023', 'an empty stop reason');
is(fails("SELECT wxpay_stop_sign_plan('" . pn('n') . "', 'x', 'st_nosuch')"),
	'42704', 'an unknown config');
is(fails("SELECT wxpay_stop_sign_plan('" . pn('n') . "', 'x', NULL)"),
	'22004', 'a null config name');

is(counts('st_sync', 'stop', 'session'), '7 3 2 2 0 0 0 7',
	'sync: 7 calls, 3 succeeded, 2 rejected, 2 unknown, all timed');
is(sql("SELECT count(*) FROM wxpay_stat WHERE config_name = 'st_nosuch'"),
	'0', 'an unknown config name is not counted');

# ---- not sent, failover, config error, cancel ----

is(fails("SELECT wxpay_stop_sign_plan('" . pn('d') . "', 'x', 'st_down')"),
	'WX004', 'a closed port: not sent');
is(counts('st_down', 'stop', 'session'), '1 0 0 0 1 0 0 1', 'not sent is counted and timed');

sql("SELECT wxpay_stop_sign_plan('" . pn('fo') . "', 'x', 'st_fo')");
is(counts('st_fo', 'stop', 'session'), '1 1 0 0 0 0 1 1', 'a failover is counted');

is(fails("SELECT wxpay_stop_sign_plan('" . pn('k') . "', 'x', 'st_badkey')"),
	'WX001', 'an unusable key');
is(counts('st_badkey', 'stop', 'session'), '1 0 0 0 0 1 0 0',
	'a config error is one call ending in error, without a time');
is(fails("SELECT * FROM wxpay_stop_sign_plans(ARRAY['" . pn('k1') . "', '" . pn('k2')
	  . "'], 'x', 'st_badkey')"),
	'WX001', 'a batch with an unusable key');
is(counts('st_badkey', 'stop', 'session'), '2 0 0 0 0 2 0 0',
	'a batch ended by a config error before any element is one call');

is(fails("SET wxpay.request_timeout = '30s'; SET statement_timeout = '300ms';"
	  . " SELECT wxpay_stop_sign_plan('fault-stall-" . pn('c') . "', 'x', 'st_cancel')"),
	'57014', 'a statement timeout cancels the call');
is(counts('st_cancel', 'stop', 'session'), '1 0 0 0 0 1 0 0', 'a cancel is an error');

# ---- the batch: each element sent is a call ----

my $batch = join(', ',
	map { "'$_'" } pn('b1'), pn('b2'), pn('b3'),
	'fault-http400-' . pn('b4'), 'fault-stall-' . pn('b5'));
is( sql(
		"SELECT string_agg(coalesce(sqlstate, 'ok'), ' ' ORDER BY ord)
		   FROM wxpay_stop_sign_plans(ARRAY[$batch, NULL, 'bad plan!', '"
		  . pn('b1') . "'], 'batch', 'st_batch') WITH ORDINALITY AS t(a, b, sqlstate, c, d, e, f, ord)"),
	'ok ok ok WX002 WX003 22004 22023 22023',
	'batch rows');
is(counts('st_batch', 'stop', 'session'), '5 3 1 1 0 0 0 5',
	'batch: the 5 elements sent, not the 3 input errors');

# the batch is canceled once both of its requests are in flight (held by
# the simulator), not after a time that a loaded machine may not honour
{
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	my ($h1, $h2) = ('fault-hold-' . pn('bc1'), 'fault-hold-' . pn('bc2'));
	my $tok = bg_send($s, "\\set VERBOSITY verbose\n"
		  . "SELECT * FROM wxpay_stop_sign_plans(ARRAY['$h1', '$h2'], 'x', 'st_cancel')");
	ok( session_wait_until(
			$s, 'both requests of the batch in flight',
			sub { @{ sim_held($h1) } == 1 && @{ sim_held($h2) } == 1 }),
		'both requests of the batch are in flight');
	sql("SELECT pg_cancel_backend($pid)");
	my (undef, $err) = bg_finish($s, $tok);
	like($err, qr/ERROR:  57014:/, 'a batch canceled with two requests in flight');
	$s->quit;
}
is(counts('st_cancel', 'stop', 'session'), '3 0 0 0 0 3 0 0',
	'each request in flight when the batch was canceled is an error');

# ---- query ----

sql("SELECT wxpay_query_sign_plan('" . pn("q$_") . "', 'st_query')") for 1 .. 2;
is(fails("SELECT wxpay_query_sign_plan('notfound-" . pn('q') . "', 'st_query')"),
	'WX002', 'querying an unknown plan is rejected');
is(counts('st_query', 'query', 'session'), '3 2 1 0 0 0 0 3', 'query');

# ---- refresh ----

cmp_ok(sql("SELECT count(*) FROM wxpay_refresh_platform_certificates('st_refresh')"),
	'>', 0, 'certificates downloaded');
is(fails("SELECT * FROM wxpay_refresh_platform_certificates('st_sync')"),
	'WX001', 'a config in public-key mode has no certificates');
is(counts('st_refresh', 'refresh', 'session'), '1 1 0 0 0 0 0 1', 'refresh');
is(counts('st_sync', 'refresh', 'session'), '1 0 0 0 0 1 0 0', 'a refresh that cannot be prepared');

# ---- check ----

sql("SELECT * FROM wxpay_check_config('st_check')");
is(counts('st_check', 'check', 'session'), 'none', 'a check without live request is no call');
is(sql("SELECT ok FROM wxpay_check_config('st_check', true) WHERE check_name = 'live_request'"),
	't', 'live check');
is(counts('st_check', 'check', 'session'), '1 1 0 0 0 0 0 1', 'check');

# ---- the queue worker ----

my @ids = map {
	sql("SELECT wxpay_stop_sign_plan_async('$_', 'queue', 'st_queue')")
} (pn('w1'), pn('w2'), 'fault-http400-' . pn('w3'), 'fault-http500-' . pn('w4'));
my %final = map {
	$_ => sql("SELECT state || ' ' || coalesce(error_code, '') FROM wxpay_wait_stop_request($_, '60s')")
} @ids;
is_deeply([ map { $final{$_} } @ids ],
	[ 'succeeded ', 'succeeded ', 'failed PARAM_ERROR', 'failed WX003' ],
	'queue outcomes');
# w4: a 500 (unknown), then (attempt 2) a query that gets a 500 too
is(counts('st_queue', 'stop', 'worker'), '4 2 1 1 0 0 0 4', 'worker stops');
is(counts('st_queue', 'query', 'worker'), '1 0 0 1 0 0 0 1', 'worker query');
is(counts('st_queue', 'stop', 'session'), 'none', 'enqueuing is not a call');

# a config that breaks between enqueue and send: each attempt is an error
my $wid = sql("BEGIN;
  SELECT wxpay_stop_sign_plan_async('" . pn('wc') . "', 'queue', 'st_wcfg');
  UPDATE wxpay_config SET private_key = 'not a key' WHERE name = 'st_wcfg';
  COMMIT;");
is(sql("SELECT state || ' ' || error_code || ' ' || attempts FROM wxpay_wait_stop_request($wid, '60s')"),
	'failed WX001 2', 'the queued request failed on its config');
is(counts('st_wcfg', 'stop', 'worker'), '2 0 0 0 0 2 0 0', 'two attempts, two errors, nothing timed');

my $qs = sql("SELECT queued, in_flight, last_error, last_error_at IS NOT NULL,
                   worker_pid = (SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker')
              FROM wxpay_queue_status WHERE config_name = 'st_queue'");
is($qs, '0|0|unknown|t|t', 'queue status: empty queue, the last error, the worker');

# the worker's own certificate refresh
sql("ALTER SYSTEM SET wxpay.certificate_refresh_interval = '1h'; SELECT pg_reload_conf()");
ok( $node->poll_query_until('postgres',
		"SELECT succeeded = 1 FROM wxpay_stat WHERE config_name = 'st_refresh' AND operation = 'refresh' AND source = 'worker'"),
	'the worker refreshes certificates and counts it');

# ---- latency ----

sql("SELECT wxpay_query_sign_plan('" . pn("s$_") . "', 'st_slow')") for 1 .. 5;
my ($min, $p50, $p95, $p99, $max, $mean) = split /\|/, sql(
	"SELECT min_time_ms, p50_time_ms, p95_time_ms, p99_time_ms, max_time_ms, mean_time_ms
	   FROM wxpay_stat WHERE config_name = 'st_slow'");
cmp_ok($min, '>=', $LATENCY_MS, "every exchange took the simulator's latency (min $min ms)");
cmp_ok($p50, '>=', $LATENCY_MS, "p50 $p50 ms tracks the latency");
cmp_ok($p50, '<', $LATENCY_MS * 3, 'p50 is not far off');
ok($p50 <= $p95 && $p95 <= $p99 && $p99 <= $max, "p50 <= p95 <= p99 <= max ($p50 $p95 $p99 $max)");
ok($mean >= $min && $mean <= $max, "mean $mean within [min, max]");
is( sql("SELECT count(*) FROM wxpay_stat
        WHERE timed_calls > 0 AND NOT (min_time_ms <= p50_time_ms AND p50_time_ms <= p95_time_ms
              AND p95_time_ms <= p99_time_ms AND p99_time_ms <= max_time_ms
              AND abs(total_time_ms / timed_calls - mean_time_ms) < 0.001)"),
	'0', 'percentiles are ordered in every row');

# ---- no key material, reset time ----

my $all = sql("SELECT * FROM wxpay_stat") . sql("SELECT * FROM wxpay_queue_status");
unlike($all, qr/PRIVATE KEY|BEGIN|signature=/, 'no key material in the views');
ok(sql("SELECT bool_and(stats_reset > '$reset_at') FROM wxpay_stat") eq 't',
	'stats_reset is the last reset');

# ---- wxpay.track_stats ----

sql("SET wxpay.track_stats = off; SELECT wxpay_query_sign_plan('" . pn('off') . "', 'st_query')");
is(counts('st_query', 'query', 'session'), '3 2 1 0 0 0 0 3', 'track_stats = off counts nothing');

# ---- privileges ----

sql("CREATE ROLE regress_mon LOGIN IN ROLE pg_monitor; CREATE ROLE regress_nobody LOGIN");
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT count(*) > 0 FROM wxpay_stat',
	extra_params => [ '-U', 'regress_mon' ]);
is($out, 't', 'pg_monitor reads wxpay_stat');
($rc, $out, $err) = $node->psql('postgres',
	"SELECT count(*) FROM wxpay_queue_status WHERE config_name = 'st_queue'",
	extra_params => [ '-U', 'regress_mon' ]);
is($out, '1', 'pg_monitor reads wxpay_queue_status');
($rc, $out, $err) = $node->psql('postgres', 'SELECT wxpay_stat_reset()',
	extra_params => [ '-U', 'regress_mon' ]);
like($err, qr/permission denied/, 'pg_monitor cannot reset');
for my $v (qw(wxpay_stat wxpay_queue_status))
{
	($rc, $out, $err) = $node->psql('postgres', "SELECT * FROM $v",
		extra_params => [ '-U', 'regress_nobody' ]);
	like($err, qr/permission denied/, "others cannot read $v");
}
($rc, $out, $err) = $node->psql('postgres', "SET wxpay.track_stats = off",
	extra_params => [ '-U', 'regress_nobody' ]);
like($err, qr/permission denied/, 'wxpay.track_stats is for superusers');

# ---- wxpay_queue_status on a queue no worker serves ----

sql('CREATE DATABASE st_other');
$node->safe_psql('st_other', 'CREATE EXTENSION wxpay_signplan');
$node->safe_psql('st_other', config_insert_sql(name => 'st_q2'));
$node->safe_psql('st_other', q{
INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, state, attempts, next_attempt_at, outcome_unknown)
VALUES ('st_q2', 'a', 'x', 'queued', 0, now() - '10 min'::interval, false),
       ('st_q2', 'b', 'x', 'queued', 1, now() - '5 min'::interval, true),
       ('st_q2', 'c', 'x', 'queued', 0, now() + '1 hour'::interval, false),
       ('st_q2', 'd', 'x', 'sending', 1, now(), false),
       ('gone', 'e', 'x', 'queued', 0, now() - '1 min'::interval, false)});
is( $node->safe_psql('st_other', q{
SELECT string_agg(concat_ws(' ', config_name, queued, retrying, in_flight, outcome_unknown, due,
                            oldest_due_age >= '10 min', oldest_due_age < '1 day',
                            worker_pid IS NULL), ', ' ORDER BY config_name)
  FROM wxpay_queue_status}),
	'gone 1 0 0 0 1 f t t, st_q2 3 1 1 1 2 t t t',
	'queue status: counts by state, in flight, unknown, the oldest due request, no worker here');

$node->stop;
stop_sim($slow);

# ---- without the preload ----

my $plain = new_node('stats_plain');
($rc, $out, $err) = $plain->psql('postgres', "\\set VERBOSITY verbose\nSELECT * FROM wxpay_stat");
like($err, qr/ERROR:  55000: wxpay_signplan statistics are not available/,
	'without the preload the view says so');
like($err, qr/HINT:  Add wxpay_signplan to shared_preload_libraries/, 'with a hint');
($rc, $out, $err) = $plain->psql('postgres', "SELECT wxpay_stat_reset()");
like($err, qr/statistics are not available/, 'so does the reset');
($rc, $out, $err) = $plain->psql('postgres', "SELECT * FROM wxpay_queue_status");
like($err, qr/statistics are not available/, 'and the queue status');
is($plain->safe_psql('postgres',
		"SELECT sign_state FROM wxpay_stop_sign_plan('" . pn('plain') . "', 'x')"),
	'SIGN_PLAN_CANCEL', 'calls work as ever without the preload');

# ---- a full table: new keys only counted in "dropped" ----

$plain->append_conf('postgresql.conf',
	"shared_preload_libraries = 'wxpay_signplan'\nwxpay.stats_max = 16\n");
$plain->restart;
$plain->safe_psql('postgres',
	config_insert_sql(name => "st_k$_", private_key => 'not a key')) for 1 .. 17;
for my $i (1 .. 17)
{
	($rc, $out, $err) = $plain->psql('postgres',
		"SELECT wxpay_stop_sign_plan('" . pn('k') . "', 'x', 'st_k$i')");
}
is($plain->safe_psql('postgres', 'SELECT count(*), min(dropped), sum(errors) FROM wxpay_stat'),
	'16|1|16', 'wxpay.stats_max rows at most; the 17th key is counted as dropped');
$plain->stop;

done_testing();
