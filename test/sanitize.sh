#!/usr/bin/env bash
# test/sanitize.sh: the whole suite with the extension built with
# AddressSanitizer and UndefinedBehaviorSanitizer (gcc) and loaded into the
# server.
#
# The server is Debian's (not instrumented); the ASan runtime is preloaded
# into every postmaster started from the private installation (see
# wx_sanitize_server in test/lib.sh), so the suite's cluster and the
# clusters of the TAP tests all run the sanitized extension.  The run
# fails on any memory error or undefined behaviour (the backend aborts and
# a report is written), and on any leak whose allocation passes through the
# extension: leak checking runs when each server process exits, and leaks
# of the server's own (reachable-by-design or exit-time) allocations, which
# are not ours to fix, are counted but do not fail the run.
# WX_KEEP=1 and WX_MAKE_ARGS work as for test/run.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WX_PRIVATE_PG=1
WX_SANITIZE=1

wx_install_harden_deps
wx_prepare
status=0
wx_run_suite || status=1

# A fast shutdown waits for every backend to finish its exit-time leak
# check (an immediate one, at cleanup, would kill them half-way).
wx_as_pg pg_ctl -D "$PGDATA" -m fast stop >/dev/null
WX_CLUSTER_UP=

# Judge the reports.  A report file that is not only foreign leaks fails.
bad=0
foreign=0
shopt -s nullglob
for f in "$WX_SAN_DIR"/*; do
    if grep -qE 'ERROR: AddressSanitizer|runtime error:' "$f" ||
       ! grep -q 'ERROR: LeakSanitizer: detected memory leaks' "$f"; then
        echo "---- sanitizer report $f"; cat "$f"; bad=1
    elif awk 'BEGIN { RS = ""; ours = 0 }
              /(Direct|Indirect) leak/ && (/wxpay_signplan\.so/ || / src\/[a-z_]+\.c:[0-9]/) {
                  ours = 1; print; print ""
              }
              END { exit !ours }' "$f"; then
        # one leak per blank-line-separated block; ours if a frame is in our
        # library (symbolized frames name our sources, src/*.c)
        echo "---- leak through wxpay_signplan in $f (above)"; bad=1
    else
        foreign=$((foreign + 1))
    fi
done
# UBSan writes its one-line reports to the server's stderr, i.e. the logs
for f in "$WX_WORK/postgres.log" "$WX_WORK"/tree/tmp_check/log/*.log; do
    if grep -E 'runtime error:|ERROR: (AddressSanitizer|LeakSanitizer)' "$f"; then
        echo "---- sanitizer report in server log $f (above)"; bad=1
    fi
done
wx_log "sanitizer reports: $([ $bad = 0 ] && echo none of ours || echo SOME OF OURS); $foreign process(es) with leaks outside the extension (ignored)"
[ $bad = 0 ] || status=1
exit $status
