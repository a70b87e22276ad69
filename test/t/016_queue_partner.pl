
# Copyright: wxpay_signplan authors
#
# The outbox in partner mode: wxpay_stop_sign_plan_async(..., sub_mchid)
# keeps the sub-merchant in the row, and the worker sends it, and settles an
# unknown outcome, through the partner endpoints.  Crashes, reconciliation
# and the rate limit (the provider's mchid) as for direct merchants.
#
# Synchronisation is by waiting for rows, never by sleeping; "not sent" is
# proven with a later request as a barrier (the worker serves in order).

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WxpayTest;

my $node = queue_test_node('queue_partner', 'wxpay.request_timeout' => "'2s'");

my $partner_base =
  '/v3/payscore/sign-plan/partner/user-sign-plans/merchant-sign-plan-no/';

sub sq { return $node->safe_psql('postgres', $_[0]); }

sub wait_row
{
	my ($id) = @_;
	return sq(
		"SELECT state || '|' || coalesce(error_code, '') || '|' || attempts || '|'"
		  . " || coalesce((result).sub_mchid, '') || '|' || coalesce((result).cancel_sign_type, '')"
		  . " FROM wxpay_wait_stop_request($id, '60s')");
}

sub key_stat
{
	my ($what, $key) = @_;
	return sim_stats()->{$what}{$key} // 0;
}

# ---- a partner stop: stored, sent to the partner endpoint, answered ----
{
	my $id = sq("SELECT wxpay_stop_sign_plan_async('q13-1', 'gym closed', 'default', '1230000201')");
	is(sq("SELECT sub_mchid FROM wxpay_stop_request WHERE id = $id"),
		'1230000201', 'the row keeps the sub-merchant');
	is(wait_row($id), 'succeeded||1|1230000201|MERCHANT',
		'the worker stopped the sub-merchant\'s plan');
	my @r = grep { $_->{path} eq "${partner_base}q13-1/stop" } @{ ctl_get('/requests') };
	is(scalar(@r), 1, 'one stop went to the partner endpoint');
	is($r[0]{body}, '{"sub_mchid":"1230000201","stop_reason":"gym closed"}',
		'sub_mchid in the body');
	like($r[0]{headers}{authorization}, qr/mchid="1900000001"/,
		'signed as the provider');
	is(key_stat('stops', '1230000201:q13-1'), 1, 'the simulator stopped it once');
	is(key_stat('stop_attempts', 'q13-1'), 0, 'nothing went to the direct endpoint');

	# named, and the two- and three-argument forms: direct as before
	my $ids = sq(
		"SELECT string_agg(x::text, ',') FROM (VALUES"
		  . " (wxpay_stop_sign_plan_async('q13-d1', 'r')),"
		  . " (wxpay_stop_sign_plan_async('q13-d2', 'r', 'default')),"
		  . " (wxpay_stop_sign_plan_async(stop_reason => 'r', merchant_sign_plan_no => 'q13-d3')),"
		  . " (wxpay_stop_sign_plan_async('q13-p4', 'r', sub_mchid => '1230000202'))) v(x)");
	my @ids = split /,/, $ids;
	is(wait_row($ids[$_]), 'succeeded||1||MERCHANT', "direct request $_ as before")
	  for 0 .. 2;
	is(wait_row($ids[3]), 'succeeded||1|1230000202|MERCHANT', 'named sub_mchid');
	is(sq("SELECT count(*) FROM wxpay_stop_request WHERE id IN ($ids) AND sub_mchid IS NULL"),
		'3', 'direct rows have no sub-merchant');
	is(key_stat('stops', "q13-d$_"), 1, "direct plan q13-d$_ stopped at the direct endpoint")
	  for 1 .. 3;
}

# ---- checked before anything is queued; rolled back is never sent ----
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT wxpay_stop_sign_plan_async('q13-bad', 'r', 'default', '12x')");
	like($err, qr/invalid sub_mchid "12x"/, 'a bad sub_mchid is refused');
	is(sq("SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'q13-bad'"),
		'0', 'nothing queued');

	sq("BEGIN; SELECT wxpay_stop_sign_plan_async('q13-rb', 'r', 'default', '1230000203'); ROLLBACK");
	my $barrier = sq("SELECT wxpay_stop_sign_plan_async('q13-rb-barrier', 'r', 'default', '1230000203')");
	is(wait_row($barrier), 'succeeded||1|1230000203|MERCHANT', 'a later request finished');
	is(key_stat('stop_attempts', '1230000203:q13-rb'), 0,
		'the rolled-back partner stop was never sent');

	# a row written some other way with a bad sub_mchid: failed, not sent
	# (of the current timeline, as the enqueue writes it: a row of none
	# would count as possibly sent, and end WX003)
	my $id = sq(
		"WITH i AS (INSERT INTO wxpay_stop_request (config_name, merchant_sign_plan_no, stop_reason, sub_mchid, timeline)"
		  . " VALUES ('default', 'q13-badrow', 'r', '1 OR 1', (SELECT max(timeline) FROM wxpay_stop_request)) RETURNING id) SELECT id FROM i");
	# an INSERT wakes no worker: an enqueue (committed) does, and it claims
	# every due row, not waiting for its next idle look
	sq("SELECT wxpay_stop_sign_plan_async('q13-badrow-wake', 'r')");
	like(wait_row($id), qr/^failed\|22023\|1\|\|$/, 'a bad stored sub_mchid fails as bad input');
	is(key_stat('stop_attempts', 'q13-badrow'), 0, 'and is not sent');
}

# ---- the README recipe (its table is member_subscription there): a provider's
# subscriptions stop from a trigger ----
{
	sq(q{
CREATE TABLE subscription (
    sub_mchid    text NOT NULL,
    sign_plan_no text NOT NULL,
    member_id    bigint NOT NULL,
    stop_request bigint,
    PRIMARY KEY (sub_mchid, sign_plan_no));
CREATE FUNCTION subscription_stop_plan() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wxpay_stop_sign_plan_async(OLD.sign_plan_no, 'subscription cancelled',
                                       sub_mchid => OLD.sub_mchid);
    RETURN OLD;
END $$;
CREATE TRIGGER subscription_stop_plan AFTER DELETE ON subscription
    FOR EACH ROW EXECUTE FUNCTION subscription_stop_plan();
INSERT INTO subscription VALUES ('1230000251', 'q13-sub', 1), ('1230000252', 'q13-sub', 2);
});
	sq("BEGIN; DELETE FROM subscription WHERE sub_mchid = '1230000252'; ROLLBACK");
	sq("DELETE FROM subscription WHERE sub_mchid = '1230000251'");
	my $id = sq("SELECT id FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'q13-sub'");
	is(wait_row($id), 'succeeded||1|1230000251|MERCHANT',
		'the deleted subscription\'s plan was stopped for its sub-merchant');
	is(key_stat('stop_attempts', '1230000252:q13-sub'), 0,
		'the rolled-back delete stopped nothing');
	is(sq("SELECT count(*) FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'q13-sub'"),
		'1', 'one request, for the committed delete');
}

# ---- one plan number, three owners: three plans, each stopped once ----
{
	my $ids = sq(
		"SELECT string_agg(x::text, ',') FROM (VALUES"
		  . " (wxpay_stop_sign_plan_async('q13-same', 'r', 'default', '1230000211')),"
		  . " (wxpay_stop_sign_plan_async('q13-same', 'r', 'default', '1230000212')),"
		  . " (wxpay_stop_sign_plan_async('q13-same', 'r'))) v(x)");
	my @ids = split /,/, $ids;
	is(wait_row($ids[0]), 'succeeded||1|1230000211|MERCHANT', 'first sub-merchant');
	is(wait_row($ids[1]), 'succeeded||1|1230000212|MERCHANT', 'second sub-merchant');
	is(wait_row($ids[2]), 'succeeded||1||MERCHANT', 'the provider\'s own plan');
	is(key_stat('stops', $_), 1, "$_ stopped once")
	  for ('1230000211:q13-same', '1230000212:q13-same', 'q13-same');
}

# ---- reconciliation: a lost answer is settled by the partner query ----
for my $fault ('stop_then_500', 'stop_then_reset', 'wrong_sub_mchid')
{
	my $plan = "q13-lost-$fault";
	my $key = "1230000221:$plan";
	ctl_post('/faults', { plan => $key, fault => $fault, times => 1 });
	my $id = sq("SELECT wxpay_stop_sign_plan_async('$plan', 'r', 'default', '1230000221')");
	is(wait_row($id), 'succeeded||2|1230000221|MERCHANT',
		"$fault: settled as succeeded on the second attempt");
	is(key_stat('stops', $key), 1, "$fault: stopped once");
	is(key_stat('already_stopped', $key), 0, "$fault: no blind second stop");
	my @g = grep { $_->{method} eq 'GET' && $_->{path} eq "$partner_base$plan?sub_mchid=1230000221" }
	  @{ ctl_get('/requests') };
	is(scalar(@g), 1, "$fault: the settling query went to the partner endpoint");
	is(key_stat('queries', $plan), 0, "$fault: no direct query");
}

# ---- the server killed in the middle of a partner burst ----
{
	my $n = 45;
	ctl_post('/settings', { latency_ms => 150 });
	sq(    "SELECT wxpay_stop_sign_plan_async('q13-crash-' || i, 'r', 'default',"
		  . " (1230000230 + i % 3)::text) FROM generate_series(1, $n) i");
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) FILTER (WHERE state = 'sending') > 0 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'q13-crash-%'"
		),
		'partner requests in flight');
	$node->stop('immediate');
	$node->start;
	ctl_post('/settings', { latency_ms => 0 });
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = $n FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'q13-crash-%' AND state = 'succeeded' AND (result).cancel_sign_type = 'MERCHANT' AND (result).sub_mchid = sub_mchid"
		),
		'all partner requests succeeded after the crash');
	my $st = sim_stats();
	my ($once, $blind) = (0, 0);
	for my $i (1 .. $n)
	{
		my $k = (1230000230 + $i % 3) . ":q13-crash-$i";
		$once++ if ($st->{stops}{$k} // 0) == 1;
		$blind += $st->{already_stopped}{$k} // 0;
	}
	is($once, $n, 'each sub-merchant plan stopped exactly once');
	is($blind, 0, 'no stop sent for an already stopped plan');
	is(scalar(grep { /^q13-crash-/ } keys %{ $st->{stop_attempts} }), 0,
		'nothing went to the direct endpoint');
}

# ---- the rate limit is the provider's, shared by its sub-merchants ----
{
	sq("ALTER SYSTEM SET wxpay.rate_limit = 10");
	$node->reload;
	my $id = sq("SELECT wxpay_stop_sign_plan_async('q13-warm', 'r')");
	wait_row($id);
	my $t0 = time;
	sq(    "SELECT wxpay_stop_sign_plan_async('q13-rate-' || i, 'r', 'default',"
		  . " (1230000240 + i % 3)::text) FROM generate_series(1, 30) i");
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 30 FROM wxpay_stop_request WHERE merchant_sign_plan_no LIKE 'q13-rate-%' AND state = 'succeeded'"
		),
		'rate-limited partner burst finished');
	my $secs = time - $t0;
	note(sprintf("30 requests of 3 sub-merchants at 10/s took %.2f s", $secs));
	# 10 per sub-merchant would fit in one window; 30 for the provider cannot
	cmp_ok($secs, '>=', 1.5, 'the limit counts the provider, not each sub-merchant');
}

my $log = slurp_file($node->logfile);
unlike($log, qr/TRAP:|PANIC/, 'no assertion failure or PANIC');

$node->stop;
done_testing();
