# 020_certificates.pl: platform certificate rotation as WeChat Pay does it.
# The simulator's /v3/certificates answer changes (which certificates it
# lists, which one signs); wxpay_refresh_platform_certificates() must add
# new ones, keep old ones until they expire (the overlap), store no expired
# one, trust an answer only when a certificate in it or one already held
# signed it, and make every session use the new set at its next call.
# Secrets must not reach the server log.
#
# The simulator is shared: this file restores its settings when it ends.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my %serial = map { $_ => pki_file("${_}_serial.txt", chomp => 1) }
  qw(platform_cert platform_cert2 platform_cert_expired);
my %name_of = reverse %serial;

# put the simulator back even when a test dies half-way
END
{
	eval {
		ctl_post('/settings',
			{ signing_cert => 'platform_cert', certificates => ['platform_cert'] });
	};
}

my $node = new_node('certs');
$node->safe_psql('postgres',
	"ALTER SYSTEM SET log_min_messages = debug1; SELECT pg_reload_conf()");

sub add_config
{
	my ($name) = @_;
	$node->safe_psql('postgres', certmode_config_sql(name => $name));
	return;
}

sub sim_settings
{
	my ($signing, @certs) = @_;
	ctl_post('/settings', { signing_cert => $signing, certificates => \@certs });
	return;
}

# "name:new name:new ..." from a refresh, by certificate name
sub refresh
{
	my ($cfg) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT serial_no, is_new FROM wxpay_refresh_platform_certificates('$cfg')");
	my @r = map { my ($s, $n) = split /\|/; ($name_of{$s} // "?$s") . ":$n" }
	  split /\n/, $out;
	return join ' ', sort @r;
}

sub held
{
	my ($cfg) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT serial_no FROM wxpay_platform_certificate WHERE config_name = '$cfg'");
	return join ' ', sort map { $name_of{$_} // "?$_" } split /\n/, $out;
}

sub refresh_error
{
	my ($cfg) = @_;
	my ($rc, $out, $err) = $node->psql('postgres',
		"SELECT * FROM wxpay_refresh_platform_certificates('$cfg')",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return $err;
}

# the INSERTs carry the keys in their text (log_statement = all here); the
# log is checked for secrets from after them on
add_config($_) for qw(rot rot_new rot_sess);
my $log_offset = -s $node->logfile;

# 1. first download: the answer vouches for itself
sim_settings('platform_cert', 'platform_cert');
is(refresh('rot'), 'platform_cert:t', 'first refresh stores the certificate');
is(held('rot'), 'platform_cert', 'one certificate held');

# 2. WeChat Pay announces a new certificate, still signing with the old one
sim_settings('platform_cert', 'platform_cert', 'platform_cert2');
is(refresh('rot'), 'platform_cert2:t platform_cert:f', 'the new certificate is added');

# 3. it switches to the new one and stops listing the old: the old one stays
sim_settings('platform_cert2', 'platform_cert2');
is(refresh('rot'), 'platform_cert2:f platform_cert:f',
	'the old certificate stays until it expires');
is(held('rot'), 'platform_cert platform_cert2', 'both held during the overlap');
is($node->safe_psql('postgres',
		"SELECT sign_state FROM wxpay_stop_sign_plan('t020-rot-1', 'r', 'rot')"),
	'SIGN_PLAN_CANCEL', 'answers signed with the new certificate verify');

# 4. an expired certificate in the answer is not stored
sim_settings('platform_cert2', 'platform_cert_expired', 'platform_cert2');
is(refresh('rot'), 'platform_cert2:f platform_cert:f', 'an expired certificate is not stored');
is(held('rot'), 'platform_cert platform_cert2', 'held set unchanged');

# 5. an answer signed by an expired certificate is not trusted
sim_settings('platform_cert_expired', 'platform_cert_expired', 'platform_cert2');
like(refresh_error('rot'),
	qr/ERROR:  WX003: .*\n.*signed under serial "$serial{platform_cert_expired}", which is neither/,
	'an answer signed by an expired certificate is refused');
is(held('rot'), 'platform_cert platform_cert2', 'held set unchanged after the refusal');

# 6. signed by a certificate neither in the answer nor held: refused; the
#    same answer is fine for a config that already trusts the signer
sim_settings('platform_cert2', 'platform_cert');
like(refresh_error('rot_new'),
	qr/ERROR:  WX003: .*\n.*signed under serial "$serial{platform_cert2}", which is neither/,
	'an answer signed by an unknown certificate is refused');
is(held('rot_new'), '', 'nothing stored for the refused answer');
is(refresh('rot'), 'platform_cert2:f platform_cert:f',
	'a certificate already held may vouch for the answer');

# 7. other sessions use the new certificates at their next call
sim_settings('platform_cert', 'platform_cert');
is(refresh('rot_sess'), 'platform_cert:t', 'session test config has the first certificate');
my $s = $node->background_psql('postgres', on_error_stop => 0);
my ($out, $err) = bg_finish($s,
	bg_send($s, "SELECT sign_state FROM wxpay_stop_sign_plan('t020-sess-1', 'r', 'rot_sess')"));
is($out, 'SIGN_PLAN_CANCEL', 'a session stops a plan with the first certificate');
sim_settings('platform_cert2', 'platform_cert', 'platform_cert2');
($out, $err) = bg_finish($s,
	bg_send($s, "SELECT sign_state FROM wxpay_stop_sign_plan('t020-sess-2', 'r', 'rot_sess')"));
like($err, qr/no usable key of wxpay configuration "rot_sess" has serial "$serial{platform_cert2}"/,
	'before the refresh, answers under the new certificate are refused');
is(refresh('rot_sess'), 'platform_cert2:t platform_cert:f', 'refresh in another session');
($out, $err) = bg_finish($s,
	bg_send($s, "SELECT sign_state FROM wxpay_stop_sign_plan('t020-sess-3', 'r', 'rot_sess')"));
is($out, 'SIGN_PLAN_CANCEL', 'the waiting session uses the new certificate at once');
$s->quit;

# 8. nothing secret reached the log, even at DEBUG1, after the failures above
my $log = slurp_file($node->logfile, $log_offset);
my $apiv3 = pki_file('apiv3_key.txt', chomp => 1);
my @key_lines = grep { length($_) == 64 } split /\n/, pki_file('merchant.key');
unlike($log, qr/\Q$apiv3\E/, 'the APIv3 key is not in the server log');
ok(!(grep { index($log, $_) >= 0 } @key_lines), 'no line of the private key is in the server log');
unlike($log, qr/WECHATPAY2-SHA256-RSA2048/, 'no Authorization header in the server log');
like($log, qr/could not refresh the platform certificates/, 'the log does hold the refusals');

sim_settings('platform_cert', 'platform_cert');
$node->stop;
done_testing();
