
# 019_drop_extension.pl: DROP EXTENSION never silently discards a promised
# stop, and the worker says plainly that the extension is gone (issue 18,
# item 8).
#
#  (a) refused while wxpay_stop_request holds queued requests or requests
#      in "sending": DROP EXTENSION, DROP EXTENSION ... CASCADE and DROP
#      SCHEMA ... CASCADE of its schema fail with 55006, a detail that
#      counts both kinds and a hint that says how to drain or delete them;
#      the queue is untouched; a role that may not drop the extension gets
#      PostgreSQL's own error and learns nothing about the queue;
#  (b) DROP OWNED BY the extension's owner is refused the same way;
#  (c) once the request in flight finished, still refused for the queued
#      ones; after deleting them deliberately, with only finished rows
#      left, DROP EXTENSION succeeds; the worker then logs one plain line
#      and exits;
#  (d) CREATE EXTENSION again: the queue works;
#  (e) the drop commits while the worker is in the middle of a run (a
#      certificate download held at the simulator): once the run goes on,
#      the worker logs the same plain line, never a raw "does not exist"
#      error with its internal query;
#  (f) the queue works after that too;
#  (g) DROP and CREATE EXTENSION in one transaction: the worker notices the
#      new extension, says so, and a fresh worker serves the new queue.
#
# Plan numbers start with e19.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $node = queue_test_node('dropext', 'wxpay.request_timeout' => "'60s'");
my $gone_line = qr/LOG:  wxpay_signplan worker stops: the extension is no longer installed in database "postgres"/;

sub state_of
{
	my ($id) = @_;
	return $node->safe_psql('postgres', "SELECT state FROM wxpay_stop_request WHERE id = $id");
}

sub queue_summary
{
	return $node->safe_psql('postgres',
		"SELECT string_agg(merchant_sign_plan_no || ':' || state, ' ' ORDER BY id) FROM wxpay_stop_request");
}

# Whether the simulator comes to hold a request of $plan (polls).
# Whether the server log comes to match $re after $offset (polls; false
# after the timeout rather than dying, so that the rest still runs).
sub log_has
{
	my ($re, $offset) = @_;
	my $end = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $end)
	{
		return 1 if substr(slurp_file($node->logfile), $offset) =~ $re;
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

# A statement that must fail; returns its stderr (VERBOSITY verbose).
sub fails
{
	my ($sql, %opt) = @_;
	my ($rc, $out, $err) = $node->psql($opt{db} // 'postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	isnt($rc, 0, "$sql: fails");
	return $err;
}

my $log_start = -s $node->logfile;

# ---- (a) refused with queued and sending requests ----
# two queued requests not due for a day, one held in flight at the simulator
$node->safe_psql('postgres',
	"INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, next_attempt_at) "
	  . "VALUES ('default', 'e19-q1', 'later', now() + interval '1 day'), "
	  . "('default', 'e19-q2', 'later', now() + interval '1 day')");
ctl_post('/faults', { plan => 'e19-s1', fault => 'hold' });
my $sid = enqueue_stop($node, 'e19-s1');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'sending' FROM wxpay_stop_request WHERE id = $sid"),
	'a request is in flight');
ok(wait_sim_held('e19-s1'), 'the simulator holds its answer');
my $before = queue_summary();

my $q = 'public.wxpay_stop_request';
my $refused = qr/ERROR:  55006: cannot drop extension wxpay_signplan while stop requests are pending\n/;
my $detail = qr/DETAIL:  Table \Q$q\E holds 2 queued requests and 1 requests in state "sending" \(sent or about to be sent, outcome not yet known\)\. Dropping the extension would discard them\.\n/;
my $hint = qr/HINT:  Let the worker finish them \(wxpay_wait_stop_request\(id\) waits for one\), or delete them deliberately: DELETE FROM \Q$q\E WHERE state IN \('queued', 'sending'\)\. A deleted "sending" request may already have stopped its plan: check those plans with wxpay_query_sign_plan\./;

for my $sql ('DROP EXTENSION wxpay_signplan', 'DROP EXTENSION wxpay_signplan CASCADE',
	'DROP EXTENSION IF EXISTS pg_trgm, wxpay_signplan', 'DROP SCHEMA public CASCADE')
{
	my $err = fails($sql);
	like($err, $refused, "$sql: refused with 55006");
	like($err, $detail, "$sql: the detail counts queued and sending requests");
	like($err, $hint, "$sql: the hint says how to drain or delete them");
}
is(queue_summary(), $before, 'refused drops: the queue is untouched');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_extension WHERE extname = 'wxpay_signplan'"),
	'1', 'refused drops: the extension is still there');

# another schema's DROP SCHEMA ... CASCADE is not concerned
$node->safe_psql('postgres', 'CREATE SCHEMA e19_other; CREATE TABLE e19_other.t (i int); DROP SCHEMA e19_other CASCADE');
pass('DROP SCHEMA ... CASCADE of another schema is not refused');

# a role that may not drop it: PostgreSQL's own error, nothing about the queue
$node->safe_psql('postgres', 'CREATE ROLE regress_e19_nobody LOGIN');
{
	my $err = fails('SET ROLE regress_e19_nobody; DROP EXTENSION wxpay_signplan');
	like($err, qr/ERROR:  42501: must be owner of extension wxpay_signplan/,
		'a non-owner gets PostgreSQL\'s permission error');
	unlike($err, qr/queued|sending/, 'a non-owner learns nothing about the queue');
}

# ---- (b) DROP OWNED BY the extension's owner ----
{
	$node->safe_psql('postgres', 'CREATE ROLE regress_e19_owner SUPERUSER; CREATE DATABASE e19db');
	# not due for a day: e19db has no config, and a due request would be
	# claimed by its worker and put back (42704); caught in between, it
	# counts as "sending", not "queued"
	$node->safe_psql('e19db',
		"SET ROLE regress_e19_owner; CREATE EXTENSION wxpay_signplan; "
		  . "INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, next_attempt_at) "
		  . "VALUES ('default', 'e19-owned', 'later', now() + interval '1 day')");
	my $err = fails('DROP OWNED BY regress_e19_owner', db => 'e19db');
	like($err, $refused, 'DROP OWNED BY the owner: refused with 55006');
	like($err, qr/DETAIL:  Table \Q$q\E holds 1 queued requests and 0 requests in state "sending"/,
		'DROP OWNED BY the owner: the detail counts');
	$node->safe_psql('e19db', "DELETE FROM wxpay_stop_request; DROP OWNED BY regress_e19_owner");
	is($node->safe_psql('e19db', "SELECT count(*) FROM pg_extension WHERE extname = 'wxpay_signplan'"),
		'0', 'DROP OWNED BY the owner: allowed with an empty queue');
}

# ---- (c) drained and deleted: allowed; the worker's plain line ----
ctl_post('/release', { plan => 'e19-s1' });
is( $node->safe_psql('postgres', "SELECT state FROM wxpay_wait_stop_request($sid, '60s')"),
	'succeeded', 'the request in flight finished');
{
	my $err = fails('DROP EXTENSION wxpay_signplan');
	like($err, qr/DETAIL:  Table \Q$q\E holds 2 queued requests and 0 requests in state "sending"/,
		'still refused for the queued requests');
}
$node->safe_psql('postgres', "DELETE FROM wxpay_stop_request WHERE state IN ('queued', 'sending')");
is($node->safe_psql('postgres', 'SELECT count(*) FROM wxpay_stop_request'),
	'1', 'only the finished request is left');
$node->safe_psql('postgres', 'DROP EXTENSION wxpay_signplan');
pass('DROP EXTENSION succeeds with only finished requests');
ok(log_has($gone_line, $log_start), 'the worker says plainly that the extension is gone');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'"),
	'and exits');

# ---- (d) created again: the queue works ----
sub recreate
{
	my ($label) = @_;
	$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');
	$node->safe_psql('postgres', config_insert_sql());
	my $id = enqueue_stop($node, "e19-$label");
	is($node->safe_psql('postgres', "SELECT state FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded', "$label: after CREATE EXTENSION again the worker serves the queue");
	return;
}
recreate('again');

# ---- (e) dropped while the worker is in the middle of a run ----
{
	my $offset = -s $node->logfile;
	ctl_post('/faults', { plan => 'certificates', fault => 'hold' });
	# a certificate-mode config: the worker downloads its certificates at once
	$node->safe_psql('postgres', certmode_config_sql(name => 'e19cert'));
	ok(wait_sim_held('certificates'), 'mid-run: the worker is downloading certificates');
	$node->safe_psql('postgres', 'DROP EXTENSION wxpay_signplan');
	pass('mid-run: DROP EXTENSION succeeds (no request is queued or in flight)');
	ctl_post('/release', { plan => 'certificates' });
	ok(log_has($gone_line, $offset), 'mid-run: the worker says plainly that the extension is gone');
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'"),
		'mid-run: and exits');
	my $log = substr(slurp_file($node->logfile), $offset);
	my @lines = $log =~ /$gone_line/g;
	is(scalar(@lines), 1, 'mid-run: one line');
}

# ---- (f) and again ----
recreate('again2');

# ---- (g) dropped and created again in one transaction ----
{
	my $offset = -s $node->logfile;
	$node->safe_psql('postgres',
		'BEGIN; DROP EXTENSION wxpay_signplan; CREATE EXTENSION wxpay_signplan; '
		  . config_insert_sql() . '; COMMIT');
	ok( log_has(
			qr/LOG:  wxpay_signplan worker restarts: the extension was dropped and created again in database "postgres"/,
			$offset),
		'dropped and created again: the worker says so and restarts');
	my $id = enqueue_stop($node, 'e19-again3');
	is($node->safe_psql('postgres', "SELECT state FROM wxpay_wait_stop_request($id, '60s')"),
		'succeeded', 'dropped and created again: the new queue is served');
}

# ---- (h) one session queues across a drop and a new create ----
# The enqueue keeps its prepared statements for the session: after the
# extension is dropped and created again, in the same schema or another,
# the next enqueue of that session goes to the new table.
{
	my $s = $node->background_psql('postgres');
	my $wait = sub {
		my ($schema, $plan) = @_;
		return $node->safe_psql('postgres',
			"SELECT r.state FROM $schema.wxpay_stop_request q, "
			  . "LATERAL $schema.wxpay_wait_stop_request(q.id, '60s') r "
			  . "WHERE q.merchant_sign_plan_no = '$plan'");
	};
	$s->query_safe("SELECT wxpay_stop_sign_plan_async('e19-h1', 'r')");
	is($wait->('public', 'e19-h1'), 'succeeded', 'one session: the first enqueue is served');
	$s->query_safe('DROP EXTENSION wxpay_signplan; CREATE EXTENSION wxpay_signplan; ' . config_insert_sql());
	$s->query_safe("SELECT wxpay_stop_sign_plan_async('e19-h2', 'r')");
	is($wait->('public', 'e19-h2'), 'succeeded',
		'one session, created again in the same schema: the enqueue goes to the new table');
	$s->query_safe('DROP EXTENSION wxpay_signplan; CREATE SCHEMA e19h; '
		  . 'CREATE EXTENSION wxpay_signplan SCHEMA e19h; SET search_path = e19h, public; '
		  . config_insert_sql());
	$s->query_safe("SELECT e19h.wxpay_stop_sign_plan_async('e19-h3', 'r')");
	is($wait->('e19h', 'e19-h3'), 'succeeded',
		'one session, created again in another schema: the enqueue goes there');
	is($node->safe_psql('postgres', "SELECT count(*) FROM e19h.wxpay_stop_request"),
		'1', 'and only there');
	$s->query_safe('DROP EXTENSION wxpay_signplan; DROP SCHEMA e19h; RESET search_path; '
		  . 'CREATE EXTENSION wxpay_signplan; ' . config_insert_sql());
	$s->quit;
}

my $log = substr(slurp_file($node->logfile), $log_start);
unlike($log, qr/does not exist/, 'the server log has no "does not exist" error');
unlike($log, qr/QUERY:/, 'nor an internal query of the worker');

$node->stop;
done_testing();
