
# Copyright: wxpay_signplan authors
#
# 022_keys_at_rest.pl: with wxpay.root_key_command set, wxpay_config's
# private_key and apiv3_key are sealed before the row is written (issue 20).
#
#   - the table holds "wxsealed:v1:<fingerprint>:..." for both columns; no
#     line of the private key's PEM body and not the APIv3 key is anywhere in
#     the data directory after a CHECKPOINT (WAL included) or in pg_dump's
#     output; the dump restored into another database of the cluster works;
#   - stop, query, the certificate refresh (SQL and the queue worker), the
#     queue and wxpay_check_config (keys_at_rest) work with sealed keys;
#   - a wrong root key, no root key, a command that fails and one printing
#     something malformed: each WX001 with a clear detail (the fingerprints),
#     nothing sent; with a wrong root key the queue leaves the request
#     unfailed and sends it once the right key is back;
#   - a sealed value copied to another row or column does not open; a rename
#     re-seals;
#   - wxpay_seal_config() seals plaintext rows (a config stored without a root
#     key, one from before an upgrade from 0.3.0) and re-seals under a new
#     root key with the old one as wxpay.previous_root_key_command;
#   - a streaming standby with the same root key command opens the sealed
#     keys; with another it fails with WX001 naming both fingerprints;
#   - a root key command that never answers: a stop fails with WX001 after
#     wxpay.root_key_command_timeout, nothing sent; statement_timeout and
#     pg_cancel_backend cancel the wait (57014), the session stays usable;
#     the queue worker leaves its request queued, unfailed, and sends it
#     once the command is fixed; every time the command and its children
#     are killed and reaped (/proc shows nothing of them, no zombie);
#   - at log_min_messages = debug5 the server log holds neither root key,
#     nor the merchant key's PEM lines, nor the APIv3 key.
# Root keys come from small scripts this test writes.  Synchronisation by
# polling, never by sleeping.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use Digest::SHA qw(sha256);
use File::Find;
use List::Util;
use Time::HiRes;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $k1 = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
my $k2 = 'f00dfacef00dfacef00dfacef00dfacef00dfacef00dfacef00dfacef00dface';
my $junk = 'NOTAKEY-22-' . ('Z' x 40);

sub script
{
	my ($name, $body) = @_;
	my $path = "$dir/$name";
	open my $fh, '>', $path or die "$path: $!";
	print $fh "#!/bin/sh\n$body\n";
	close $fh;
	chmod 0755, $path or die "$path: $!";
	return $path;
}
my %cmd = (
	k1 => script('key1.sh', "echo $k1"),
	k2 => script('key2.sh', "echo $k2"),
	fail => script('fail.sh', 'exit 3'),
	bad => script('bad.sh', "echo $junk"));

sub fp
{
	my ($hex) = @_;
	return unpack('H16',
		sha256("wxpay_signplan root key fingerprint v1\0" . pack('H*', $hex)));
}
my %fp = (k1 => fp($k1), k2 => fp($k2));

# the secrets: every line of the merchant key's Base64 body, the APIv3 key
my @pem_lines = grep { length($_) >= 16 && !/^-----/ } split /\n/,
  pki_file('merchant.key');
my $apiv3 = pki_file('apiv3_key.txt', chomp => 1);
my @secrets = (@pem_lines, $apiv3);

sub leaks
{
	my ($text) = @_;
	return grep { index($text, $_) >= 0 } (@secrets, $k1, $k2);
}

my $node = PostgreSQL::Test::Cluster->new('keys_at_rest');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ], allows_streaming => 1);
$node->append_conf(
	'postgresql.conf',
	queue_test_conf(
		'wxpay.root_key_command' => "'$cmd{k1}'",
		'wxpay.certificate_refresh_interval' => "'1s'",
		'wxpay.max_attempts' => 1,
		log_statement => "'none'",
		log_min_messages => 'debug5'));
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');

# Set the two root key settings (undef: empty) and wait until a new session
# sees them.
sub set_keys
{
	my ($cur, $prev) = @_;
	my ($c, $p) = map { defined $_ ? $cmd{$_} : '' } ($cur, $prev);
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET wxpay.root_key_command = '$c'; "
		  . "ALTER SYSTEM SET wxpay.previous_root_key_command = '$p'; SELECT pg_reload_conf()");
	$node->poll_query_until('postgres',
		"SELECT current_setting('wxpay.root_key_command') = '$c' AND current_setting('wxpay.previous_root_key_command') = '$p'"
	) or die "the settings did not arrive";
}

# a stop that must fail before anything is sent: (stderr, attempts the
# simulator saw for the plan)
sub failed_stop
{
	my ($plan, $cfg) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT sign_state FROM wxpay_stop_sign_plan('$plan', 'r', '$cfg')",
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ($err, sim_stop_attempts($plan));
}

sub stop_ok
{
	my ($plan, $cfg, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		"SELECT merchant_sign_plan_no FROM wxpay_stop_sign_plan('$plan', 'r', '$cfg')"
	) eq $plan;
}

# ---- sealed before written ----
$node->safe_psql('postgres', config_insert_from_files_sql(name => 'default'));
$node->safe_psql('postgres',
	config_insert_from_files_sql(
		name => 'k_cert',
		mchid => '1900000002',
		wechatpay_public_key_id => undef,
		wechatpay_public_key => undef));

my $sealed_re = qr/^wxsealed:v1:$fp{k1}:[A-Za-z0-9+\/=]+$/;
for my $cfg (qw(default k_cert))
{
	for my $col (qw(private_key apiv3_key))
	{
		like(
			$node->safe_psql('postgres',
				"SELECT $col FROM wxpay_config WHERE name = '$cfg'"),
			$sealed_re, "$cfg.$col is stored sealed under the root key");
	}
}

# ---- the key users open them ----
ok(stop_ok('k22-stop', 'default'), 'a stop signs with the sealed private key');
is( $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE ok) FROM wxpay_stop_sign_plans(ARRAY['k22-batch-1', 'k22-batch-2'], 'r', 'default')"),
	'2', 'a batch too');
is( $node->safe_psql('postgres',
		"SELECT sign_state FROM wxpay_query_sign_plan('k22-query', 'default')"),
	'SIGNED', 'a query too');
is( $node->safe_psql('postgres',
		"SELECT ok FROM wxpay_check_config('default') WHERE check_name = 'keys_at_rest'"),
	't', 'wxpay_check_config: keys_at_rest true');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM wxpay_check_config('default') WHERE NOT ok"),
	'0', 'wxpay_check_config: every row ok with sealed keys');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM wxpay_platform_certificate WHERE config_name = 'k_cert'"),
	'the queue worker refreshed the certificates with the sealed APIv3 key');
is( $node->safe_psql('postgres',
		"SELECT count(*) > 0 FROM wxpay_refresh_platform_certificates('k_cert')"),
	't', 'wxpay_refresh_platform_certificates() opens the sealed APIv3 key');
is( $node->safe_psql('postgres',
		"SELECT sign_state FROM wxpay_query_sign_plan('k22-query-c', 'k_cert')"),
	'SIGNED', 'a certificate-mode config works with sealed keys');
$node->safe_psql('postgres',
	"SELECT wxpay_stop_sign_plan_async('k22-q1', 'r', 'default')");
ok( $node->poll_query_until('postgres',
		"SELECT state = 'succeeded' FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'k22-q1'"),
	'the queue worker stops with the sealed private key');

# ---- nothing of either key at rest ----
$node->safe_psql('postgres', 'CHECKPOINT');
my @found;
my $nfiles = 0;
find(
	{
		no_chdir => 1,
		wanted => sub {
			return unless -f $_;
			my $f = $_;
			open my $fh, '<:raw', $f or return;
			local $/;
			my $data = <$fh>;
			close $fh;
			$nfiles++;
			push @found, "$f" if leaks($data // '');
		}
	},
	$node->data_dir);
ok($nfiles > 100, "searched the data directory ($nfiles files)");
is_deeply(\@found, [], 'no key material in the data directory, WAL included');

my $dump = "$dir/dump.sql";
command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dump ],
	'pg_dump runs');
my $dumped = slurp_file($dump);
like($dumped, qr/wxsealed:v1:$fp{k1}:/, 'the dump carries the sealed values');
is_deeply([ leaks($dumped) ], [], 'no key material in the dump');

$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dump ],
	'the dump restores into another database');
like(
	$node->safe_psql('restored', "SELECT private_key FROM wxpay_config WHERE name = 'default'"),
	$sealed_re, 'restored as sealed');
ok(stop_ok('k22-restored', 'default', 'restored'),
	'the restored database stops with the same root key');

# ---- a sealed value moved to another row or column does not open ----
$node->safe_psql('postgres', config_insert_from_files_sql(name => 'k_move'));
$node->safe_psql('postgres',
	"UPDATE wxpay_config SET private_key = (SELECT private_key FROM wxpay_config WHERE name = 'default') WHERE name = 'k_move'"
);
my ($err, $n) = failed_stop('k22-moved-row', 'k_move');
like($err, qr/WX001.*could not open the sealed private_key of wxpay configuration "k_move".*does not open for this configuration and column/s,
	'a sealed value copied from another row does not open');
is($n, 0, 'nothing sent');
$node->safe_psql('postgres',
	"UPDATE wxpay_config SET private_key = apiv3_key WHERE name = 'k_move'");
($err, $n) = failed_stop('k22-moved-col', 'k_move');
like($err, qr/WX001.*does not open for this configuration and column/s,
	'a sealed value copied from another column does not open');
is($n, 0, 'nothing sent');
$node->safe_psql('postgres', "DELETE FROM wxpay_config WHERE name = 'k_move'");

# a rename re-seals under the new name
$node->safe_psql('postgres', config_insert_from_files_sql(name => 'k_ren'));
$node->safe_psql('postgres', "UPDATE wxpay_config SET name = 'k_ren2' WHERE name = 'k_ren'");
ok(stop_ok('k22-renamed', 'k_ren2'), 'a renamed config opens its re-sealed keys');

# ---- a wrong root key ----
set_keys('k2');
($err, $n) = failed_stop('k22-wrong', 'default');
like($err, qr/WX001.*could not open the sealed private_key of wxpay configuration "default".*sealed under the root key with fingerprint $fp{k1}; the server's root key has fingerprint $fp{k2}/s,
	'wrong root key: WX001 naming both fingerprints');
is($n, 0, 'wrong root key: nothing sent');
like(
	$node->safe_psql('postgres',
		"SELECT ok::text || ' ' || detail FROM wxpay_check_config('default') WHERE check_name IN ('private_key', 'keys_at_rest') ORDER BY check_name"),
	qr/^false .*sealed under root key $fp{k1}, not under the server's root key $fp{k2}.*\nfalse private_key is sealed and cannot be opened/s,
	'wxpay_check_config reports the wrong root key');

# the enqueue opens the keys too (it checks the config), so the request is
# queued under the right key and committed after the wrong one arrived
my (undef, undef, $enq_err) = $node->psql('postgres',
	"SELECT wxpay_stop_sign_plan_async('k22-q-refused', 'r', 'default')");
like($enq_err, qr/could not open the sealed private_key/,
	'wrong root key: the enqueue is refused');
set_keys('k1');
my $s = $node->background_psql('postgres');
$s->query_safe('BEGIN');
$s->query_safe("SELECT wxpay_stop_sign_plan_async('k22-q-wrong', 'r', 'default')");
set_keys('k2');
my $offset = -s $node->logfile;
$s->query_safe('COMMIT');
$s->quit;
ok( $node->wait_for_log(
		qr/WARNING:  stop requests of wxpay configuration "default" wait: could not open the sealed private_key/,
		$offset),
	'the worker says why the requests wait');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'queued' AND attempts = 0 AND error_code IS NULL FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'k22-q-wrong'"),
	'wrong root key: the request is queued again, no attempt counted, not failed (wxpay.max_attempts = 1)');
is(sim_stop_attempts('k22-q-wrong'), 0, 'wrong root key: the worker sent nothing');
set_keys('k1');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'succeeded' FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'k22-q-wrong'"),
	'with the right root key back the request is sent');
is(sim_stop_attempts('k22-q-wrong'), 1, 'once');

# ---- no root key, a failing command, a malformed key ----
set_keys(undef);
($err, $n) = failed_stop('k22-none', 'default');
like($err, qr/WX001.*sealed under the root key with fingerprint $fp{k1}; the server has no root key/s,
	'no root key: WX001 naming the sealing key');
is($n, 0, 'no root key: nothing sent');

set_keys('fail');
($err, $n) = failed_stop('k22-fail', 'default');
like($err, qr/WX001.*could not open the sealed private_key of wxpay configuration "default".*The command of wxpay.root_key_command failed: child process exited with exit code 3/s,
	'a failing command: WX001');
like(
	$node->safe_psql('postgres',
		"SELECT ok::text || ' ' || detail FROM wxpay_check_config('default') WHERE check_name IN ('private_key', 'keys_at_rest') ORDER BY check_name"),
	qr/^false The root key cannot be obtained: The command of wxpay.root_key_command failed.*\nfalse private_key is sealed and cannot be opened: The command/s,
	'a failing command: wxpay_check_config reports it as rows, no error');
my ($upd) = $node->psql('postgres', "UPDATE wxpay_config SET base_url = base_url WHERE name = 'k_cert'");
is($upd, 0, 'a failing command: an UPDATE leaving the sealed keys as they are still works');
my (undef, undef, $ins_err) = $node->psql('postgres', config_insert_from_files_sql(name => 'k_nokey'),
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($ins_err, qr/WX001.*could not obtain the wxpay root key.*failed/s,
	'a failing command: a new key is refused, not stored in plaintext');
is($n, 0, 'a failing command: nothing sent');

set_keys('bad');
($err, $n) = failed_stop('k22-bad', 'default');
like($err, qr/WX001.*could not open the sealed private_key.*printed something other than 64 hexadecimal digits/s,
	'a malformed key: WX001');
unlike($err, qr/NOTAKEY/, 'the command output is not quoted');
is($n, 0, 'a malformed key: nothing sent');

# ---- plaintext rows: stored without a root key, and from 0.3.0 ----
set_keys(undef);
$node->safe_psql('postgres', config_insert_from_files_sql(name => 'k_plain'));
like(
	$node->safe_psql('postgres', "SELECT private_key FROM wxpay_config WHERE name = 'k_plain'"),
	qr/^-----BEGIN/, 'without a root key keys are stored as given');
is( $node->safe_psql('postgres',
		"SELECT ok IS NULL AND detail LIKE 'No root key:%Set wxpay.root_key_command%' FROM wxpay_check_config('k_plain') WHERE check_name = 'keys_at_rest'"),
	't', 'keys_at_rest is NULL with a recommendation without a root key');

$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('upgraded', "CREATE EXTENSION wxpay_signplan VERSION '0.3.0'");
$node->safe_psql('upgraded', config_insert_from_files_sql(name => 'default'));
$node->safe_psql('upgraded', 'ALTER EXTENSION wxpay_signplan UPDATE');

set_keys('k1');
ok(stop_ok('k22-plain', 'k_plain'), 'a plaintext config still works with a root key set');
ok(stop_ok('k22-upgraded', 'default', 'upgraded'),
	'a plaintext config from 0.3.0 works after the upgrade');
is( $node->safe_psql('postgres',
		"SELECT ok::text || ' ' || detail FROM wxpay_check_config('k_plain') WHERE check_name = 'keys_at_rest'"
	) =~ /^false .*plaintext.*wxpay_seal_config/ ? 1 : 0,
	1, 'keys_at_rest false with a hint for plaintext keys');
is($node->safe_psql('upgraded', 'SELECT wxpay_seal_config()'),
	'2', 'wxpay_seal_config() seals the upgraded plaintext config');
is($node->safe_psql('postgres', 'SELECT wxpay_seal_config()'),
	'2', 'wxpay_seal_config() seals the plaintext row only');
like(
	$node->safe_psql('postgres', "SELECT apiv3_key FROM wxpay_config WHERE name = 'k_plain'"),
	$sealed_re, 'k_plain is sealed now');
ok(stop_ok('k22-sealed-later', 'k_plain'), 'and works');
ok(stop_ok('k22-upgraded-sealed', 'default', 'upgraded'), 'the upgraded one too');

# ---- rotation ----
set_keys('k2', 'k1');
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM wxpay_config');
ok(stop_ok('k22-rotating', 'default'), 'during a rotation the previous key opens');
is($node->safe_psql('postgres', 'SELECT wxpay_seal_config()'),
	2 * $rows, 'wxpay_seal_config() re-seals every value under the new key');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM wxpay_config WHERE private_key LIKE 'wxsealed:v1:$fp{k2}:%' AND apiv3_key LIKE 'wxsealed:v1:$fp{k2}:%'"),
	$rows, 'every row is sealed under the new key');
is($node->safe_psql('postgres', 'SELECT wxpay_seal_config()'), '0',
	'a second call has nothing to do');
set_keys('k2');
ok(stop_ok('k22-rotated', 'default'), 'the new key alone opens them');
$node->safe_psql('postgres', 'CREATE ROLE regress_k22');
my ($ret) = $node->psql('postgres', 'SET ROLE regress_k22; SELECT wxpay_seal_config()');
isnt($ret, 0, 'wxpay_seal_config() is for the owner only');

# ---- a physical standby: the same root key works, another fails ----
$node->backup('k22_backup');
my $standby = PostgreSQL::Test::Cluster->new('keys_at_rest_standby');
$standby->init_from_backup($node, 'k22_backup', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
like($standby->safe_psql('postgres', "SELECT private_key FROM wxpay_config WHERE name = 'default'"),
	qr/^wxsealed:v1:$fp{k2}:/, 'the standby holds the sealed values');
is( $standby->safe_psql('postgres',
		"SELECT sign_state FROM wxpay_query_sign_plan('k22-standby', 'default')"),
	'SIGNED', 'the standby with the same root key command opens them');
$standby->append_conf('postgresql.auto.conf', "wxpay.root_key_command = '$cmd{k1}'\n");
$standby->reload;
$standby->poll_query_until('postgres',
	"SELECT current_setting('wxpay.root_key_command') = '$cmd{k1}'")
  or die "the standby's setting did not arrive";
my (undef, undef, $sb_err) = $standby->psql('postgres',
	"SELECT sign_state FROM wxpay_query_sign_plan('k22-standby-wrong', 'default')",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($sb_err, qr/WX001.*sealed under the root key with fingerprint $fp{k2}; the server's root key has fingerprint $fp{k1}/s,
	'the standby with another root key: WX001 naming both');
$standby->stop;

# ---- a root key command that does not answer ----
# Its script and its sleep carry markers (the script's name, the sleep's
# length) so that /proc shows whether anything of it is left; the script
# leaves a file saying it ran.  The certificate refresh is turned off so
# that no background process runs it unasked.
my $hang_ran = "$dir/k22hang.ran";
$cmd{hang} = script('k22hang.sh', "echo \$\$ > '$hang_ran'\nsleep 10221\nexit 0");

# processes of the hanging command: its script or its sleep
sub hang_procs
{
	my $n = 0;
	for my $f (glob '/proc/[0-9]*/cmdline')
	{
		open my $fh, '<:raw', $f or next;
		local $/;
		my $c = <$fh> // '';
		close $fh;
		$n++ if $c =~ /k22hang\.sh|sleep\x0010221/;
	}
	return $n;
}

# zombies whose parent is $pid
sub zombies_of
{
	my ($pid) = @_;
	my $n = 0;
	for my $f (glob '/proc/[0-9]*/stat')
	{
		open my $fh, '<', $f or next;
		my $st = <$fh> // '';
		close $fh;
		$n++ if $st =~ /\) Z (\d+) / && $1 == $pid;
	}
	return $n;
}

# poll until nothing of the hanging command is left
sub hang_gone
{
	my $end = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $end)
	{
		return 1 if hang_procs() == 0;
		Time::HiRes::usleep(50_000);
	}
	diag(hang_procs() . ' process(es) of the hanging command left');
	return 0;
}

# ALTER SYSTEM SET each setting, reload, wait until a new session sees them
sub reconf
{
	my (%set) = @_;
	$node->safe_psql('postgres',
		join('', map { "ALTER SYSTEM SET $_ = '$set{$_}'; " } sort keys %set)
		  . 'SELECT pg_reload_conf()');
	$node->poll_query_until('postgres',
		'SELECT ' . join(' AND ', map { "current_setting('$_') = '$set{$_}'" } sort keys %set))
	  or die 'the settings did not arrive';
	return;
}

reconf(
	'wxpay.root_key_command' => $cmd{hang},
	'wxpay.root_key_command_timeout' => '1s',
	'wxpay.certificate_refresh_interval' => '0');

# (1) a stop fails with WX001 once the timeout has passed, nothing sent
my $hang_to = 0;
my (undef, undef, $hang_err) = $node->psql('postgres',
	"SELECT sign_state FROM wxpay_stop_sign_plan('k22-hang', 'r', 'default')",
	extra_params => [ '-v', 'VERBOSITY=verbose' ],
	timeout => $PostgreSQL::Test::Utils::timeout_default,
	timed_out => \$hang_to);
ok(!$hang_to, 'a hanging command: the stop returns');
like($hang_err, qr/WX001.*could not open the sealed private_key of wxpay configuration "default".*The command of wxpay.root_key_command did not answer within 1 s; it was stopped/s,
	'a hanging command: WX001 after wxpay.root_key_command_timeout');
is(sim_stop_attempts('k22-hang'), 0, 'a hanging command: nothing sent');
ok(hang_gone(), 'a hanging command: killed at the timeout, nothing of it left');

# (2) a cancel stops the wait at once: statement_timeout, then
# pg_cancel_backend once the command provably runs; each 57014, the command
# killed and reaped, the session usable
reconf('wxpay.root_key_command_timeout' => '5min');
my $hs = $node->background_psql(
	'postgres',
	on_error_stop => 0,
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
my ($hs_pid) = $hs->query_safe('SELECT pg_backend_pid()') =~ /(\d+)/;
my (undef, $cancel_err) = bg_finish($hs,
	bg_send($hs, "SET statement_timeout = '500ms'; SELECT sign_state FROM wxpay_stop_sign_plan('k22-hang-timeout', 'r', 'default')"));
like($cancel_err, qr/ERROR:  57014: canceling statement due to statement timeout/,
	'a hanging command: statement_timeout cancels the call (57014)');
ok(hang_gone(), 'nothing of the command is left');

unlink $hang_ran;
my $tok = bg_send($hs,
	"SET statement_timeout = 0; SELECT sign_state FROM wxpay_stop_sign_plan('k22-hang-cancel', 'r', 'default')");
ok(session_wait_until($hs, 'the hanging command', sub { -e $hang_ran }),
	'the hanging command runs');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($hs_pid)");
(undef, $cancel_err) = bg_finish($hs, $tok);
like($cancel_err, qr/ERROR:  57014: canceling statement due to user request/,
	'a hanging command: pg_cancel_backend cancels the call (57014)');
ok(hang_gone(), 'a canceled command is killed, its sleep too');
is(zombies_of($hs_pid), 0, 'and reaped: no zombie left to the backend');
session_ok_query($hs, "SELECT 'usable'", 'usable', 'the session is usable after the cancels');
$hs->quit;
is(sim_stop_attempts('k22-hang-timeout') + sim_stop_attempts('k22-hang-cancel'),
	0, 'a canceled command: nothing sent');

# (3) the queue worker does not hang either: the request stays queued,
# unfailed, and is sent once after the command is fixed
reconf(
	'wxpay.root_key_command' => $cmd{k2},
	'wxpay.root_key_command_timeout' => '1s');
$s = $node->background_psql('postgres');
$s->query_safe('BEGIN');
$s->query_safe("SELECT wxpay_stop_sign_plan_async('k22-q-hang', 'r', 'default')");
reconf('wxpay.root_key_command' => $cmd{hang});
unlink $hang_ran;
$offset = -s $node->logfile;
$s->query_safe('COMMIT');
$s->quit;
ok( $node->wait_for_log(
		qr/WARNING:  stop requests of wxpay configuration "default" wait: could not open the sealed private_key[^\n]*\n[^\n]*DETAIL:  The command of wxpay.root_key_command did not answer within 1 s/,
		$offset),
	'a hanging command: the worker gives up on it after the timeout and says why');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'queued' AND attempts = 0 AND error_code IS NULL FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'k22-q-hang'"),
	'a hanging command: the request waits queued, no attempt counted, not failed');
is(sim_stop_attempts('k22-q-hang'), 0, 'a hanging command: the worker sent nothing');
reconf('wxpay.root_key_command' => $cmd{k2});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'succeeded' FROM wxpay_stop_request WHERE merchant_sign_plan_no = 'k22-q-hang'"),
	'with the command fixed the worker sends the request');
is(sim_stop_attempts('k22-q-hang'), 1, 'once');
ok(hang_gone(), "nothing of the worker's hanging commands is left");
is( List::Util::sum(0, map { zombies_of($_) } split /\n/, worker_pid($node)),
	0, 'no zombie left to the workers');

# ---- nothing in the log ----
$node->stop;
my $log = slurp_file($node->logfile);
like($log, qr/DEBUG5|DEBUG:/, 'the log was written at debug levels');
is_deeply([ leaks($log) ], [], 'no key material in the server log at debug5');
unlike($log, qr/NOTAKEY/, 'nor the output of the malformed command');

done_testing();
