
# 041_failover.pl: the backup domain (wxpay_config.backup_base_url).
#
# A second simulator plays the backup domain, so that what reaches it can be
# counted apart from the primary.
#
#  - the primary's port is closed, its name does not resolve, or its TLS
#    handshake never completes (connect timeout): the same signed request
#    goes to the backup, which verifies it and answers; stop and query;
#  - the backup gets what is left of wxpay.request_timeout, not a new one;
#  - the primary presents a bad certificate: no failover (WX004);
#  - anything after the request may have been sent (stall, reset, 5xx, an
#    answer failing verification): never to the backup;
#  - both down: WX004 naming both; backup_base_url NULL: no failover;
#  - a cancel while the backup is being asked works as ever;
#  - later calls reuse the kept-alive connection to the backup.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $closed = refusing_port();
my $closed2 = refusing_port();
my $silent = silent_port();    # accepts TCP, never says a word

my $closed_url = 'https://127.0.0.1:' . $closed->sockport;
my $closed2_url = 'https://127.0.0.1:' . $closed2->sockport;
my $silent_url = 'https://127.0.0.1:' . $silent->sockport;

my $backup = start_sim();
my $expired = start_sim(tls_cert => 'server_expired');

my $node = new_node('failover');
my %configs = (
	fo_refused => { base_url => $closed_url, backup_base_url => $backup->{url} },
	fo_dns => { base_url => 'https://wxpay-fault.invalid', backup_base_url => $backup->{url} },
	fo_silent => { base_url => $silent_url, backup_base_url => $backup->{url} },
	fo_expired => { base_url => $expired->{url}, backup_base_url => $backup->{url} },
	fo_sent => { backup_base_url => $backup->{url} },
	fo_both => { base_url => $closed_url, backup_base_url => $closed2_url },
	fo_none => { base_url => $closed_url },
);
$node->safe_psql('postgres', config_insert_sql(name => $_, %{ $configs{$_} }))
  for sort keys %configs;

my $s = $node->background_psql('postgres', on_error_stop => 0);
$s->query_safe('\set VERBOSITY verbose');
my $E = qr/^(?:psql:<stdin>:\d+: )?ERROR:  /m;

sub run_sql { return bg_finish($s, bg_send($s, $_[0])); }

sub stop_sql
{
	my ($plan, $cfg) = @_;
	return "SELECT merchant_sign_plan_no, sign_state FROM wxpay_stop_sign_plan('$plan', 'failover', '$cfg')";
}

sub backup_attempts { return ctl_get_at($backup, '/stats')->{stop_attempts}{ $_[0] } // 0; }
sub backup_requests { return ctl_get_at($backup, '/stats')->{requests}; }

# ---- the primary cannot be reached: the backup answers ----
for my $case (
	[ 'fo_refused', 'refused', '' ],
	[ 'fo_dns', 'dns', '' ],
	[ 'fo_silent', 'connect timeout', "SET wxpay.connect_timeout = '300ms';\n" ])
{
	my ($cfg, $what, $set) = @$case;
	my $plan = "t41-$cfg";
	my ($out, $err) = run_sql($set . stop_sql($plan, $cfg));
	is("$out$err", "$plan|SIGN_PLAN_CANCEL",
		"$what: the stop succeeds through the backup");
	is(backup_attempts($plan), 1, "$what: the backup got the request once");
	is(sim_stats()->{stop_attempts}{$plan} // 0, 0, "$what: the primary simulator got nothing");
	my ($req) = grep { $_->{path} eq plan_path($plan, 'stop') } @{ ctl_get_at($backup, '/requests') };
	ok($req && $req->{verified}, "$what: the backup verified the signed request");

	($out, $err) = run_sql(
		"SELECT merchant_sign_plan_no, cancel_sign_type FROM wxpay_query_sign_plan('$plan', '$cfg')");
	is("$out$err", "$plan|MERCHANT", "$what: the query succeeds through the backup");
	run_sql('RESET wxpay.connect_timeout') if $set;
}
ok($node->log_contains(
		qr/LOG:  sent the stop of sign plan "t41-fo_refused" to the backup domain \Q$backup->{url}\E because \Q$closed_url\E could not be reached/),
	'the server log says the request went to the backup domain');

# ---- partner mode (sub_mchid): the same, on the partner endpoints ----
{
	my $sub = '1230000301';
	my $plan = 't41-partner';
	my ($out, $err) = run_sql(
		"SELECT merchant_sign_plan_no, sign_state, sub_mchid FROM wxpay_stop_sign_plan('$plan', 'failover', 'fo_refused', '$sub')");
	is("$out$err", "$plan|SIGN_PLAN_CANCEL|$sub", 'partner: the stop succeeds through the backup');
	is(backup_attempts("$sub:$plan"), 1, 'partner: the backup got the sub-merchant\'s stop once');
	my ($req) = grep {
		$_->{path} eq "/v3/payscore/sign-plan/partner/user-sign-plans/merchant-sign-plan-no/$plan/stop"
	} @{ ctl_get_at($backup, '/requests') };
	ok($req && $req->{verified} && $req->{body} =~ /"sub_mchid":"$sub"/,
		'partner: the backup verified the signed partner request');
	($out, $err) = run_sql(
		"SELECT cancel_sign_type, sub_mchid FROM wxpay_query_sign_plan('$plan', 'fo_refused', '$sub')");
	is("$out$err", "MERCHANT|$sub", 'partner: the query (with its query string) succeeds through the backup');
	ok($node->log_contains(
			qr/LOG:  sent the stop of sign plan "$plan" of sub-merchant "$sub" to the backup domain/),
		'partner: the server log names the sub-merchant');

	# once sent, never to the backup
	my $before = backup_requests();
	($out, $err) = run_sql(
		"SELECT sign_state FROM wxpay_stop_sign_plan('fault-stop_then_reset-t41p', 'r', 'fo_sent', '$sub')");
	like($err, qr/${E}WX003: could not stop sign plan "fault-stop_then_reset-t41p" of sub-merchant "$sub"$/m,
		'partner: a reset after sending is WX003');
	is(backup_requests() - $before, 0, 'partner: the backup got nothing');
}

# ---- the backup gets what is left of the request timeout ----
{
	my $plan = 'fault-stall-t41-budget';
	my ($out, $err) = run_sql(
		"SET wxpay.connect_timeout = '300ms'; SET wxpay.request_timeout = '600ms';\n"
		  . stop_sql($plan, 'fo_silent')
		  . ";\nRESET wxpay.connect_timeout; RESET wxpay.request_timeout");
	like($err, qr/${E}WX003: could not stop sign plan "$plan"$/m,
		'budget: a stall at the backup is outcome unknown');
	like($err, qr/The request went to the backup domain \Q$backup->{url}\E because connecting to \Q$silent_url\E failed\./,
		'budget: the detail says the request went to the backup');
	my ($ms) = $err =~ /Operation timed out after (\d+) milliseconds/;
	ok(defined $ms && $ms < 600,
		'budget: the backup got less than the whole request timeout (' . ($ms // 'none') . ' ms)');
	is(backup_attempts($plan), 1, 'budget: the backup got the request once');
}

# ---- a certificate problem is not "unreachable": no failover ----
{
	my $before = backup_requests();
	my ($out, $err) = run_sql(stop_sql('t41-expired', 'fo_expired'));
	like($err, qr/${E}WX004: could not stop sign plan "t41-expired"$/m,
		'bad certificate: WX004');
	# libcurl's words for it differ by version ("SSL certificate problem:
	# certificate has expired", "SSL certificate OpenSSL verify result:
	# certificate has expired (10)"): what the detail must say is where
	# nothing was sent and that the server's certificate has expired
	like($err, qr/^DETAIL:  Nothing was sent to \Q$expired->{url}\E: [^\n]*\bcertificate\b[^\n]*\bexpired\b[^\n]*\.$/m,
		'bad certificate: the detail names the primary and the certificate problem');
	unlike($err, qr/backup/, 'bad certificate: no word of the backup');
	is(backup_requests() - $before, 0, 'bad certificate: the backup got nothing');
	is(ctl_get_at($expired, '/stats')->{requests}, 0, 'bad certificate: the primary got no request');
}

# ---- once the request may have left: never to the backup ----
for my $f (
	[ 'stall', 'WX003', "SET wxpay.request_timeout = '300ms';\n" ],
	[ 'reset', 'WX003', '' ],
	[ 'stop_then_reset', 'WX003', '' ],
	[ 'http500', 'WX003', '' ],
	[ 'http503_html', 'WX003', '' ],
	[ 'bad_signature', 'WX003', '' ],
	[ 'http429', 'WX002', '' ])
{
	my ($fault, $state, $set) = @$f;
	my $plan = "fault-$fault-t41";
	my $before = backup_requests();
	my ($out, $err) = run_sql($set . stop_sql($plan, 'fo_sent'));
	run_sql('RESET wxpay.request_timeout') if $set;
	like($err, qr/${E}$state: could not stop sign plan "$plan"$/m, "$fault: $state");
	is(sim_stats()->{stop_attempts}{$plan} // 0, 1, "$fault: the primary got the request once");
	is(backup_requests() - $before, 0, "$fault: the backup got nothing");
}

# ---- both down; failover disabled ----
{
	my ($out, $err) = run_sql(stop_sql('t41-both', 'fo_both'));
	like($err, qr/${E}WX004: could not stop sign plan "t41-both"$/m, 'both down: WX004');
	like($err,
		qr/^DETAIL:  Nothing was sent to \Q$closed_url\E: .+\. Nothing was sent to the backup domain \Q$closed2_url\E either: .+\.$/m,
		'both down: the detail names both');
	like($err, qr/^HINT:  Nothing reached WeChat Pay, so retrying is safe\.$/m,
		'both down: retrying is safe');

	($out, $err) = run_sql(stop_sql('t41-none', 'fo_none'));
	like($err, qr/${E}WX004: could not stop sign plan "t41-none"$/m, 'no backup: WX004');
	like($err, qr/^DETAIL:  Nothing was sent to \Q$closed_url\E: [^\n]*\.$/m,
		'no backup: the detail names the primary');
	unlike($err, qr/backup/, 'no backup: no word of a backup');
}

# ---- each URL with its own error; refresh and check fail over too ----
{
	my ($p1, $p2) = ($closed->sockport, $closed2->sockport);
	# each error names its own port, in libcurl's words ("127.0.0.1 port
	# N" up to libcurl 7, "127.0.0.1:N" in 8)
	my $both = qr/Nothing was sent to \Q$closed_url\E: [^\n]*?(?:port |:)$p1\b[^\n]*?\. Nothing was sent to the backup domain \Q$closed2_url\E either: [^\n]*?(?:port |:)$p2\b[^\n]*?\./;
	my ($out, $err) = run_sql(stop_sql('t41-both2', 'fo_both'));
	like($err, qr/^DETAIL:  $both$/m, 'both down: each URL with its own error');

	$node->safe_psql('postgres',
		certmode_config_sql(
			name => $_->[0],
			base_url => $closed_url,
			backup_base_url => $_->[1]))
	  for ([ 'fo_certs', $backup->{url} ], [ 'fo_certs_both', $closed2_url ]);

	($out, $err) = run_sql(
		"SELECT count(*) > 0 FROM wxpay_refresh_platform_certificates('fo_certs')");
	is("$out$err", 't', 'refresh: the certificates come from the backup');
	ok($node->log_contains(
			qr/LOG:  sent the platform certificate download of wxpay configuration "fo_certs" to the backup domain \Q$backup->{url}\E because \Q$closed_url\E could not be reached/),
		'refresh: the server log tells the failover');

	($out, $err) = run_sql(
		"SELECT count(*) FROM wxpay_refresh_platform_certificates('fo_certs_both')");
	like($err, qr/${E}WX004: could not refresh the platform certificates of wxpay configuration "fo_certs_both"$/m,
		'refresh, both down: WX004');
	like($err, qr/^DETAIL:  $both$/m, 'refresh, both down: each URL with its own error');

	($out, $err) = run_sql(
		"SELECT ok, detail FROM wxpay_check_config('fo_refused', true) WHERE check_name = 'live_request'");
	like($out, qr/^t\|WeChat Pay at \Q$backup->{url}\E accepted the request's signature/,
		'check: the live row names the backup it went to');
	ok($node->log_contains(
			qr/LOG:  sent the live check of wxpay configuration "fo_refused" to the backup domain \Q$backup->{url}\E because \Q$closed_url\E could not be reached/),
		'check: the server log tells the failover');

	($out, $err) = run_sql(
		"SELECT ok, detail FROM wxpay_check_config('fo_both', true) WHERE check_name = 'live_request'");
	like($out, qr/^f\|$both Check base_url/, 'check, both down: each URL with its own error');
}

# ---- a cancel while the backup is being asked ----
{
	my $plan = 'fault-stall-t41-cancel';
	my ($out, $err) = run_sql("SET statement_timeout = '300ms';\n"
		  . stop_sql($plan, 'fo_refused') . ";\nRESET statement_timeout");
	like($err, qr/${E}57014: canceling statement due to statement timeout$/m,
		'cancel: statement_timeout ends a call waiting on the backup');
	is(backup_attempts($plan), 1, 'cancel: the request had reached the backup');
}

# ---- the connection to the backup is kept alive ----
{
	my $before = ctl_get_at($backup, '/stats')->{tls_connections};
	my @plans = map { "t41-ka-$_" } 1 .. 3;
	my ($out, $err) = run_sql(join(";\n", map { stop_sql($_, 'fo_refused') } @plans));
	is("$out$err", join("\n", map { "$_|SIGN_PLAN_CANCEL" } @plans),
		'keep-alive: three stops through the backup');
	is(ctl_get_at($backup, '/stats')->{tls_connections} - $before,
		1, 'keep-alive: over one new TLS connection to the backup');
}

$s->quit;
stop_sim($_) for ($backup, $expired);
$node->stop;
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no backend crashed');
done_testing();
