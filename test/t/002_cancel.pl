
# 002_cancel.pl: a call waiting on the network obeys PostgreSQL's interrupts
# and the extension's own timeouts.
#
#  - pg_cancel_backend() of a backend waiting for an answer that never comes
#    ends the call with 57014 within 1 second, and the session stays usable;
#  - statement_timeout does the same (57014, "statement timeout");
#  - wxpay.request_timeout ends it with WX003 (the request was sent: outcome
#    unknown), naming the setting;
#  - a refused connection and a TLS handshake that never completes
#    (wxpay.connect_timeout) end with WX004 (nothing sent), promptly.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WxpayTest;

my $closed = refusing_port();    # refuses connections
my $closed_port = $closed->sockport;

my $silent = silent_port();    # accepts TCP, never says a word
my $silent_port = $silent->sockport;

my $node = new_node('cancel');
$node->safe_psql('postgres',
	config_insert_sql(name => 'closed', base_url => "https://127.0.0.1:$closed_port"));
$node->safe_psql('postgres',
	config_insert_sql(name => 'silent', base_url => "https://127.0.0.1:$silent_port"));

# the session under test (errors must not end psql) and a controller
my $s = $node->background_psql('postgres', on_error_stop => 0);
my $ctl = $node->background_psql('postgres');
$s->query_safe('\set VERBOSITY verbose');
my $pid = $s->query_safe('SELECT pg_backend_pid()');
like($pid, qr/^\d+$/, "backend pid $pid");

sub send_sql { return bg_send($s, $_[0]); }

# Wait for the statement sent as $token to end; returns its stderr output.
sub finish { return (bg_finish($s, $_[0]))[1]; }

# The session is healthy after an interrupted call: SELECT 1, then a
# successful stop of a fresh plan.
sub session_recovers
{
	my ($label, $fresh) = @_;
	session_ok_query($s, 'SELECT 1', '1', "$label: the session then runs SELECT 1");
	session_ok_query($s,
		"SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('$fresh', 'after')",
		"$fresh|SIGN_PLAN_CANCEL",
		"$label: the session then stops a fresh plan");
	is(sim_stops($fresh), 1, "$label: the simulator stopped $fresh once");
	return;
}

# ---- 1. pg_cancel_backend() while waiting for the answer ----
{
	my $plan = 'fault-stall-t2a';
	session_ok_query($s, "SET wxpay.request_timeout = '60s'", '', 'cancel: set request_timeout 60s');
	my $tok = send_sql(
		"SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('$plan', 'cancel me');");

	# the request reached the simulator (so we are past sending) ...
	ok(session_wait_until($s, "the request for $plan", sub { sim_stop_attempts($plan) == 1 }),
		'cancel: the stalled request reached the simulator');
	# ... and the backend waits in the extension's wait loop, for the answer
	my $event =
	  $node->safe_psql('postgres', 'SHOW server_version_num') >= 170000
	  ? 'WxpayAnswer'
	  : 'Extension';
	ok( $node->poll_query_until(
			'postgres',
			"SELECT wait_event_type = 'Extension' AND wait_event = '$event' "
			  . "AND state = 'active' "
			  . "AND query LIKE '%$plan%' FROM pg_stat_activity WHERE pid = $pid"),
		"cancel: the backend waits on the Extension wait event $event");

	my $t0 = time();
	is($ctl->query_safe("SELECT pg_cancel_backend($pid)"),
		't', 'cancel: pg_cancel_backend() sent');
	my $err = finish($tok);
	my $elapsed = time() - $t0;
	note(sprintf('cancel: error %.3f s after the cancel', $elapsed));

	like(
		$err,
		qr/^(?:psql:<stdin>:\d+: )?ERROR:  57014: canceling statement due to user request$/m,
		'cancel: the call ended with 57014 canceling statement due to user request');
	cmp_ok($elapsed, '<', 1.0, 'cancel: the error came within 1 s of the cancel');
	is(sim_stops($plan), 0, 'cancel: the stalled plan was not stopped');
	session_recovers('cancel', 't2-after-cancel');
}

# ---- 2. statement_timeout while waiting for the answer ----
{
	my $plan = 'fault-stall-t2b';
	session_ok_query($s, "SET statement_timeout = '300ms'", '', 'statement_timeout: set 300ms');
	my $t0 = time();
	my $tok = send_sql(
		"SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('$plan', 'time me out');");
	my $err = finish($tok);
	my $elapsed = time() - $t0;
	note(sprintf('statement_timeout: error %.3f s after the statement was sent', $elapsed));

	like(
		$err,
		qr/^(?:psql:<stdin>:\d+: )?ERROR:  57014: canceling statement due to statement timeout$/m,
		'statement_timeout: the call ended with 57014 canceling statement due to statement timeout');
	cmp_ok($elapsed, '<', 0.3 + 1.0,
		'statement_timeout: the error came within 1 s of the timeout');
	is(sim_stop_attempts($plan), 1,
		'statement_timeout: the request had reached the simulator');
	is(sim_stops($plan), 0, 'statement_timeout: the stalled plan was not stopped');
	session_ok_query($s, 'RESET statement_timeout', '', 'statement_timeout: reset');
	session_recovers('statement_timeout', 't2-after-stmt-timeout');
}

# ---- 3. wxpay.request_timeout: sent, no answer: WX003 ----
{
	my $plan = 'fault-stall-t2c';
	session_ok_query($s, "SET wxpay.request_timeout = '300ms'", '',
		'request_timeout: set 300ms');
	my $tok = send_sql(
		"SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('$plan', 'time me out');");
	my $err = finish($tok);

	like(
		$err,
		qr/^(?:psql:<stdin>:\d+: )?ERROR:  WX003: could not stop sign plan "$plan"$/m,
		'request_timeout: the call ended with WX003');
	like($err, qr/^DETAIL:  .*wxpay\.request_timeout \(300 ms\)/m,
		'request_timeout: the detail names wxpay.request_timeout');
	like($err, qr/^HINT:  Query the sign plan/m,
		'request_timeout: the hint says to query before retrying');
	is(sim_stop_attempts($plan), 1, 'request_timeout: the request was sent once');
	session_ok_query($s, 'RESET wxpay.request_timeout', '', 'request_timeout: reset');
	session_recovers('request_timeout', 't2-after-req-timeout');
}

# ---- 4. a refused connection: WX004 at once ----
{
	# statement_timeout as the bound: were the failure not prompt, the
	# error would be 57014 instead of WX004.
	session_ok_query($s,
		"SET statement_timeout = '5s'; SET wxpay.connect_timeout = '60s'; SET wxpay.request_timeout = '60s'",
		'', 'refused: set timeouts');
	my $tok = send_sql(
		"SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('t2-refused', 'x', 'closed');");
	my $err = finish($tok);
	like(
		$err,
		qr/^(?:psql:<stdin>:\d+: )?ERROR:  WX004: could not stop sign plan "t2-refused"$/m,
		'refused: the call ended with WX004 before statement_timeout');
	like($err,
		qr/^DETAIL:  Nothing was sent to https:\/\/127\.0\.0\.1:$closed_port: /m,
		'refused: the detail says nothing was sent, and where');
	like($err, qr/^HINT:  Nothing reached WeChat Pay, so retrying is safe\.$/m,
		'refused: the hint says retrying is safe');
}

# ---- 5. a TLS handshake that never completes: wxpay.connect_timeout ----
{
	session_ok_query($s, "SET wxpay.connect_timeout = '300ms'", '',
		'connect_timeout: set 300ms');
	my $tok = send_sql(
		"SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('t2-silent', 'x', 'silent');");
	my $err = finish($tok);
	like(
		$err,
		qr/^(?:psql:<stdin>:\d+: )?ERROR:  WX004: could not stop sign plan "t2-silent"$/m,
		'connect_timeout: the call ended with WX004 before statement_timeout');
	like($err,
		qr/^DETAIL:  Nothing was sent to https:\/\/127\.0\.0\.1:$silent_port: .*time/mi,
		'connect_timeout: the detail says nothing was sent, and that it timed out');
	session_ok_query($s,
		'RESET statement_timeout; RESET wxpay.connect_timeout; RESET wxpay.request_timeout',
		'', 'connect_timeout: reset');
	session_recovers('connect_timeout', 't2-after-connect-timeout');
}

$s->quit;
$ctl->quit;
$node->stop;
done_testing();
