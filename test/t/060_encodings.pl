
# 060_encodings.pl: databases that are not UTF-8.
#
# WeChat Pay writes UTF-8.  In UTF8, EUC_CN, LATIN1 and SQL_ASCII databases
# (template0, LC_COLLATE/LC_CTYPE 'C'):
#  - a stop of a plan whose plan_name is Chinese (plus a Latin-1 letter and
#    a character beyond U+FFFF) reads as a stop, with its state, times and
#    amounts; characters the database lacks come back as \uXXXX /
#    \UXXXXXXXX text (doc/reference.md "Database encodings"), in raw UTF-8 answers
#    and in answers using JSON \u escapes alike; a byte that is not UTF-8
#    comes back as \xHH;
#  - a 4xx with a Chinese message keeps SQLSTATE WX002 (never 22021), its
#    message converted or escaped; the same in batch rows;
#  - a stop_reason in the database encoding goes out in UTF-8 and comes
#    back the same in cancel_reason;
#  - the queue worker (in the LATIN1 database) records the stop as
#    succeeded and the rejection as failed, with the same text.
#
# Expected strings are written as UTF-8 bytes (no "use utf8"): psql talks
# UTF-8 to the server (WxpayTest sets PGCLIENTENCODING).

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $node = PostgreSQL::Test::Cluster->new('encodings');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'wxpay_signplan'
wxpay.database_name = 'enc_latin1'
wxpay.retry_base_delay = '20ms'
wxpay.retry_max_delay = '100ms'
wxpay.rate_limit = 0
});
$node->start;

my %dbs = (
	UTF8 => 'enc_utf8',
	EUC_CN => 'enc_euc_cn',
	LATIN1 => 'enc_latin1',
	SQL_ASCII => 'enc_sql_ascii');

for my $enc (sort keys %dbs)
{
	$node->safe_psql('postgres',
		    "CREATE DATABASE $dbs{$enc} TEMPLATE template0 ENCODING '$enc' "
		  . "LC_COLLATE 'C' LC_CTYPE 'C'");
	$node->safe_psql($dbs{$enc}, 'CREATE EXTENSION wxpay_signplan');
	$node->safe_psql($dbs{$enc}, config_insert_sql());
}
# the worker now finds its database
$node->restart;

my $zh = '月度计划';
my $zh_esc = '\u6708\u5EA6\u8BA1\u5212';
my $reject = '签约计划状态不允许解约';
my $reject_esc = '\u7B7E\u7EA6\u8BA1\u5212\u72B6\u6001\u4E0D\u5141\u8BB8\u89E3\u7EA6';

# plan_name as each database must show it
my %plan_name = (
	UTF8 => "$zh café 😀",
	EUC_CN => "$zh café \\U0001F600",
	LATIN1 => "$zh_esc café \\U0001F600",
	SQL_ASCII => "$zh café 😀");
my %reject_text = (
	UTF8 => $reject,
	EUC_CN => $reject,
	LATIN1 => $reject_esc,
	SQL_ASCII => $reject);
# a stop reason each database can hold
my %reason = (
	UTF8 => '用户要求解约',
	EUC_CN => '用户要求解约',
	LATIN1 => 'résilié à la demande',
	SQL_ASCII => '用户要求解约');

for my $enc (sort keys %dbs)
{
	my $db = $dbs{$enc};
	my $tag = lc $enc;
	$tag =~ s/_//g;

	for my $prefix ('zh', 'zhesc', 'zhbad')
	{
		my $plan = "${prefix}060$tag";
		my $name = $plan_name{$enc};
		$name =~ s/café/caf\\xE9/ if $prefix eq 'zhbad';
		my $out = $node->safe_psql(
			$db, qq{
SELECT sign_state, cancel_sign_type, cancel_sign_time IS NOT NULL,
       total_actual_price, plan_name, cancel_reason
  FROM wxpay_stop_sign_plan('$plan', '$reason{$enc}')});
		is( $out,
			"SIGN_PLAN_CANCEL|MERCHANT|t|27000|" . $name . "|$reason{$enc}",
			"$enc, $prefix: the stop reads as a stop, plan_name as the database can hold it"
		);
	}

	# a rejection keeps WX002 and says what WeChat Pay said
	my ($ret, $out, $err) = $node->psql(
		$db,
		"\\set VERBOSITY verbose\nSELECT * FROM wxpay_stop_sign_plan('zhreject060$tag', 'x')"
	);
	like($err, qr/ERROR:  WX002: could not stop sign plan "zhreject060$tag"/,
		"$enc: a Chinese 4xx message keeps SQLSTATE WX002");
	like(
		$err,
		qr/DETAIL:  WeChat Pay answered HTTP 400 with code "INVALID_REQUEST": \Q$reject_text{$enc}\E\./,
		"$enc: the platform's message is in the detail");

	# batch rows: the same text, the stop as a row with its plan
	$out = $node->safe_psql(
		$db, qq{
SELECT merchant_sign_plan_no, ok, coalesce(sqlstate, ''),
       coalesce(error_message, ''), coalesce((plan).plan_name, '')
  FROM wxpay_stop_sign_plans(ARRAY['zhreject060b$tag', 'zh060b$tag'], 'x')});
	my @rows = split /\n/, $out;
	like(
		$rows[0],
		qr/^zhreject060b$tag\|f\|WX002\|WeChat Pay answered HTTP 400 with code "INVALID_REQUEST": \Q$reject_text{$enc}\E\./,
		"$enc, batch: the rejection row");
	is($rows[1], "zh060b$tag|t|||$plan_name{$enc}", "$enc, batch: the stop row");
}

# the queue: the worker serves enc_latin1, where Chinese cannot be stored
{
	my $db = 'enc_latin1';
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'"
		),
		'the queue worker runs');
	my $ok_id = $node->safe_psql($db,
		"SELECT wxpay_stop_sign_plan_async('zh060q', 'résilié')");
	my $bad_id = $node->safe_psql($db,
		"SELECT wxpay_stop_sign_plan_async('zhreject060q', 'résilié')");
	my $out = $node->safe_psql(
		$db, qq{
SELECT state, (result).sign_state, (result).plan_name, (result).cancel_reason
  FROM wxpay_wait_stop_request($ok_id, '60s')});
	is( $out,
		"succeeded|SIGN_PLAN_CANCEL|$plan_name{LATIN1}|résilié",
		'LATIN1 queue: the stop is recorded as succeeded, with the plan');
	$out = $node->safe_psql(
		$db, qq{
SELECT state, http_status, error_code, error_message
  FROM wxpay_wait_stop_request($bad_id, '60s')});
	like(
		$out,
		qr/^failed\|400\|INVALID_REQUEST\|WeChat Pay answered HTTP 400 with code "INVALID_REQUEST": \Q$reject_esc\E\./,
		'LATIN1 queue: the rejection is recorded as failed, the message escaped');
}

$node->stop;
done_testing();
