# 023_notifications.pl: WeChat Pay's notifications verified and decrypted in
# SQL (issue 22).
#
# The simulator (POST /notification) makes notifications signed and
# encrypted as the platform does.  Checked here:
#  - a cancellation verifies and decrypts (public-key mode), with header
#    names in any letter case; wxpay_sign_plan_from_json() types it;
#  - every refusal has its own SQLSTATE: WX010 a signature that does not
#    verify (one flipped body byte), WX011 an unknown serial, WX012 a
#    timestamp 10 minutes off, WX013 a probe, WX014 a body that is not the
#    documented JSON (or a resource that decrypts to no JSON object),
#    WX015 another algorithm, WX016 a ciphertext that does not open (flipped
#    tag, another key), WX017 a config without apiv3_key, WX018 a missing or
#    doubled header, WX019 a body over 1 MB (before anything else);
#  - wxpay_accept_notification() stores once per id: a redelivery (re-signed,
#    same id) returns the stored row and inserts nothing; NOTIFY only for the
#    first; two deliveries at the same moment: the second waits, then returns
#    the first's row; PUBLIC cannot call it, a webhook role with the documented
#    GRANT can; the simulator POSTs to a callback URL;
#  - partner mode stores sub_mchid; certificate mode refuses an unknown
#    serial with a hint naming wxpay_refresh_platform_certificates, and
#    verifies after a refresh;
#  - a LATIN1 database: a body with a Latin-1 letter verifies (converted back
#    to the UTF-8 that was signed), Chinese in the resource comes back as
#    \uXXXX;
#  - the README's trigger recipe, run as written: a cancellation delivered
#    twice ends the subscription once;
#  - at log_min_messages = debug5, no APIv3 key and no decrypted text of a
#    refused notification reach the server log.

use strict;
use warnings FATAL => 'all';

use Encode qw(encode_utf8);
use FindBin;
use JSON::PP;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $json = JSON::PP->new->canonical;
my $apiv3 = pki_file('apiv3_key.txt', chomp => 1);

my $node = PostgreSQL::Test::Cluster->new('notify');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf('postgresql.conf', "log_min_messages = debug5\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');
$node->safe_psql('postgres', config_insert_sql());    # no apiv3_key
# the APIv3 key read from its file, so that no statement holds it
$node->safe_psql('postgres', config_insert_from_files_sql(name => 'pk'));
$node->safe_psql('postgres',
	config_insert_from_files_sql(
		name => 'cm',
		mchid => '1900000002',
		wechatpay_public_key_id => undef,
		wechatpay_public_key => undef));

# a notification from the simulator: { headers, body } (body: characters)
sub notification
{
	my (%o) = @_;
	return ctl_post('/notification', \%o);
}

# SELECT ... FROM fn(headers, body, config) for notification $n
sub call_sql
{
	my ($fn, $n, %o) = @_;
	my $h = $o{headers} // $n->{headers};
	my $b = $o{body} // $n->{body};
	my $cfg = $o{config} // 'pk';
	my $cols = $o{cols} // '*';
	# characters throughout, then UTF-8 bytes once (psql talks UTF-8)
	return encode_utf8("SELECT $cols FROM $fn("
		  . dq($json->encode($h))
		  . '::jsonb, '
		  . dq($b)
		  . ", '$cfg')");
}

# (SQLSTATE, stderr) of a statement that must fail
sub fails
{
	my ($sql, %o) = @_;
	my ($rc, $out, $err) = $node->psql($o{db} // 'postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ('no error', $err) if $rc == 0;
	return ($err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : "?: $err", $err);
}

sub verify_ok
{
	my ($n, %o) = @_;
	return $node->safe_psql($o{db} // 'postgres',
		call_sql('wxpay_verify_notification', $n, %o));
}

# ---- a cancellation verifies and decrypts ----
my $n1 = notification(plan => 'n23-cancel-1');
{
	my $row = verify_ok($n1,
		cols => "event_type, resource_type, summary, resource->>'merchant_sign_plan_no', "
		  . "resource->>'cancel_sign_type', id = " . dq($json->decode($n1->{body})->{id}));
	is($row,
		"PAYSCORE.USER_CANCEL_SIGN_PLAN|encrypt-resource|用户取消签约|n23-cancel-1|USER|t",
		'a cancellation verifies and decrypts');
	is( $node->safe_psql('postgres',
			call_sql('wxpay_verify_notification', $n1,
				cols => "(wxpay_sign_plan_from_json(resource)).cancel_sign_type, "
				  . "(wxpay_sign_plan_from_json(resource)).cancel_sign_time IS NOT NULL, "
				  . "jsonb_array_length((wxpay_sign_plan_from_json(resource)).signed_detail_list)")),
		'USER|t|3',
		'wxpay_sign_plan_from_json types the resource');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM wxpay_notification'),
		'0', 'verifying writes nothing');

	my %lower = map { lc($_) => $n1->{headers}{$_} } keys %{ $n1->{headers} };
	my %upper = map { uc($_) => $n1->{headers}{$_} } keys %{ $n1->{headers} };
	like(verify_ok($n1, headers => \%lower, cols => 'event_type'),
		qr/USER_CANCEL/, 'lower-case header names');
	like(verify_ok($n1, headers => \%upper, cols => 'event_type'),
		qr/USER_CANCEL/, 'upper-case header names');
	my %arr = (%{ $n1->{headers} });
	$arr{'Wechatpay-Timestamp'} = [ $arr{'Wechatpay-Timestamp'} ];
	like(verify_ok($n1, headers => \%arr, cols => 'event_type'),
		qr/USER_CANCEL/, 'a header given as an array of one value');
	$arr{'Wechatpay-Timestamp'} = [ $n1->{headers}{'Wechatpay-Timestamp'}, '1' ];
	my ($st0) = fails(call_sql('wxpay_verify_notification', $n1, headers => \%arr));
	is($st0, 'WX018', 'a header given twice in an array: WX018');
	my %both = (%{ $n1->{headers} }, 'wechatpay-nonce' => 'x' x 32);
	my ($st, $err) = fails(call_sql('wxpay_verify_notification', $n1, headers => \%both));
	is($st, 'WX018', 'one header under two cases: WX018');
	like($err, qr/"Wechatpay-Nonce" came more than once/, '... naming it');
}

# ---- every refusal has its own SQLSTATE ----
{
	my $flipped = $n1->{body};
	substr($flipped, 10, 1) = substr($flipped, 10, 1) eq 'a' ? 'b' : 'a';
	my ($st, $err) = fails(call_sql('wxpay_verify_notification', $n1, body => $flipped));
	is($st, 'WX010', 'one flipped body byte: WX010');
	like($err, qr/signature does not verify/, '... the signature check');

	my %cases = (
		bad_signature => ['WX010', qr/signature does not verify/],
		unknown_serial => ['WX011', qr/unknown serial/],
		stale_timestamp => ['WX012', qr/timestamp is \d+ seconds away/],
		future_timestamp => ['WX012', qr/timestamp is \d+ seconds away/],
		probe => ['WX013', qr/signature probe/],
		other_algorithm => ['WX015', qr/algorithm "AEAD_AES_128_GCM" is not supported/],
		tampered_tag => ['WX016', qr/could not be decrypted/],
		tampered_ciphertext => ['WX016', qr/could not be decrypted/],
		wrong_apiv3_key => ['WX016', qr/could not be decrypted/],);
	for my $f (sort keys %cases)
	{
		my $n = notification(plan => "n23-$f", fault => $f);
		my ($s, $e) = fails(call_sql('wxpay_verify_notification', $n));
		is($s, $cases{$f}[0], "$f: $cases{$f}[0]");
		like($e, $cases{$f}[1], "$f: the message says which check");
	}

	for my $b ('not json', '[1,2]', '{"id":"x"}',
		'{"id":"x","create_time":"2026-01-01T00:00:00+08:00","event_type":"E","resource_type":"encrypt-resource","resource":"no"}',
		'{"id":"x","create_time":"yesterday","event_type":"E","resource_type":"r","resource":{}}')
	{
		my $n = notification(plan => 'n23-body', body => $b);
		my ($s) = fails(call_sql('wxpay_verify_notification', $n));
		is($s, 'WX014', "signed body $b: WX014");
	}
	my $n = notification(plan => 'n23-plain', plaintext => 'n23-SECRET-PLAINTEXT not json');
	($st, $err) = fails(call_sql('wxpay_verify_notification', $n));
	is($st, 'WX014', 'a resource that decrypts to no JSON object: WX014');
	unlike($err, qr/SECRET-PLAINTEXT/, '... its text is not in the error');

	($st, $err) = fails(call_sql('wxpay_verify_notification', $n1, config => 'default'));
	is($st, 'WX017', 'a config without apiv3_key: WX017');

	my %h = %{ $n1->{headers} };
	delete $h{'Wechatpay-Serial'};
	($st, $err) = fails(call_sql('wxpay_verify_notification', $n1, headers => \%h));
	is($st, 'WX018', 'a missing header: WX018');
	like($err, qr/"Wechatpay-Serial" is missing/, '... naming it');

	($st, $err) = fails(call_sql('wxpay_verify_notification', $n1,
		headers => {}, body => 'x' x (1024 * 1024 + 1)));
	is($st, 'WX019', 'a body over 1 MB: WX019, before the headers are looked at');

	($st) = fails(call_sql('wxpay_verify_notification', $n1, config => 'nosuch'));
	is($st, '42704', 'an unknown config: 42704');

	unlike($node->safe_psql('postgres', 'SELECT count(*) FROM wxpay_notification'),
		qr/[1-9]/, 'no refusal stored anything');
}

# ---- accept: once per id, NOTIFY for the first, the grants ----
{
	my $n = notification(plan => 'n23-accept', id => 'n23-id-accept');
	my $out = $node->safe_psql('postgres',
		"LISTEN wxpay_notification;\n"
		  . call_sql('wxpay_accept_notification', $n,
			cols => "id, merchant_sign_plan_no, event_type, sub_mchid IS NULL") . ";\n");
	like($out, qr/^n23-id-accept\|n23-accept\|PAYSCORE.USER_CANCEL_SIGN_PLAN\|t$/m,
		'accept returns the stored row');
	like($out, qr/notification "wxpay_notification" with payload "n23-id-accept"/,
		'... and sends NOTIFY with the id');
	my $first = $node->safe_psql('postgres',
		"SELECT received_at FROM wxpay_notification WHERE id = 'n23-id-accept'");

	# WeChat Pay's retry: the same id, re-signed
	my $again = notification(plan => 'n23-accept', id => 'n23-id-accept');
	isnt($again->{body}, $n->{body}, 'the redelivery is another body');
	$out = $node->safe_psql('postgres',
		"LISTEN wxpay_notification;\n"
		  . call_sql('wxpay_accept_notification', $again,
			cols => 'id, received_at') . ";\n");
	is($out, "n23-id-accept|$first", 'a redelivery returns the row already stored');
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM wxpay_notification WHERE id = 'n23-id-accept'"),
		'1', '... and inserts nothing');
	$out = $node->safe_psql('postgres',
		"LISTEN wxpay_notification;\n"
		  . call_sql('wxpay_accept_notification', $n, cols => 'id') . ";\n");
	unlike($out, qr/Asynchronous notification/, '... and sends no NOTIFY');

	$node->safe_psql('postgres', q{
CREATE ROLE regress_webhook LOGIN;
CREATE ROLE regress_other LOGIN;
GRANT USAGE ON SCHEMA public TO regress_webhook;
GRANT EXECUTE ON FUNCTION wxpay_accept_notification(jsonb, text, text) TO regress_webhook;
});
	my $w = notification(plan => 'n23-grant', id => 'n23-id-grant');
	is($node->safe_psql('postgres',
			"SET ROLE regress_webhook;\n"
			  . call_sql('wxpay_accept_notification', $w, cols => 'id')),
		'n23-id-grant', 'the webhook role with the documented GRANT accepts');
	my ($st) = fails("SET ROLE regress_other;\n"
		  . call_sql('wxpay_accept_notification', $w, cols => 'id'));
	is($st, '42501', 'PUBLIC cannot accept');
	($st) = fails("SET ROLE regress_webhook;\n"
		  . call_sql('wxpay_verify_notification', $w, cols => 'id'));
	is($st, '42501', 'nor verify without its own GRANT');
	($st) = fails("SET ROLE regress_webhook; SELECT count(*) FROM wxpay_notification");
	is($st, '42501', 'nor read the table');
}

# ---- two deliveries of one id at the same moment ----
{
	my $n = notification(plan => 'n23-race', id => 'n23-id-race');
	my $again = notification(plan => 'n23-race', id => 'n23-id-race');
	my $s1 = $node->background_psql('postgres');
	my $s2 = $node->background_psql('postgres', on_error_stop => 0);
	$s1->query_safe('BEGIN');
	$s1->query_safe(call_sql('wxpay_accept_notification', $n, cols => 'id'));
	my $tok = bg_send($s2, call_sql('wxpay_accept_notification', $again,
		cols => "id, event_type"));
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
			  . "AND query LIKE '%wxpay_accept_notification%' AND pid <> pg_backend_pid()"),
		'the second delivery waits for the first');
	$s1->query_safe('COMMIT');
	my ($out, $err) = bg_finish($s2, $tok);
	is($out, 'n23-id-race|PAYSCORE.USER_CANCEL_SIGN_PLAN',
		'... then returns the row the first stored');
	is($err, '', '... without an error');
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM wxpay_notification WHERE id = 'n23-id-race'"),
		'1', 'one row for the two');
	$s1->quit;
	$s2->quit;
}

# ---- partner mode ----
{
	my $n = notification(plan => 'n23-partner', sub_mchid => '1230000923',
		id => 'n23-id-partner');
	is($node->safe_psql('postgres',
			call_sql('wxpay_accept_notification', $n,
				cols => "sub_mchid, merchant_sign_plan_no, resource->>'sp_mchid'")),
		'1230000923|n23-partner|1900000001',
		'partner mode: verified, sub_mchid stored');
}

# ---- certificate mode ----
{
	my $n = notification(mchid => '1900000002', plan => 'n23-cert',
		event_type => 'PAYSCORE.USER_SIGN_PLAN');
	my ($st, $err) = fails(call_sql('wxpay_verify_notification', $n, config => 'cm'));
	is($st, 'WX011', 'certificate mode, nothing held: WX011');
	like($err, qr/HINT:.*wxpay_refresh_platform_certificates\('cm'\)/,
		'... with a hint naming wxpay_refresh_platform_certificates');
	$node->safe_psql('postgres',
		"SELECT count(*) FROM wxpay_refresh_platform_certificates('cm')");
	is(verify_ok($n, config => 'cm', cols => "event_type, resource->>'cancel_sign_type'"),
		'PAYSCORE.USER_SIGN_PLAN|NOT_CANCEL',
		'certificate mode verifies after the refresh');
}

# ---- a LATIN1 database ----
{
	$node->safe_psql('postgres',
		"CREATE DATABASE n23_latin1 TEMPLATE template0 ENCODING 'LATIN1' "
		  . "LC_COLLATE 'C' LC_CTYPE 'C'");
	$node->safe_psql('n23_latin1', 'CREATE EXTENSION wxpay_signplan');
	$node->safe_psql('n23_latin1', config_insert_from_files_sql(name => 'pk'));
	my $n = notification(plan => 'zh-n23-latin1', summary => "caf\x{e9} annul\x{e9}");
	is(verify_ok($n, db => 'n23_latin1',
			cols => "summary, resource->>'plan_name', event_type"),
		'café annulé|\u6708\u5EA6\u8BA1\u5212 café \U0001F600|PAYSCORE.USER_CANCEL_SIGN_PLAN',
		'LATIN1: the body verifies byte for byte; Chinese comes back escaped');
}

# ---- the README's trigger recipe, as written ----
{
	my $readme = slurp_file("$FindBin::RealBin/../../README.md");
	my ($recipe) = $readme =~
	  /### Notifications: learn when a user cancels a plan\n.*?```sql\n(.*?)```/s;
	ok(defined $recipe, 'the README has the recipe');
	$node->safe_psql('postgres', $recipe);
	$node->safe_psql('postgres', q{
CREATE TABLE n23_updates (n int);
INSERT INTO n23_updates VALUES (0);
CREATE FUNCTION n23_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE n23_updates SET n = n + 1; RETURN NEW; END $$;
CREATE TRIGGER n23_count AFTER UPDATE ON subscription
    FOR EACH ROW EXECUTE FUNCTION n23_count();
});
	my $sign = notification(plan => 'plan-0501', event_type => 'PAYSCORE.USER_SIGN_PLAN',
		id => 'n23-id-0501-sign');
	$node->safe_psql('postgres', call_sql('wxpay_accept_notification', $sign));
	is($node->safe_psql('postgres',
			"SELECT ended_at IS NULL FROM subscription WHERE merchant_sign_plan_no = 'plan-0501'"),
		't', 'a signing does not end the subscription');
	for (1 .. 2)
	{
		my $c = notification(plan => 'plan-0501', id => 'n23-id-0501-cancel');
		$node->safe_psql('postgres', call_sql('wxpay_accept_notification', $c));
	}
	is($node->safe_psql('postgres',
			"SELECT ended_at IS NOT NULL, ended_by FROM subscription "
			  . "WHERE merchant_sign_plan_no = 'plan-0501'"),
		't|USER', 'the cancellation ended the subscription');
	is($node->safe_psql('postgres', 'SELECT n FROM n23_updates'),
		'1', '... once, though delivered twice');
}

# ---- the simulator POSTs a notification to a callback URL ----
{
	my $r = notification(plan => 'n23-callback',
		callback_url => "$ENV{WXPAY_SIM_CONTROL}/n23-callback");
	is($r->{callback_status}, 404, 'the simulator POSTed the notification to the callback URL');
	like(verify_ok($r, cols => 'event_type'), qr/USER_CANCEL/,
		'... and returned what it sent, which verifies');
}

# ---- the log: no key, no decrypted text of a refused notification ----
{
	my $n = notification(plan => 'n23-log', fault => 'tampered_tag');
	fails(call_sql('wxpay_verify_notification', $n));
	$n = notification(plan => 'n23-log2', plaintext => 'n23-SECRET-PLAINTEXT-2 {');
	fails(call_sql('wxpay_verify_notification', $n));
	my $log = slurp_file($node->logfile);
	like($log, qr/WX016|could not be decrypted/, 'the refusals were logged');
	ok(index($log, $apiv3) < 0, 'the APIv3 key is not in the log');
	unlike($log, qr/SECRET-PLAINTEXT/, 'no decrypted text is in the log');
}

$node->stop;
done_testing();
