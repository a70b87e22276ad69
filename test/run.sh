#!/usr/bin/env bash
# test/run.sh: the whole test suite, from a fresh Debian 12 machine.
#
# Installs what is missing (apt), builds the extension and installs it into
# a private copy of the server in a scratch directory, starts
# the WeChat Pay simulator (HTTPS, private CA made now) and a private
# PostgreSQL cluster, then runs the pg_regress files (sql/, expected/) and
# the TAP tests (test/t/) through PGXS's "make installcheck".  Exits non-zero
# on any failure.  WX_KEEP=1 keeps the scratch directory for inspection;
# WX_MAKE_ARGS passes make variables, e.g. to run one part only:
#   WX_MAKE_ARGS="REGRESS= PROVE_TESTS=test/t/002_cancel.pl" bash test/run.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WX_PRIVATE_PG=1

wx_prepare

# A copy of the tree that the postgres OS user may write results into.
mkdir "$WX_WORK/tree"
(cd "$WX_ROOT" && tar cf - --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' .) |
    tar xf - -C "$WX_WORK/tree"
[ "$(id -u)" = 0 ] && chown -R postgres "$WX_WORK/tree"

# WX_MAKE_ARGS is split as the shell would (quotes group words), so that
# REGRESS='01_setup 03_stop' reaches make as one argument.
eval "make_args=(${WX_MAKE_ARGS:-})"

status=0
cd "$WX_WORK/tree"
if ! wx_as_pg env WXPAY_PKI="$WXPAY_PKI" WXPAY_SIM_URL="$WXPAY_SIM_URL" \
        WXPAY_SIM_CONTROL="$WXPAY_SIM_CONTROL" PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres \
        make -s PG_CONFIG="$WX_PG_CONFIG" installcheck "${make_args[@]}"; then
    status=1
    [ -f regression.diffs ] && cat regression.diffs
    for f in tmp_check/log/regress_log_*; do
        [ -f "$f" ] && { echo "---- $f (tail)"; tail -n 40 "$f"; }
    done
fi
exit $status
