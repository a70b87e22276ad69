#!/usr/bin/env bash
# test/sandbox.sh: try the extension against the bundled WeChat Pay simulator
# from your own server.  Makes a test PKI (test/pki.sh), starts the simulator
# (test/sim/simulator.js) on 127.0.0.1, prints the INSERT INTO wxpay_config
# that points a config at it, and keeps it running until Ctrl-C (or
# SIGTERM: kill the PID it prints).  Then it stops the simulator and removes
# its directory.  Nothing else is installed, built or started.
#
#   bash test/sandbox.sh                 # keys read by the server: pg_read_file
#   bash test/sandbox.sh --literal       # keys written into the INSERT (test
#                                        # keys only: for a server that cannot
#                                        # read this machine's files)
#   bash test/sandbox.sh --name sandbox  # the config's name (default "default")
#
# The simulator is a test double: its keys are made up and it stops nothing
# real.  Its merchant is 1900000001 (public-key mode); any plan number can be
# stopped once (a second stop is the platform's rejection, WX002).
# The server must run on this machine (the simulator listens on 127.0.0.1).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
literal=0
name=default
while [ $# -gt 0 ]; do
    case "$1" in
        --literal) literal=1 ;;
        --name) name=${2:?--name needs a value}; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: bash test/sandbox.sh [--literal] [--name CONFIG_NAME]" >&2; exit 2 ;;
    esac
    shift
done
case "$name" in *"'"*) echo "sandbox: the config name may not contain a quote" >&2; exit 2 ;; esac
command -v node >/dev/null || { echo "sandbox: needs Node.js (apt-get install nodejs)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "sandbox: needs openssl (apt-get install openssl)" >&2; exit 1; }

dir=$(mktemp -d /tmp/wxpay-sandbox.XXXXXX)
chmod 755 "$dir"                      # the server's OS user reads the keys from here
sim=""
cleanup() {
    if [ -n "$sim" ]; then kill "$sim" 2>/dev/null || true; wait "$sim" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo; echo "sandbox: stopping the simulator" >&2; exit 0' INT TERM

bash "$root/test/pki.sh" "$dir/pki" >/dev/null
mkfifo "$dir/sim.fifo"
node "$root/test/sim/simulator.js" --pki "$dir/pki" >"$dir/sim.fifo" 2>"$dir/sim.log" &
sim=$!
exec 9<"$dir/sim.fifo"
line=""
read -r -t 60 line <&9 || true
case "$line" in
    READY*) ;;
    *) echo "sandbox: the simulator did not start:" >&2; cat "$dir/sim.log" >&2; exit 1 ;;
esac
port=${line#*port=}; port=${port%% *}
control=${line#*control=}
pki=$dir/pki

# SQL string literal of a file's content (test keys only)
lit() { printf "'%s'" "$(sed "s/'/''/g" "$1")"; }
if [ "$literal" = 1 ]; then
    key=$(lit "$pki/merchant.key"); pub=$(lit "$pki/platform_pub.pem"); ca=$(lit "$pki/ca.crt")
else
    key="pg_read_file('$pki/merchant.key')"
    pub="pg_read_file('$pki/platform_pub.pem')"
    ca="pg_read_file('$pki/ca.crt')"
fi

cat <<EOF
-- The WeChat Pay simulator runs at https://127.0.0.1:$port (PID $sim; control
-- API http://127.0.0.1:$control, see test/sim/README.md).  As the superuser
-- that owns the extension, in the database where it is installed:

INSERT INTO wxpay_config (name, mchid, serial_no, private_key,
                          wechatpay_public_key_id, wechatpay_public_key,
                          base_url, ca_cert, backup_base_url)
VALUES ('$name', '1900000001', '$(cat "$pki/merchant_serial.txt")',
        $key,
        '$(cat "$pki/pub_key_id.txt")',
        $pub,
        'https://127.0.0.1:$port',
        $ca,
        NULL);

-- then, for example:
SELECT * FROM wxpay_check_config('$name', live => true);
SELECT * FROM wxpay_stop_sign_plan('sandbox-plan-1', 'trying it out', '$name');

-- When you are done: DELETE FROM wxpay_config WHERE name = '$name';
-- The keys above are test keys, made for this run and deleted when it ends.
EOF
echo "sandbox: simulator running; Ctrl-C (or kill $$) stops it and deletes $dir" >&2
wait "$sim" || true
sim=""
echo "sandbox: the simulator exited; see above" >&2
exit 1
