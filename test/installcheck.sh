#!/usr/bin/env bash
# test/installcheck.sh MAKE-COMMAND...: "make installcheck" when the
# environment names no WeChat Pay simulator (the Makefile runs this).
#
# The regression files and TAP tests send every request to the bundled
# simulator (test/sim/), never to WeChat Pay.  This checks what a run
# against the server named by the usual libpq variables (PGHOST, PGPORT,
# PGUSER) needs, and says exactly what is missing: Node.js and openssl for
# the simulator and its test PKI, a server on this machine that a superuser
# can reach, the extension of this tree installed in it ("make install"),
# and for the TAP tests IPC::Run and a user other than root.  Then it makes
# the test PKI, starts the simulator, runs MAKE-COMMAND with WXPAY_PKI,
# WXPAY_SIM_URL and WXPAY_SIM_CONTROL set, and stops the simulator.
#
# Environment from the Makefile: WX_BINDIR (the server's programs),
# WX_VERSION (the control file's default_version), WX_TAP (non-empty when
# the TAP tests run; "make installcheck TAP_TESTS=" skips them).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

missing=0
need() {
    printf 'make installcheck: %s\n' "$*" >&2
    missing=1
}

[ -n "${WX_BINDIR:-}" ] && export PATH="$WX_BINDIR:$PATH"

command -v node >/dev/null 2>&1 ||
    need "node not found: the tests' WeChat Pay simulator (test/sim/simulator.js) runs on Node.js (Debian: apt-get install nodejs)"
command -v openssl >/dev/null 2>&1 ||
    need "openssl not found: it makes the simulator's test PKI (Debian: apt-get install openssl)"
if [ -n "${WX_TAP:-}" ]; then
    perl -MIPC::Run -e 1 >/dev/null 2>&1 ||
        need "Perl module IPC::Run not found: the TAP tests (test/t/) need it (Debian: apt-get install libipc-run-perl), or skip them: make installcheck TAP_TESTS="
    [ "$(id -u)" != 0 ] ||
        need "running as root: the TAP tests start PostgreSQL clusters of their own, which refuse to run as root; run make installcheck as another user (e.g. postgres), or skip them: make installcheck TAP_TESTS="
fi

target="the server at ${PGHOST:-the default socket}${PGPORT:+ port $PGPORT}"
if ! err=$(psql -X -A -t -c 'SELECT 1' postgres 2>&1 >/dev/null); then
    err=${err#psql: error: }
    need "cannot connect to $target as ${PGUSER:-$(id -un)}: start the server, or name it with PGHOST, PGPORT and PGUSER (psql: ${err%%$'\n'*})"
else
    q() { psql -X -A -t -q -c "$1" postgres; }
    [ "$(q 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user')" = t ] ||
        need "role \"$(q 'SELECT current_user')\" on $target is not a superuser: the tests create databases, roles and the extension; set PGUSER to a superuser"
    [ "$(q "SELECT coalesce(inet_server_addr() <<= '127.0.0.0/8' OR inet_server_addr() = '::1', true)")" = t ] ||
        need "$target is not on this machine: the extension must reach the simulator at 127.0.0.1"
    avail=$(q "SELECT default_version FROM pg_available_extensions WHERE name = 'wxpay_signplan'")
    if [ -z "$avail" ]; then
        need "extension wxpay_signplan is not installed in $target ($(q 'SHOW server_version')): run make install (as root or with sudo, with PG_CONFIG naming that server's pg_config), or install its Debian package (doc/packaging.md)"
    elif [ "$avail" != "${WX_VERSION:-$avail}" ]; then
        need "$target has wxpay_signplan $avail installed, this tree is $WX_VERSION: run make install"
    fi
fi
[ "$missing" = 0 ] || exit 2

wx_start_sim
wx_log "simulator at $WXPAY_SIM_URL (control $WXPAY_SIM_CONTROL), PKI in $WXPAY_PKI"
status=0
"$@" || status=$?
exit $status
