
# 042_failover_upgrade.pl: backup_base_url after ALTER EXTENSION ... UPDATE.
#
#  - configs on WeChat Pay's main domain get the backup domain; configs
#    pointing anywhere else (sandbox, proxy, simulator) get NULL: an upgrade
#    never starts sending their requests to the real backup domain;
#  - 0.4.0 (issue 18): configs created since 0.2.0 beside a sandbox got the
#    real backup domain by default; the update to 0.4.0 sets it NULL and
#    names them in a WARNING (names only, no key), leaving configs on the
#    main domain and backups chosen by hand as they were;
#  - the column, its check, its comment and the row trigger function are the
#    same as after a fresh CREATE EXTENSION;
#  - an upgraded config still works.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION wxpay_signplan');
$node->safe_psql('postgres', "CREATE EXTENSION wxpay_signplan VERSION '0.1.0'");

# 0.1.0 has no backup_base_url
my %base = (
	main => 'https://api.mch.weixin.qq.com',
	main_slash => 'https://API.mch.weixin.qq.com/',
	main_port => 'https://api.mch.weixin.qq.com:443',
	sandbox => 'https://sandbox.example.com',
	sim => $ENV{WXPAY_SIM_URL});
for my $name (sort keys %base)
{
	my @cols = (
		[ name => $name ],
		[ mchid => '1900000001' ],
		[ serial_no => pki_file('merchant_serial.txt', chomp => 1) ],
		[ private_key => pki_file('merchant.key') ],
		[ wechatpay_public_key_id => pki_file('pub_key_id.txt', chomp => 1) ],
		[ wechatpay_public_key => pki_file('platform_pub.pem') ],
		[ base_url => $base{$name} ],
		[ ca_cert => pki_file('ca.crt') ]);
	$node->safe_psql('postgres',
		    'INSERT INTO wxpay_config ('
		  . join(', ', map { $_->[0] } @cols)
		  . ') VALUES ('
		  . join(', ', map { dq($_->[1]) } @cols) . ')');
}

$node->safe_psql('postgres', "ALTER EXTENSION wxpay_signplan UPDATE TO '0.2.0'");

is( $node->safe_psql('postgres',
		"SELECT string_agg(name || '=' || coalesce(backup_base_url, 'NULL'), ' ' ORDER BY name) FROM wxpay_config"
	),
	'main=https://api2.mch.weixin.qq.com main_port=https://api2.mch.weixin.qq.com '
	  . 'main_slash=https://api2.mch.weixin.qq.com sandbox=NULL sim=NULL',
	'upgrade: only configs on the main domain fail over to the backup domain');

# configs made at 0.2.0, where an omitted backup_base_url was always the
# real backup domain
my %late = (
	late_main => [ 'https://api.mch.weixin.qq.com', undef ],
	late_sandbox => [ 'https://sandbox.example.com', undef ],
	late_sim => [ $ENV{WXPAY_SIM_URL}, undef ],
	late_own => [ 'https://sandbox.example.com', 'https://sandbox2.example.com' ],
	late_null => [ 'https://sandbox.example.com', 'NULL' ]);
for my $name (sort keys %late)
{
	my ($base, $backup) = @{ $late{$name} };
	my @cols = (
		[ name => dq($name) ],
		[ mchid => dq('1900000001') ],
		[ serial_no => dq(pki_file('merchant_serial.txt', chomp => 1)) ],
		[ private_key => dq(pki_file('merchant.key')) ],
		[ wechatpay_public_key_id => dq(pki_file('pub_key_id.txt', chomp => 1)) ],
		[ wechatpay_public_key => dq(pki_file('platform_pub.pem')) ],
		[ base_url => dq($base) ],
		[ ca_cert => dq(pki_file('ca.crt')) ]);
	push @cols, [ backup_base_url => $backup eq 'NULL' ? 'NULL' : dq($backup) ]
	  if defined $backup;
	$node->safe_psql('postgres',
		    'INSERT INTO wxpay_config ('
		  . join(', ', map { $_->[0] } @cols)
		  . ') VALUES ('
		  . join(', ', map { $_->[1] } @cols) . ')');
}
is( $node->safe_psql('postgres',
		"SELECT string_agg(name || '=' || coalesce(backup_base_url, 'NULL'), ' ' ORDER BY name) "
		  . "FROM wxpay_config WHERE name LIKE 'late%'"),
	'late_main=https://api2.mch.weixin.qq.com late_null=NULL '
	  . 'late_own=https://sandbox2.example.com '
	  . 'late_sandbox=https://api2.mch.weixin.qq.com late_sim=https://api2.mch.weixin.qq.com',
	'0.2.0: a sandbox config made without backup_base_url fails over to the real platform');

$node->safe_psql('postgres', "ALTER EXTENSION wxpay_signplan UPDATE TO '0.3.0'");
my ($rc, $out, $err) = $node->psql('postgres', 'ALTER EXTENSION wxpay_signplan UPDATE',
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
is($rc, 0, 'update to 0.4.0 succeeds') or diag $err;
like($err,
	qr/WARNING:  01000: backup_base_url of wxpay configurations "late_sandbox", "late_sim" is now NULL\n.*DETAIL:  Their base_url is not WeChat Pay's main domain https:\/\/api\.mch\.weixin\.qq\.com, so they no longer fail over to WeChat Pay's backup domain https:\/\/api2\.mch\.weixin\.qq\.com\.\n.*HINT:  If such an environment has a backup domain of its own, set backup_base_url to it\./s,
	'update to 0.4.0: a WARNING names the configs that lose the real backup domain');
my @warnings = $err =~ /WARNING/g;
is(scalar(@warnings), 1, 'update to 0.4.0: one warning');
unlike($err, qr/PRIVATE KEY|late_main|late_own|late_null/,
	'update to 0.4.0: the warning names no other config and shows no key');
is( $node->safe_psql('postgres',
		"SELECT string_agg(name || '=' || coalesce(backup_base_url, 'NULL'), ' ' ORDER BY name) FROM wxpay_config"),
	'late_main=https://api2.mch.weixin.qq.com late_null=NULL '
	  . 'late_own=https://sandbox2.example.com late_sandbox=NULL late_sim=NULL '
	  . 'main=https://api2.mch.weixin.qq.com main_port=https://api2.mch.weixin.qq.com '
	  . 'main_slash=https://api2.mch.weixin.qq.com sandbox=NULL sim=NULL',
	'update to 0.4.0: only the defaulted backups beside a non-production base_url are cleared');

# the same objects as a fresh install
my $describe = q{
SELECT concat_ws(E'\n',
    (SELECT format('%s %s %s %s', attname, format_type(atttypid, atttypmod),
                   attnotnull, pg_get_expr(adbin, adrelid))
     FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
     WHERE attrelid = 'wxpay_config'::regclass AND attname = 'backup_base_url'),
    col_description('wxpay_config'::regclass,
                    (SELECT attnum FROM pg_attribute WHERE attrelid = 'wxpay_config'::regclass
                     AND attname = 'backup_base_url')),
    (SELECT pg_get_constraintdef(oid) FROM pg_constraint
     WHERE conname = 'wxpay_config_backup_base_url_https'),
    pg_get_functiondef('wxpay_config_check()'::regprocedure),
    (SELECT array_agg(p ORDER BY p)::text FROM (
        SELECT unnest(proacl)::text p FROM pg_proc WHERE oid = 'wxpay_config_check()'::regprocedure) a))
};
my $upgraded = $node->safe_psql('postgres', $describe);
my $fresh = $node->safe_psql('fresh', $describe);
like($fresh, qr/^backup_base_url text f 'default'::text$/m,
	'fresh: the column and its default');
is($upgraded, $fresh, 'upgrade: column, comment, check and trigger function as in a fresh install');

# the upgraded trigger checks the new column, quoting no row
($rc, $out, $err) = $node->psql('postgres',
	"UPDATE wxpay_config SET backup_base_url = 'http://x.example.com' WHERE name = 'sim'");
like($err, qr/ERROR:  invalid backup_base_url for wxpay configuration "sim"/,
	'upgrade: the trigger refuses a non-https backup_base_url');
unlike($err, qr/Failing row|PRIVATE KEY/, 'upgrade: and echoes no row');

# an upgraded config still stops plans
is( $node->safe_psql('postgres',
		"SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('t42-1', 'upgraded', 'sim')"),
	't42-1|SIGN_PLAN_CANCEL',
	'upgrade: a call through an upgraded config succeeds');

$node->stop;
done_testing();
