
# test/t/WxpayTest.pm: helpers shared by the TAP tests of wxpay_signplan.
#
# The harness (test/run.sh) exports:
#   WXPAY_PKI          directory made by test/pki.sh
#   WXPAY_SIM_URL      https://127.0.0.1:PORT, the simulator's API
#   WXPAY_SIM_CONTROL  http://127.0.0.1:CPORT, its control server
#
# The simulator is shared by every test of a run: never POST /reset, use
# plan numbers unique to the test file, and compare counters before/after.

package WxpayTest;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use Time::HiRes ();
use IO::Socket::INET;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(
  pki_file sim_url new_node queue_test_node queue_test_conf config_insert_sql certmode_config_sql
  config_insert_from_files_sql dq
  ctl_get ctl_post sim_stats sim_requests_for_path plan_path
  clear_session bg_send bg_finish session_ok_query session_wait_until
  sim_stop_attempts sim_stops sim_count sim_fault sim_held wait_sim_held
  enqueue_stop wait_stop_request worker_pid set_conf
  refusing_port silent_port poll_until log_since count_of
  start_sim stop_sim ctl_get_at ctl_post_at
);

BEGIN
{
	for my $v (qw(WXPAY_PKI WXPAY_SIM_URL WXPAY_SIM_CONTROL))
	{
		BAIL_OUT("$v is not set: run the TAP tests through test/run.sh")
		  unless defined $ENV{$v} && $ENV{$v} ne '';
	}
}

# psql talks UTF-8 to the server whatever the locale of the test process.
$ENV{PGCLIENTENCODING} = 'UTF8';

my $http = HTTP::Tiny->new(timeout => 30, keep_alive => 0);
my $json = JSON::PP->new->utf8->canonical;

sub sim_url { return $ENV{WXPAY_SIM_URL}; }

# $node's server log from byte $offset on.
sub log_since
{
	my ($node, $offset) = @_;
	return substr(PostgreSQL::Test::Utils::slurp_file($node->logfile), $offset);
}

# How many times $re matches in $text.
sub count_of
{
	my ($re, $text) = @_;
	my $n = () = $text =~ /$re/g;
	return $n;
}

# Poll until $cond (a code ref) is true, as poll_query_until polls the
# server; false after PostgreSQL::Test::Utils::timeout_default.
sub poll_until
{
	my ($cond) = @_;
	my $end = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;
	while (Time::HiRes::time() < $end)
	{
		return 1 if $cond->();
		Time::HiRes::usleep(50_000);
	}
	return 0;
}

# Contents of a PKI file (bytes); chomp => 1 strips the trailing newline.
sub pki_file
{
	my ($name, %opt) = @_;
	my $s = slurp_file("$ENV{WXPAY_PKI}/$name");
	chomp $s if $opt{chomp};
	return $s;
}

# A dollar-quoted SQL literal.  The tag cannot occur in PEM text, hex or a
# URL, and the value is checked anyway.
sub dq
{
	my ($s) = @_;
	my $tag = '$wxpay_lit$';
	die "value contains the dollar-quote tag" if index($s, $tag) >= 0;
	return $tag . $s . $tag;
}

# INSERT for a public-key mode merchant (mchid 1900000001); %over replaces
# columns (name, serial_no, private_key, base_url, ...).  undef is NULL.
# backup_base_url is NULL unless given: a test must never fail over to
# WeChat Pay's real backup domain (the column's default beside its main
# domain).
sub config_insert_sql
{
	my (%over) = @_;
	my %c = (
		name => 'default',
		mchid => '1900000001',
		serial_no => pki_file('merchant_serial.txt', chomp => 1),
		private_key => pki_file('merchant.key'),
		wechatpay_public_key_id => pki_file('pub_key_id.txt', chomp => 1),
		wechatpay_public_key => pki_file('platform_pub.pem'),
		base_url => $ENV{WXPAY_SIM_URL},
		ca_cert => pki_file('ca.crt'),
		backup_base_url => undef,
		%over);
	my @cols = sort keys %c;
	return
	    'INSERT INTO wxpay_config ('
	  . join(', ', @cols)
	  . ') VALUES ('
	  . join(', ', map { defined $c{$_} ? dq($c{$_}) : 'NULL' } @cols) . ')';
}

# The INSERT of a platform-certificate-mode merchant (mchid 1900000002, an
# APIv3 key, no WeChat Pay public key); %over as for config_insert_sql.
sub certmode_config_sql
{
	my (%over) = @_;
	return config_insert_sql(
		mchid => '1900000002',
		wechatpay_public_key_id => undef,
		wechatpay_public_key => undef,
		apiv3_key => pki_file('apiv3_key.txt', chomp => 1),
		%over);
}

# The same INSERT with the secrets read by the server from the PKI files
# (pg_read_file, superuser), so that the statement text holds only file
# names: the way doc/security.md recommends when statements are logged.
# %files maps a column to a PKI file name (defaults: private_key from
# merchant.key, apiv3_key from apiv3_key.txt); %over as for
# config_insert_sql.
sub config_insert_from_files_sql
{
	my (%arg) = @_;
	my %files = (
		private_key => 'merchant.key',
		apiv3_key => 'apiv3_key.txt',
		%{ delete $arg{files} // {} });
	my %c = (
		name => 'default',
		mchid => '1900000001',
		serial_no => pki_file('merchant_serial.txt', chomp => 1),
		wechatpay_public_key_id => pki_file('pub_key_id.txt', chomp => 1),
		wechatpay_public_key => pki_file('platform_pub.pem'),
		base_url => $ENV{WXPAY_SIM_URL},
		ca_cert => pki_file('ca.crt'),
		%arg);
	my %expr = map { $_ => defined $c{$_} ? dq($c{$_}) : 'NULL' } keys %c;
	for my $col (keys %files)
	{
		my $path = "$ENV{WXPAY_PKI}/$files{$col}";
		# the APIv3 key file ends with a newline that is not part of the key
		$expr{$col} =
		  $col eq 'apiv3_key'
		  ? 'pg_catalog.btrim(pg_catalog.pg_read_file(' . dq($path) . "), E'\\n')"
		  : 'pg_catalog.pg_read_file(' . dq($path) . ')';
	}
	my @cols = sort keys %expr;
	return
	    'INSERT INTO wxpay_config ('
	  . join(', ', @cols)
	  . ') VALUES ('
	  . join(', ', map { $expr{$_} } @cols) . ')';
}

# A started cluster with the extension and the default config.
sub new_node
{
	my ($name, %over) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');
	$node->safe_psql('postgres', config_insert_sql(%over));
	return $node;
}

# The postgresql.conf lines of the queue tests: the library preloaded (every
# database with the extension served, no database named), with the settings they share (fast retries, no
# rate limit, 4 in flight, restart after a crash), then %set (a setting's
# name and its value as written in postgresql.conf; undef leaves it out).
sub queue_test_conf
{
	my (%set) = @_;
	my %conf = (
		shared_preload_libraries => "'wxpay_signplan'",
		'wxpay.retry_base_delay' => "'20ms'",
		'wxpay.retry_max_delay' => "'100ms'",
		'wxpay.reconcile_delay' => "'400ms'",
		'wxpay.rate_limit' => 0,
		'wxpay.worker_concurrency' => 4,
		restart_after_crash => 'on',
		%set);
	return join('', map { "$_ = $conf{$_}\n" } grep { defined $conf{$_} } sort keys %conf);
}

# A started cluster for the queue tests (queue_test_conf(%set)), the
# extension created with the default config.
sub queue_test_node
{
	my ($name, %set) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
	$node->append_conf('postgresql.conf', queue_test_conf(%set));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION wxpay_signplan');
	$node->safe_psql('postgres', config_insert_sql());
	return $node;
}

# ---- places that fail as a network can ----

# A socket bound to a port on 127.0.0.1 that refuses connections (bound,
# never listening: the port stays ours, so nothing else takes it meanwhile).
# Keep the returned socket alive as long as the port is used; ->sockport.
sub refusing_port
{
	my $sock = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Proto => 'tcp',
		ReuseAddr => 0) or die "cannot bind: $!";
	return $sock;
}

# A socket listening on 127.0.0.1 that completes the TCP handshake (the
# kernel does it for the listen backlog) but never says a word: a TLS
# handshake with it never completes.
sub silent_port
{
	my $sock = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Proto => 'tcp',
		Listen => 16) or die "cannot listen: $!";
	return $sock;
}

# ---- the queue ----

# Enqueues a stop of $plan through wxpay_stop_sign_plan_async in database
# db (default postgres) for config cfg (default 'default') with reason
# (default 'subscription ended'); returns the request's id.
sub enqueue_stop
{
	my ($node, $plan, %o) = @_;
	my $cfg = $o{cfg} // 'default';
	my $reason = $o{reason} // 'subscription ended';
	return $node->safe_psql($o{db} // 'postgres',
		"SELECT wxpay_stop_sign_plan_async('$plan', '$reason', '$cfg')");
}

# Waits (wxpay_wait_stop_request, timeout default 60s) until request $id is
# finished and returns its fields: state, attempts, http_status, error_code,
# request_id, cancel_sign_type, plan, unknown (outcome_unknown),
# error_message ('' for NULL).
sub wait_stop_request
{
	my ($node, $id, %o) = @_;
	my $timeout = $o{timeout} // '60s';
	my $out = $node->safe_psql(
		$o{db} // 'postgres', qq{
SELECT state, attempts, coalesce(http_status::text, ''),
       coalesce(error_code, ''), coalesce(request_id, ''),
       coalesce((result).cancel_sign_type, ''),
       coalesce((result).merchant_sign_plan_no, ''),
       coalesce(to_jsonb(r) ->> 'outcome_unknown', ''),
       coalesce(error_message, '')
  FROM wxpay_wait_stop_request($id, '$timeout') r});
	my @f = split /\|/, $out, 9;
	my %r;
	@r{qw(state attempts http_status error_code request_id cancel_sign_type plan unknown error_message)} = @f;
	return \%r;
}

# The pid of the queue worker serving $node's database ('' when none runs).
sub worker_pid
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'wxpay_signplan worker'");
}

# Runs $sql (ALTER SYSTEM ...) and reloads the configuration.
sub set_conf
{
	my ($node, $sql) = @_;
	$node->safe_psql('postgres', $sql);
	$node->reload;
	return;
}



# The shared simulator's control API (GET and POST with a JSON body); the
# _at forms talk to another simulator (start_sim's).
sub ctl_get { return ctl_get_at({ control => $ENV{WXPAY_SIM_CONTROL} }, @_); }
sub ctl_post { return ctl_post_at({ control => $ENV{WXPAY_SIM_CONTROL} }, @_); }

sub sim_stats { return ctl_get('/stats'); }

# How many stop requests for $plan reached the shared simulator, and how
# many of them stopped it.
sub sim_stop_attempts { return sim_stats()->{stop_attempts}{ $_[0] } // 0; }
sub sim_stops { return sim_stats()->{stops}{ $_[0] } // 0; }

# A counter of the simulator's /stats for $plan (stops, stop_attempts,
# queries, already_stopped, ...), from $stats if given (a snapshot), else now.
sub sim_count
{
	my ($what, $plan, $stats) = @_;
	return ($stats // sim_stats())->{$what}{$plan} // 0;
}

# Makes the simulator answer the next $times (default 1) requests for $plan
# with $fault (test/sim/README.md lists the faults).
sub sim_fault
{
	my ($plan, $fault, $times) = @_;
	ctl_post('/faults', { plan => $plan, fault => $fault, times => $times // 1 });
	return;
}

# The sequence numbers of the requests for $plan (of operation $op, if
# given) that the simulator holds now (the "hold" fault).
sub sim_held
{
	my ($plan, $op) = @_;
	return [ map { $_->{seq} }
		  grep { $_->{plan} eq $plan && (!defined $op || $_->{op} eq $op) }
		  @{ ctl_get('/held') } ];
}

# Polls until the simulator holds a request for $plan; true if it did within
# the default timeout.
sub wait_sim_held
{
	my ($plan, $op) = @_;
	my $end = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $end)
	{
		return 1 if @{ sim_held($plan, $op) };
		select(undef, undef, undef, 0.05);
	}
	Test::More::diag("the simulator never held a request of $plan");
	return 0;
}

# GET from the control server of another simulator instance (start_sim).
sub ctl_get_at
{
	my ($sim, $path) = @_;
	my $r = $http->get("$sim->{control}$path");
	die "control GET $sim->{control}$path failed: $r->{status} $r->{reason}"
	  unless $r->{success};
	return $json->decode($r->{content});
}

# POST to the control server of another simulator instance (start_sim).
sub ctl_post_at
{
	my ($sim, $path, $obj) = @_;
	my $r = $http->post(
		"$sim->{control}$path",
		{
			headers => { 'Content-Type' => 'application/json' },
			content => $json->encode($obj)
		});
	die "control POST $sim->{control}$path failed: $r->{status} $r->{reason} $r->{content}"
	  unless $r->{success};
	return $json->decode($r->{content});
}

# ---- extra simulator instances ----

# Start another simulator on its own ports with its own state, e.g.
# start_sim(tls_cert => 'server_expired').  Returns { url, control, ... };
# stop_sim() ends it (the test must, before it exits).
sub start_sim
{
	my (%opt) = @_;
	my $js = File::Spec->catfile(dirname(__FILE__), '..', 'sim', 'simulator.js');
	my @cmd = ('node', $js, '--pki', $ENV{WXPAY_PKI});
	push @cmd, '--tls-cert', $opt{tls_cert} if $opt{tls_cert};
	my $sim = { out => '', err => '' };
	$sim->{timer} = IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default);
	$sim->{h} = IPC::Run::start(\@cmd, '<', \undef, '>', \$sim->{out},
		'2>', \$sim->{err}, $sim->{timer});
	$sim->{h}->pump until $sim->{out} =~ /^READY port=(\d+) control=(\d+)$/m;
	$sim->{url} = "https://127.0.0.1:$1";
	$sim->{control} = "http://127.0.0.1:$2";
	$sim->{timer}->reset;
	return $sim;
}

sub stop_sim
{
	my ($sim) = @_;
	$sim->{h}->signal('TERM');
	$sim->{h}->finish;
	return;
}

# The logged /v3 requests (oldest first) whose path is exactly $path.
sub sim_requests_for_path
{
	my ($path) = @_;
	return grep { $_->{path} eq $path } @{ ctl_get('/requests') };
}

sub plan_path
{
	my ($plan_no, $op) = @_;
	my $p =
	  "/v3/payscore/sign-plan/user-sign-plans/merchant-sign-plan-no/$plan_no";
	$p .= '/stop' if ($op // 'stop') eq 'stop';
	return $p;
}

# ---- BackgroundPsql sessions ----

# BackgroundPsql::query() never clears stderr; do it before each query.
sub clear_session
{
	my ($s) = @_;
	$s->{stdout} = '';
	$s->{stderr} = '';
	return;
}

# A query that must succeed in background session $s: is() its output.
sub session_ok_query
{
	my ($s, $sql, $expect, $name) = @_;
	clear_session($s);
	my ($out, $failed) = $s->query($sql);
	is($failed ? "ERROR: $s->{stderr}" : $out, $expect, $name);
	return;
}

# Poll until $cond returns true, pumping background session $s so that an
# early error in it is seen; false (with a diag) on error or timeout.
sub session_wait_until
{
	my ($s, $what, $cond) = @_;
	my $end = Time::HiRes::time() + $PostgreSQL::Test::Utils::timeout_default;
	while (Time::HiRes::time() < $end)
	{
		return 1 if $cond->();
		$s->{run}->pump_nb;
		if ($s->{stderr} =~ /ERROR/)
		{
			diag("the session failed while waiting for $what: $s->{stderr}");
			return 0;
		}
		Time::HiRes::usleep(20_000);
	}
	diag("timed out waiting for $what");
	return 0;
}

# Send $sql to a background session without waiting for it; returns a
# token for bg_finish().  Works whether or not the statement fails.
sub bg_send
{
	my ($s, $sql) = @_;
	my $tok = ++$s->{wxpay_token};
	clear_session($s);
	# "\n;\n" ends a statement not ending with ";" (an empty one is harmless)
	$s->{stdin} .= "$sql\n;\n\\echo 'wxdone $tok'\n\\warn 'wxdone $tok'\n";
	$s->{run}->pump_nb;
	return $tok;
}

# Wait for the statement(s) sent as $tok to end; returns (stdout, stderr),
# the banner removed.
sub bg_finish
{
	my ($s, $tok) = @_;
	my $re = qr/wxdone $tok\n/;
	$s->{run}->pump_nb;
	until ($s->{stdout} =~ $re && $s->{stderr} =~ $re)
	{
		die "timed out waiting for statement $tok; stderr so far: $s->{stderr}"
		  if $s->{timeout}->is_expired;
		$s->{run}->pump;
	}
	my ($out, $err) = ($s->{stdout}, $s->{stderr});
	$out =~ s/\n?$re//;
	$err =~ s/$re//;
	clear_session($s);
	return ($out, $err);
}


# Each TAP file talks to a simulator of its own, started when the file loads
# this module and stopped when it ends: a file that changes the simulator's
# settings (latency, the signing certificate) or counts its requests never
# sees another file's, so TAP files can run at once (prove -j).  The run's
# shared simulator (test/run.sh's) serves the pg_regress files;
# WXPAY_SIM_SHARED=1 makes the TAP files use it too.
our $own_sim;
if (!$ENV{WXPAY_SIM_SHARED})
{
	$own_sim = start_sim();
	$ENV{WXPAY_SIM_URL} = $own_sim->{url};
	$ENV{WXPAY_SIM_CONTROL} = $own_sim->{control};
}

END
{
	local $?;
	stop_sim($own_sim) if $own_sim;
}

1;
