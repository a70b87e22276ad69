# 090_load.pl: 16 sessions x 500 stops at once against the simulator.
#
# Every session waits on a shared advisory lock that the test holds, so all
# 16 start together once they are all queued; each then stops 500 plans of
# its own, timing every call with clock_timestamp() and recording any error
# instead of stopping.  Passes with zero errors, every plan stopped exactly
# once by the simulator, and prints p50 / p99 / max latency and throughput.

use strict;
use warnings FATAL => 'all';

use FindBin;
use lib $FindBin::RealBin;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use WxpayTest;

my $sessions = 16;
my $calls = 500;
my $lock = 9090;

my $node = new_node('load');
$node->append_conf('postgresql.conf', "max_connections = 40\n");
$node->restart;
$node->safe_psql(
	'postgres', q{
CREATE UNLOGGED TABLE load_call (session int, n int, ms float8, sqlstate text, message text);
CREATE FUNCTION load_run(s int, calls int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    st text;
    msg text;
BEGIN
    FOR i IN 1 .. calls LOOP
        t0 := clock_timestamp();
        BEGIN
            PERFORM wxpay_stop_sign_plan(format('load-%s-%s', s, i), 'load test');
            INSERT INTO load_call VALUES
                (s, i, extract(epoch FROM clock_timestamp() - t0) * 1000, NULL, NULL);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            INSERT INTO load_call VALUES
                (s, i, extract(epoch FROM clock_timestamp() - t0) * 1000, st, msg);
        END;
    END LOOP;
END $$;
});

# the barrier: held here, awaited (shared) by every session
my $gate = $node->background_psql('postgres');
$gate->query_safe("SELECT pg_advisory_lock($lock)");

my @runs;
for my $s (1 .. $sessions)
{
	my ($out, $err) = ('', '');
	my $sql =
	    "SELECT pg_advisory_lock_shared($lock);\n"
	  . "SELECT pg_advisory_unlock_shared($lock);\n"
	  . "SELECT load_run($s, $calls);\n";
	push @runs,
	  {
		out => \$out,
		err => \$err,
		h => IPC::Run::start(
			[
				'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d',
				$node->connstr('postgres'), '-c', $sql
			],
			'>', \$out, '2>', \$err)
	  };
}

ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = $sessions FROM pg_locks "
		  . "WHERE locktype = 'advisory' AND objid = $lock AND NOT granted"),
	"all $sessions sessions are queued at the gate");

my $before = sim_stats();
my $t0 = time();
$gate->query_safe("SELECT pg_advisory_unlock($lock)");
my $failed = 0;
for my $r (@runs)
{
	$r->{h}->finish or $failed++;
	diag("session error: ${ $r->{err} }") if ${ $r->{err} } ne '';
}
my $wall = time() - $t0;
$gate->quit;
is($failed, 0, 'every session ran to the end');

my $total = $sessions * $calls;
is($node->safe_psql('postgres', 'SELECT count(*) FROM load_call'),
	$total, "$total calls were made");
my $errors = $node->safe_psql('postgres',
	"SELECT coalesce(string_agg(DISTINCT sqlstate || ': ' || message, '; '), '') FROM load_call WHERE sqlstate IS NOT NULL"
);
is($errors, '', 'zero errors');

my $after = sim_stats();
my $stopped = grep { /^load-/ && ($after->{stops}{$_} // 0) == 1 }
  keys %{ $after->{stops} };
is($stopped, $total, 'the simulator stopped every plan exactly once');
is($after->{requests} - $before->{requests},
	$total, 'exactly one request per call');

my ($p50, $p99, $max) = split /\|/,
  $node->safe_psql('postgres',
	    "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 2), "
	  . "round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 2), "
	  . "round(max(ms)::numeric, 2) FROM load_call");
diag(
	sprintf(
		"load: %d sessions x %d calls in %.1f s (%.0f calls/s); latency p50 %s ms, p99 %s ms, max %s ms",
		$sessions, $calls, $wall, $total / $wall, $p50, $p99, $max));

$node->stop;
done_testing();
