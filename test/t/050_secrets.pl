# 050_secrets.pl: no secret reaches the server log, the client, the
# statistics views or a non-owner's pg_dump, however verbose the server is.
#
# The cluster logs everything it can: log_min_messages = debug5,
# log_statement = all, log_min_duration_statement = 0,
# log_min_error_statement = debug5, verbose error fields; every client
# session runs with client_min_messages = debug5 and VERBOSITY verbose;
# pg_stat_statements tracks nested statements too.  Keys are loaded the way
# README.md and doc/security.md recommend (the server reads the files: pg_read_file), then
# calls succeed and fail in every class.  Afterwards neither the log, the
# clients' output, pg_stat_statements nor pg_dump output may contain:
#   - any line of the Base64 body of any merchant private key used,
#   - the APIv3 key,
#   - any Authorization header value the simulator received, or its
#     signature.
# Positive controls show that each place searched is really being written
# (a key in literal SQL text does reach the log: doc/security.md's warning).

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $closed = refusing_port();    # refuses connections
my $closed_port = $closed->sockport;

my $node = PostgreSQL::Test::Cluster->new('secrets');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'pg_stat_statements, wxpay_signplan'
pg_stat_statements.track = all
wxpay.database_name = 'postgres'
wxpay.retry_base_delay = '20ms'
wxpay.retry_max_delay = '50ms'
wxpay.reconcile_delay = '50ms'
wxpay.max_attempts = 2
log_min_messages = debug5
log_statement = all
log_min_duration_statement = 0
log_min_error_statement = debug5
log_error_verbosity = verbose
log_parameter_max_length = -1
log_parameter_max_length_on_error = -1
client_min_messages = debug5
});
$node->start;

my ($all_out, $all_err) = ('', '');

# Run SQL in a fresh psql session, errors allowed; keep its output.
sub run_sql
{
	my ($sql, %opt) = @_;
	my ($out, $err) = ('', '');
	$node->psql(
		'postgres', $sql,
		stdout => \$out,
		stderr => \$err,
		on_error_stop => 0,
		extra_params => [ '-v', 'VERBOSITY=verbose', @{ $opt{extra} // [] } ]);
	$all_out .= "$out\n";
	$all_err .= "$err\n";
	return ($out, $err);
}

run_sql('CREATE EXTENSION pg_stat_statements');
run_sql('CREATE EXTENSION wxpay_signplan');

# ---- configs, secrets read by the server from files ----
run_sql(config_insert_from_files_sql());
run_sql(
	config_insert_from_files_sql(
		name => 'pkcs1',
		files => { private_key => 'merchant_pkcs1.key' }));
run_sql(
	config_insert_from_files_sql(
		name => 'wrongkey',
		files => { private_key => 'wrong_merchant.key' }));
run_sql(
	config_insert_from_files_sql(
		name => 'encrypted',
		files => { private_key => 'merchant_encrypted.key' }));
run_sql(
	config_insert_from_files_sql(
		name => 'closed',
		base_url => "https://127.0.0.1:$closed_port"));
my ($out) = run_sql('SELECT count(*) FROM wxpay_config');
like($out, qr/^5$/m, 'five configs loaded from files');

# failing statements on the secret table (their text is logged on error)
run_sql(config_insert_from_files_sql());    # duplicate name
run_sql(config_insert_from_files_sql(name => 'nomchid', mchid => undef))
  ;                                         # NULL column, rejected by the trigger
run_sql(
	"UPDATE wxpay_config SET private_key = pg_catalog.pg_read_file("
	  . dq("$ENV{WXPAY_PKI}/merchant.key")
	  . ") WHERE name = 'pkcs1'");          # a key rotation

# ---- calls in every class ----
my @faults = qw(bad_signature probe bad_base64 unknown_serial stale_timestamp
  missing_signature dup_signature not_json http500 http500_html http429
  http400);
my $calls = join(
	"\n",
	"SELECT * FROM wxpay_stop_sign_plan('sec50-ok', 'stop it');",
	"SELECT * FROM wxpay_query_sign_plan('sec50-ok');",
	"SELECT * FROM wxpay_stop_sign_plan('sec50-ok', 'again');",
	"SELECT * FROM wxpay_stop_sign_plan('sec50-pkcs1', 'x', 'pkcs1');",
	"SELECT * FROM wxpay_stop_sign_plan('sec50-wrong', 'x', 'wrongkey');",
	"SELECT * FROM wxpay_stop_sign_plan('sec50-enc', 'x', 'encrypted');",
	"SELECT * FROM wxpay_stop_sign_plan('sec50-closed', 'x', 'closed');",
	"SELECT * FROM wxpay_stop_sign_plan('sec50 bad', 'x');",
	"SELECT * FROM wxpay_stop_sign_plan('sec50-x', 'x', 'nosuchconfig');",
	(map { "SELECT * FROM wxpay_stop_sign_plan('fault-$_-sec50', 'x');" }
		  @faults),
	"SELECT d.* FROM wxpay_stop_sign_plan('sec50-d', 'x') p, LATERAL wxpay_sign_plan_details(p) d;",
	# the batch function, the configuration check, and the background
	# worker (its requests, retries and errors log at debug5 too)
	"SELECT * FROM wxpay_stop_sign_plans(ARRAY['sec50-b1', 'fault-http403-sec50', 'sec50 bad'], 'x');",
	"SELECT * FROM wxpay_check_config('default', true);",
	"SELECT * FROM wxpay_check_config('wrongkey', true);",
	"SELECT wxpay_stop_sign_plan_async(p, 'x') FROM unnest(ARRAY['sec50-q1', 'fault-http500-sec50q', 'fault-bad_signature-sec50q', 'fault-http400-sec50q']) p;",
	"SELECT w.state, w.error_code, w.error_message FROM wxpay_stop_request r, LATERAL wxpay_wait_stop_request(r.id, '60s') w ORDER BY r.id;"
);
my ($calls_out, $calls_err) = run_sql($calls);
like($calls_out, qr/sec50-ok\|.*SIGN_PLAN_CANCEL/, 'a stop succeeded');
like($calls_err, qr/WX002/, 'a call was rejected (WX002)');
like($calls_err, qr/WX003/, 'a call had an unknown outcome (WX003)');
like($calls_err, qr/WX004/, 'a call was not sent (WX004)');
like($calls_err, qr/WX001/, 'a config was unusable (WX001)');
like($calls_err, qr/SIGN_ERROR/, 'the wrong key was refused by the simulator');
like($calls_err, qr/DEBUG:/, 'the client received DEBUG messages');
like($calls_out, qr/^succeeded\|\|/m, 'the worker sent a queued stop');
like($calls_out, qr/^failed\|PARAM_ERROR\|/m, 'the worker recorded a rejection');
like($calls_out, qr/^failed\|WX003\|/m, 'the worker gave up on unknown outcomes');

# the same calls through a role that has EXECUTE and nothing else
run_sql('CREATE ROLE regress_app LOGIN');
run_sql('GRANT EXECUTE ON FUNCTION wxpay_stop_sign_plan(text, text, text, text) TO regress_app');
run_sql(
	"SET ROLE regress_app;\n"
	  . "SELECT * FROM wxpay_stop_sign_plan('sec50-app', 'x');\n"
	  . "SELECT * FROM wxpay_stop_sign_plan('fault-bad_signature-sec50b', 'x');\n"
	  . "SELECT private_key FROM wxpay_config;");

# ---- the unsafe way, with a canary instead of a key: the log has it ----
my $canary = 'CANARYKEY' . join('', map { ('A' .. 'Z')[ rand 26 ] } 1 .. 24);
run_sql(
	"INSERT INTO wxpay_config (name, mchid, serial_no, private_key) VALUES ('canary', '1', 'AB', '$canary');\n"
	  . "DELETE FROM wxpay_config WHERE name = 'canary';");

# ---- pg_stat_statements ----
my ($pgss) = run_sql('SELECT query FROM pg_stat_statements');
like($pgss, qr/pg_read_file/, 'pg_stat_statements holds the config inserts');
like($pgss, qr/wxpay_stop_sign_plan/, 'pg_stat_statements holds the calls');
unlike($pgss, qr/$canary/,
	'pg_stat_statements normalizes literals (even the canary is not kept)');

# ---- pg_dump ----
sub pg_dump_as
{
	my ($user) = @_;
	my ($o, $e) = ('', '');
	my $ok = IPC::Run::run(
		[
			'pg_dump', '--no-sync', '-d',
			$node->connstr('postgres') . " user=$user"
		],
		'>', \$o, '2>', \$e);
	return ($ok, $o, $e);
}
my ($dump_ok, $dump_out, $dump_err) = pg_dump_as('regress_app');
ok(!$dump_ok, 'pg_dump as a non-owner fails');
# pg_dump's words differ by version (up to 17 the server's "permission
# denied for table wxpay_config"; 18 reads sequences through a function and
# says "failed to get data for sequence "wxpay_stop_request_id_seq"; user may
# lack SELECT privilege"): what matters is that its error names one of the
# extension's protected objects and a missing privilege
my ($dump_error) = $dump_err =~ /^(pg_dump: error: .*)$/m;
like($dump_error // '', qr/\bwxpay_\w+/,
	'pg_dump as a non-owner: the error names a protected object of the extension');
like($dump_error // '', qr/\b(?:permission|privilege)\b/,
	'pg_dump as a non-owner: the error is about a missing privilege');
my ($odump_ok, $owner_dump) = pg_dump_as('postgres');
ok($odump_ok, 'pg_dump as the owner works');

# ---- the secrets ----
my %secret;
for my $f (
	qw(merchant.key merchant_pkcs1.key wrong_merchant.key merchant_encrypted.key)
  )
{
	my $n = 0;
	for my $line (split /\n/, pki_file($f))
	{
		next if $line =~ /^-----/ || length($line) < 16;
		$secret{ "$f line " . ++$n } = $line;
	}
}
$secret{'APIv3 key'} = pki_file('apiv3_key.txt', chomp => 1);
my $nauth = 0;
for my $r (@{ ctl_get('/requests') })
{
	my $auth = $r->{headers}{authorization} // next;
	next unless $r->{path} =~ /sec50/;
	$nauth++;
	(my $value = $auth) =~ s/^WECHATPAY2-SHA256-RSA2048 //;
	$secret{"Authorization of $r->{path} ($nauth)"} = $value;
	$secret{"signature of $r->{path} ($nauth)"} = $1
	  if $auth =~ /signature="([^"]+)"/;
}
cmp_ok($nauth, '>=', 10, "the simulator saw $nauth signed requests of this test");

my $log = slurp_file($node->logfile);
like($log, qr/sec50-ok/, 'the server log has the statements');
like($log, qr/DEBUG:/, 'the server log has DEBUG messages');
like($log, qr/$canary/,
	'a key written as a literal in SQL text does reach the log (the README warns)');
like($owner_dump, qr/\Q$secret{'merchant.key line 1'}\E/,
	"the owner's pg_dump holds the key (so the search below can fail)");

my %place = (
	'server log' => $log,
	'client output' => "$all_out\n$all_err",
	'pg_stat_statements' => $pgss,
	"non-owner's pg_dump" => "$dump_out\n$dump_err");
for my $where (sort keys %place)
{
	my @found = grep { index($place{$where}, $secret{$_}) >= 0 } sort keys %secret;
	is_deeply(\@found, [], "$where: none of " . scalar(keys %secret) . ' secrets');
	unlike($place{$where}, qr/WECHATPAY2-SHA256-RSA2048 mchid=/,
		"$where: no Authorization header value");
	unlike($place{$where}, qr/signature="/, "$where: no signature field");
}

$node->stop;
done_testing();
