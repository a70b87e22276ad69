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
# extension: leak checking runs when each server process exits (the reports
# are judged once every such process has gone; a report that a kill cut
# short before its first word is listed and counted, not judged), and leaks
# of the server's own (reachable-by-design or exit-time) allocations, which
# are not ours to fix, are counted but do not fail the run.
# WX_KEEP=1 and WX_MAKE_ARGS work as for test/run.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WX_PRIVATE_PG=1
WX_SANITIZE=1
# The random fault test explores 12 schedules in test/run.sh; here (four
# times the CPU per schedule) 4, of a seed of their own.
export WXPAY_RANDOM_SCHEDULES=${WXPAY_RANDOM_SCHEDULES:-4}

wx_install_harden_deps
wx_prepare
status=0
wx_run_suite || status=1

# A fast shutdown waits for every backend to finish its exit-time leak
# check (an immediate one, at cleanup, would kill them half-way).
wx_as_pg pg_ctl -D "$PGDATA" -m fast stop >/dev/null
WX_CLUSTER_UP=
# Processes of the TAP tests' clusters may still be running their exit-time
# leak check (a test that stops a node in immediate mode does not wait for
# them): judge only once no process of the sanitized server remains, so that
# no report is read while it is being written.
san_server=$(readlink -f "$("$WX_PG_CONFIG" --bindir)/postgres.unwrapped")
for _ in $(seq 300); do
    alive=0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$san_server" ] && { alive=1; break; }
    done
    [ $alive = 0 ] && break
    sleep 1
done

# Judge the reports.  A report file that is not only foreign leaks fails.
bad=0
foreign=0
interrupted=0
shopt -s nullglob
for f in "$WX_SAN_DIR"/*; do
    if ! grep -q '[^=[:space:]]' "$f"; then
        # Only the banner line: the process was killed (SIGKILL by a test,
        # or by its postmaster's immediate shutdown) before the report's
        # first word, so it holds nothing to judge.
        echo "---- interrupted leak report $f (only its banner was written)"
        interrupted=$((interrupted + 1))
    elif grep -qE 'ERROR: AddressSanitizer|runtime error:' "$f" ||
       ! grep -q 'ERROR: LeakSanitizer: detected memory leaks' "$f"; then
        echo "---- sanitizer report $f"; cat "$f"; bad=1
    elif awk 'BEGIN { RS = ""; ours = 0 }
              /(Direct|Indirect) leak/ && (/wxpay_signplan\.so/ || / src\/([a-z_]+\/)?[a-z_]+\.c:[0-9]/) {
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
wx_log "sanitizer reports: $([ $bad = 0 ] && echo none of ours || echo SOME OF OURS); $foreign process(es) with leaks outside the extension (ignored); $interrupted leak report(s) cut short by a kill"
[ $bad = 0 ] || status=1
exit $status
