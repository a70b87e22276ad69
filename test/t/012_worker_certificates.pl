
# Copyright: wxpay_signplan authors
#
# The background worker keeps platform certificates current: a config with
# an apiv3_key gets its certificates without anyone calling
# wxpay_refresh_platform_certificates(), rotations are picked up on the
# interval, and a failed refresh keeps what is held.  Synchronisation by
# polling the table and the server log, never by sleeping.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

END
{
	eval {
		ctl_post('/settings',
			{ signing_cert => 'platform_cert', certificates => ['platform_cert'] });
	};
}

my %serial = map { $_ => pki_file("${_}_serial.txt", chomp => 1) }
  qw(platform_cert platform_cert2);

my $node = PostgreSQL::Test::Cluster->new('worker_certs');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'wxpay_signplan'
wxpay.database_name = 'postgres'
wxpay.certificate_refresh_interval = '1s'
# the INSERT below carries keys in its text; everything else may log
log_statement = 'none'
log_min_messages = debug1
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');

sub held
{
	return $node->safe_psql('postgres',
		"SELECT string_agg(serial_no, ' ' ORDER BY serial_no) FROM wxpay_platform_certificate WHERE config_name = 'certmode'"
	);
}

# a certificate-mode merchant with an APIv3 key and no certificates yet;
# inserting it wakes the worker
$node->safe_psql('postgres', certmode_config_sql(name => 'certmode'));

ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM wxpay_platform_certificate WHERE config_name = 'certmode' AND serial_no = '$serial{platform_cert}'"
	),
	'the worker downloaded the platform certificate by itself');

# and a call verifies with it
my $plan = $node->safe_psql('postgres',
	"SELECT sign_state FROM wxpay_query_sign_plan('q12-plan', 'certmode')");
is($plan, 'SIGNED', 'a query verified with the downloaded certificate');

# rotation: WeChat Pay lists a new certificate and signs with it
ctl_post('/settings',
	{ signing_cert => 'platform_cert2', certificates => [ 'platform_cert', 'platform_cert2' ] });
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 2 FROM wxpay_platform_certificate WHERE config_name = 'certmode'"),
	'the rotated certificate was added on the interval');
is(held(), join(' ', sort values %serial), 'old and new are both held (overlap)');

# a failing refresh keeps what is held and says why in the log
my $offset = -s $node->logfile;
ctl_post('/faults', { plan => 'certificates', fault => 'tampered_tag', times => 1 });
ok( $node->wait_for_log(
		qr/WARNING:  could not refresh the platform certificates of wxpay configuration "certmode"/,
		$offset),
	'a failed refresh is logged');
# the same words as wxpay_refresh_platform_certificates() raises: the
# detail once (not the primary again), and the hint
{
	my $tail = substr(slurp_file($node->logfile), $offset);
	like(
		$tail,
		qr/WARNING:  could not refresh the platform certificates of wxpay configuration "certmode"\n[^\n]*DETAIL:  Platform certificate "[0-9A-F]+" could not be decrypted: [^\n]*\n[^\n]*HINT:  Check that apiv3_key is the APIv3 key set on the merchant platform\. The certificates already held stay in use\./,
		'the warning has the detail and the hint of the SQL function\'s error');
	unlike($tail, qr/DETAIL:  could not refresh/, 'the detail does not repeat the primary message');
}
is(held(), join(' ', sort values %serial), 'the certificates held are kept');
is($node->safe_psql('postgres',
	"SELECT sign_state FROM wxpay_query_sign_plan('q12-plan', 'certmode')"),
	'SIGNED', 'calls keep working');

my $log = slurp_file($node->logfile);
my $key = pki_file('apiv3_key.txt', chomp => 1);
ok(index($log, $key) < 0, 'the APIv3 key never reaches the log');

$node->stop;
done_testing();
