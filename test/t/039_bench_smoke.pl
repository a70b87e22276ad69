
# 039_bench_smoke.pl: the benchmark's parts still work, so that
# test/bench/bench.sh cannot rot between runs.  Figures are not judged here:
# only that the floor client compiles, talks to the simulator, verifies its
# answers, and that the measured session script runs both functions and
# prints its line.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use WxpayTest;

my $bench = "$FindBin::RealBin/../bench";
my $floor = "${PostgreSQL::Test::Utils::tmp_check}/floor";

# ---- the floor client ----
{
	my $flags = `pkg-config --cflags --libs libcurl openssl`;
	chomp $flags;
	my ($out, $err) = run_command(
		[ 'sh', '-c', "gcc -O2 -Wall -Wextra -Werror -o '$floor' '$bench/floor.c' $flags" ]);
	is($err, '', 'floor.c compiles without warnings');

	my $before = sim_stats();
	($out, $err) = run_command(
		[
			$floor, sim_url(), "$ENV{WXPAY_PKI}/ca.crt",
			"$ENV{WXPAY_PKI}/merchant.key", '1900000001',
			pki_file('merchant_serial.txt', chomp => 1),
			"$ENV{WXPAY_PKI}/platform_pub.pem",
			pki_file('pub_key_id.txt', chomp => 1),
			't39-floor', 1, 3
		]);
	my $after = sim_stats();
	like($out, qr/^floor\|3\|3\|[\d.]+\|\d+$/m,
		'the floor made 3 measured calls and verified all 3 answers');
	is($after->{stops}{'t39-floor-3'} // 0, 1, 'the floor really stopped its plans');
	is($after->{tls_connections} - $before->{tls_connections},
		1, 'the floor used one TLS connection');
}

# ---- the measured session, both functions ----
{
	my $node = new_node('bench');
	for my $batch ('false', 'true')
	{
		my ($ret, $out, $err) = $node->psql(
			'postgres', undef,
			extra_params => [
				'-v', "batch=$batch", '-v', 'conc=2', '-v', 'n=3',
				'-v', 'warm=2', '-v', "prefix=t39-$batch",
				'-f', "$bench/session.sql"
			]);
		is($ret, 0, "session.sql (batch=$batch) runs");
		like($out, qr/^3\|3\|[\d.]+\|\d+\|\d+\|\d+\|\d+\|\d+\|\d+$/,
			"session.sql (batch=$batch) prints its line, all 3 stopped");
	}
	$node->stop;
}

done_testing();
