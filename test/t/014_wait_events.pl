
# Copyright: wxpay_signplan authors
#
# pg_stat_activity tells what each process of the extension waits for: on
# PostgreSQL 17 and later by name (WaitEventExtensionNew), on older servers
# as the one "Extension" event, always with wait_event_type "Extension":
#
#   WxpayAnswer           a call waiting for WeChat Pay's answer (a backend,
#                         or the worker sending a queued stop)
#   WxpayBatch            wxpay_stop_sign_plans waiting for its answers
#   WxpayWaitStopRequest  wxpay_wait_stop_request waiting for the worker
#   WxpayQueueWakeup      the queue worker, idle
#   WxpayLauncher         the launcher, idle
#
# The answers never come (the simulator's "stall" fault), so each wait
# lasts until the test ends it; every check polls pg_stat_activity until
# the process shows the event, never sleeps.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $node = PostgreSQL::Test::Cluster->new('wait_events');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'wxpay_signplan'
wxpay.database_name = 'postgres'
wxpay.request_timeout = '300s'
wxpay.rate_limit = 0
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');
$node->safe_psql('postgres', config_insert_sql());

my $named = $node->safe_psql('postgres', 'SHOW server_version_num') >= 170000;
note($named ? 'named wait events (17 and later)' : 'the one Extension wait event (before 17)');

# what pg_stat_activity shows for the wait called $name
sub event { return 'Extension:' . ($named ? $_[0] : 'Extension'); }

# Poll until the process that $where selects (a condition on
# pg_stat_activity) waits on the wait event $name.
sub waits_on
{
	my ($where, $name, $label) = @_;
	my $want = event($name);
	my $ok = $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE $where "
		  . "AND wait_event_type || ':' || wait_event = '$want'");
	ok($ok, "$label waits on $want")
	  or diag(
		$node->safe_psql(
			'postgres',
			"SELECT pid, backend_type, state, wait_event_type, wait_event, query "
			  . "FROM pg_stat_activity"));
	return;
}

my $s = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
my $session = "pid = $pid AND state = 'active'";

# Cancel the session's statement and check that it ended with 57014.
sub cancel_session
{
	my ($tok, $label) = @_;
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
	my (undef, $err) = bg_finish($s, $tok);
	like($err, qr/ERROR:  canceling statement due to user request/,
		"$label: canceled");
	return;
}

# ---- the launcher and the worker, idle ----
waits_on("backend_type = 'wxpay_signplan launcher'", 'WxpayLauncher', 'the idle launcher');
{
	my $id = $node->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('w13-idle', 'subscription ended')");
	is( $node->safe_psql('postgres', "SELECT state FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded', 'a queued stop succeeds (the worker runs)');
	waits_on("backend_type = 'wxpay_signplan worker'", 'WxpayQueueWakeup', 'the idle worker');
}

# ---- a call waiting for the answer ----
{
	my $tok = bg_send($s,
		"SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('fault-stall-w13-call', 'x')");
	waits_on($session, 'WxpayAnswer', 'a call of wxpay_stop_sign_plan');
	cancel_session($tok, 'call');
}

# ---- a batch waiting for its answers ----
{
	my $tok = bg_send($s,
		"SELECT count(*) FROM wxpay_stop_sign_plans(ARRAY['fault-stall-w13-batch', 'w13-batch'], 'x')"
	);
	waits_on($session, 'WxpayBatch', 'wxpay_stop_sign_plans');
	cancel_session($tok, 'batch');
}

# ---- waiting for the worker, which waits for the answer ----
{
	my $id = $node->safe_psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('fault-stall-w13-queue', 'subscription ended')");
	my $tok = bg_send($s, "SELECT state FROM wxpay_wait_stop_request($id, '300s')");
	waits_on($session, 'WxpayWaitStopRequest', 'wxpay_wait_stop_request');
	waits_on("backend_type = 'wxpay_signplan worker'", 'WxpayAnswer',
		'the worker sending the stalled stop');
	cancel_session($tok, 'wait_stop_request');
}

# ---- 17 and later: the names are listed in pg_wait_events ----
SKIP:
{
	skip 'pg_wait_events and named extension wait events are 17 and later', 1
	  unless $named;
	my @used =
	  qw(WxpayAnswer WxpayBatch WxpayLauncher WxpayQueueWakeup WxpayWaitStopRequest);
	my $list = join(', ', map { "'$_'" } @used);
	is( $node->safe_psql(
			'postgres',
			"SELECT string_agg(name, ' ' ORDER BY name) FROM pg_wait_events "
			  . "WHERE type = 'Extension' AND name IN ($list)"),
		join(' ', sort @used),
		'pg_wait_events lists the events used so far');
}

$s->quit;
$node->stop('fast');
done_testing();
