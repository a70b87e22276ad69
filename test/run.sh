#!/usr/bin/env bash
# test/run.sh: the fast suite, from a fresh Debian 12 machine.
#
# Installs what is missing (apt), builds the extension and installs it into
# a private copy of the server in a scratch directory, starts
# the WeChat Pay simulator (HTTPS, private CA made now) and a private
# PostgreSQL cluster, replays the fuzz corpora through the pure-C parsers
# (test/fuzz/), then runs the pg_regress files (sql/, expected/) and
# the TAP tests (test/t/) through PGXS's "make installcheck".  Exits non-zero
# on any failure.  WX_KEEP=1 keeps the scratch directory for inspection;
# WX_MAKE_ARGS passes make variables, e.g. to run one part only:
#   WX_MAKE_ARGS="REGRESS= PROVE_TESTS=test/t/002_cancel.pl" bash test/run.sh
# The whole test command (static analysis, this suite, sanitizers, fuzzing)
# is test/all.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WX_PRIVATE_PG=1

wx_prepare
wx_fuzz_replay
wx_run_suite
