
# 001_signature.pl: the request the extension sends is exactly what WeChat
# Pay APIv3 specifies: headers, Authorization syntax, the JSON body, and an
# RSA-SHA256 signature that openssl reproduces byte for byte, with a PKCS#8
# and with a PKCS#1 private key; and each request has a fresh nonce.
#
# This file is UTF-8 and deliberately has no "use utf8": the Chinese stop
# reason below is a byte string, passed to psql and compared as bytes.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use Encode qw(decode encode);
use File::Temp qw(tempdir);
use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(decode_base64 encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $serial = pki_file('merchant_serial.txt', chomp => 1);
my $reason = '用户"退订"\ok';    # UTF-8 bytes
my $expected_body = '{"stop_reason":"用户\"退订\"\\\\ok"}';

# Lower-case serial in the config: the extension must send it upper-cased.
my $node = new_node('sig', serial_no => lc $serial);

my $tmp = tempdir(CLEANUP => 1);

# The Base64 RSA-SHA256 signature that openssl makes with $keyfile.
sub openssl_sign
{
	my ($keyfile, $msg) = @_;
	my $in = "$tmp/msg";
	my $out = "$tmp/sig";
	open my $fh, '>:raw', $in or die "$in: $!";
	print $fh $msg;
	close $fh or die "$in: $!";
	unlink $out;
	my ($o, $e) = ('', '');
	IPC::Run::run [ 'openssl', 'dgst', '-sha256', '-sign', $keyfile,
		'-out', $out, $in ], '>', \$o, '2>', \$e
	  or die "openssl dgst failed: $e";
	return encode_base64(slurp_file($out), '');
}

# Parse an Authorization header exactly; returns a hash or undef.
sub parse_authorization
{
	my ($h) = @_;
	return undef unless $h =~ s/^WECHATPAY2-SHA256-RSA2048 //;
	my %kv;
	my @order;
	while ($h =~ /\G([a-z_]+)="([^"]*)"(,|\z)/gc)
	{
		return undef if exists $kv{$1};
		$kv{$1} = $2;
		push @order, $1;
		last if $3 eq '';
	}
	return undef unless (pos($h) // -1) == length($h);
	return \%kv;
}

# Check one logged stop request: headers, body, Authorization and signature.
# Returns the nonce.
sub check_request
{
	my ($label, $plan, $keyfile) = @_;
	my $path = plan_path($plan, 'stop');
	my @reqs = sim_requests_for_path($path);
	is(scalar @reqs, 1, "$label: exactly one request logged for $path")
	  or return undef;
	my $r = $reqs[0];
	my $h = $r->{headers};

	is($r->{method}, 'POST', "$label: method POST");
	ok($r->{verified}, "$label: the simulator verified the request");
	is($r->{answer_status}, 200, "$label: answered 200");
	like($h->{'user-agent'}, qr{^wxpay_signplan/},
		"$label: User-Agent starts with wxpay_signplan/");
	is($h->{accept}, 'application/json', "$label: Accept");
	is($h->{'content-type'}, 'application/json', "$label: Content-Type");

	# the log holds the body as characters; compare its UTF-8 bytes
	my $body = encode('UTF-8', $r->{body});
	is($body, $expected_body, "$label: body is exactly the JSON expected");
	my $decoded = JSON::PP->new->utf8->decode($body);
	is_deeply([ sort keys %$decoded ], ['stop_reason'],
		"$label: body has only stop_reason");
	is(encode('UTF-8', $decoded->{stop_reason}),
		$reason, "$label: stop_reason decodes back to the exact reason");

	my $auth = $h->{authorization};
	my $kv = parse_authorization($auth);
	ok(defined $kv,
		"$label: Authorization is the scheme then k=\"v\" pairs joined by bare commas"
	) or diag("Authorization: $auth");
	$kv //= {};
	is_deeply(
		[ sort keys %$kv ],
		[ sort qw(mchid nonce_str signature timestamp serial_no) ],
		"$label: Authorization has the five keys, each once");
	is($kv->{mchid}, '1900000001', "$label: mchid");
	like($kv->{nonce_str} // '', qr/^[0-9A-Za-z]{32}\z/,
		"$label: nonce_str is 32 alphanumerics");
	is($kv->{serial_no}, $serial,
		"$label: serial_no is the merchant serial, upper-case");
	is($kv->{serial_no}, uc($kv->{serial_no} // ''),
		"$label: serial_no is upper-case");
	like($kv->{timestamp} // '', qr/^[0-9]{10}\z/,
		"$label: timestamp is Unix seconds");
	cmp_ok(abs(($kv->{timestamp} // 0) - time()),
		'<', 300, "$label: timestamp is the current time");

	my $sig = $kv->{signature} // '';
	is(length($sig), 344, "$label: signature is 344 characters");
	like($sig, qr{^[A-Za-z0-9+/]{342}==\z}, "$label: signature is Base64");
	is(encode_base64(decode_base64($sig), ''),
		$sig, "$label: signature is canonical Base64");
	is(length(decode_base64($sig)), 256,
		"$label: signature decodes to 256 bytes (RSA-2048)");

	my $msg = "POST\n$r->{path}\n$kv->{timestamp}\n$kv->{nonce_str}\n$body\n";
	is($sig, openssl_sign($keyfile, $msg),
		"$label: signature equals openssl dgst -sha256 -sign over the string to sign"
	);
	return $kv->{nonce_str};
}

# ---- PKCS#8 key ----
my $row = $node->safe_psql('postgres',
	"SELECT merchant_sign_plan_no, sign_state, cancel_reason = "
	  . dq($reason)
	  . " FROM wxpay_stop_sign_plan('t1-sig', "
	  . dq($reason) . ")");
is($row, 't1-sig|SIGN_PLAN_CANCEL|t',
	'PKCS#8: t1-sig stopped, the reason round-tripped');
check_request('PKCS#8', 't1-sig', "$ENV{WXPAY_PKI}/merchant.key");

# ---- PKCS#1 key: same key material, so the very same signatures ----
$node->safe_psql('postgres',
	'UPDATE wxpay_config SET private_key = '
	  . dq(pki_file('merchant_pkcs1.key')));
like(pki_file('merchant_pkcs1.key'), qr/BEGIN RSA PRIVATE KEY/,
	'merchant_pkcs1.key is PKCS#1');
$row = $node->safe_psql('postgres',
	"SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('t1-sig-pkcs1', "
	  . dq($reason) . ")");
is($row, 't1-sig-pkcs1|SIGN_PLAN_CANCEL', 'PKCS#1: t1-sig-pkcs1 stopped');
# expected signature made with the PKCS#8 file: identical signing
check_request('PKCS#1', 't1-sig-pkcs1', "$ENV{WXPAY_PKI}/merchant.key");

# ---- two calls in one session: a fresh nonce each time ----
$row = $node->safe_psql(
	'postgres', qq{
SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('t1-nonce-a', } . dq($reason) . qq{);
SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('t1-nonce-b', } . dq($reason) . qq{);
});
is($row, "t1-nonce-a\nt1-nonce-b", 'two stops in one session succeeded');
my $na = check_request('same session, 1st', 't1-nonce-a',
	"$ENV{WXPAY_PKI}/merchant.key");
my $nb = check_request('same session, 2nd', 't1-nonce-b',
	"$ENV{WXPAY_PKI}/merchant.key");
ok(defined $na && defined $nb && $na ne $nb,
	'the second call in the session used a different nonce');

$node->stop;
done_testing();
