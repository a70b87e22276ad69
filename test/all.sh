#!/usr/bin/env bash
# test/all.sh: the whole test command (the README's, and CI's .ci/run).
#
# Two lanes, each step in its own scratch directory, stopping at the first
# failure:
#   host lane, in order:
#   1. test/static.sh    -Werror build, clang's analyzer, cppcheck
#   2. test/run.sh       the fast suite: pg_regress + TAP, fuzz corpora replayed
#   3. test/package.sh   the Debian package (debian/) built, installed for 15,
#                        the pg_regress files run against it, removed again
#   4. test/sanitize.sh  the same suite with the extension under ASan + UBSan
#   5. test/fuzz.sh      bounded libFuzzer runs (WX_FUZZ_SECONDS per target)
#   matrix lane, beside it from the start:
#   6. test/matrix.sh    the fast suite against PostgreSQL 17, 18 and 19 in
#                        cached Debian chroots (WX_MATRIX=0 skips it)
# The lanes share nothing but the machine: the matrix's servers live in
# their chroots (clusters on Unix sockets in their own directories, the
# simulator on a port the kernel picks), so they run at once, and each
# suite runs under the other's load (its tests may assume no quiet
# machine).  The host's packages are installed first, so that only one
# apt-get runs at a time.  Within each suite, TAP files run WX_PROVE_JOBS at
# a time (test/lib.sh).  A failure in either lane stops the other.
# Prints the time each step took (each TAP file's, too: prove --timer), and
# on a failure, last, the command that replays each failed part alone.
# Developers iterate with test/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$SECONDS
steps="static run package sanitize fuzz"
# Each failed part's replay command is collected here and printed last.
export WX_REPLAY_FILE
WX_REPLAY_FILE=$(mktemp /tmp/wxpay-replay.XXXXXX)
matrix_pid=""
matrix_log=$(mktemp /tmp/wxpay-matrix-lane.XXXXXX)
stop_matrix() {
    [ -n "$matrix_pid" ] || return 0
    # matrix.sh's TERM trap stops what runs in its chroots and unmounts them
    kill -TERM "$matrix_pid" 2>/dev/null || true
    wait "$matrix_pid" 2>/dev/null || true
    matrix_pid=""
}
trap 'stop_matrix; rm -f "$WX_REPLAY_FILE" "$matrix_log"' EXIT
(
    . "$here/lib.sh"
    wx_install_packages $WX_PACKAGES $WX_HARDEN_PACKAGES postgresql-server-dev-all \
        debhelper dpkg-dev debootstrap
)
if [ "${WX_MATRIX:-1}" != 0 ]; then
    printf '== test/matrix.sh (beside the host steps; log %s)\n' "$matrix_log" >&2
    matrix_t0=$SECONDS
    WX_REPLAY_CMD="bash test/matrix.sh" bash "$here/matrix.sh" >"$matrix_log" 2>&1 &
    matrix_pid=$!
fi

failed() {
    printf '%s' "$times" >&2
    printf '== test/%s FAILED after %ss; to replay:\n' "$1" "$2" >&2
    if [ -s "$WX_REPLAY_FILE" ]; then sort -u "$WX_REPLAY_FILE" >&2
    else printf 'replay: bash test/%s\n' "$1" >&2; fi
    exit 1
}

times=""
for step in $steps; do
    t0=$SECONDS
    printf '== test/%s.sh\n' "$step" >&2
    if ! WX_REPLAY_CMD="bash test/$step.sh" bash "$here/$step.sh"; then
        if [ -n "$matrix_pid" ]; then
            printf '== stopping test/matrix.sh (a host step failed)\n' >&2
            stop_matrix
        fi
        failed "$step.sh" $((SECONDS - t0))
    fi
    times="$times$(printf '== test/%s.sh passed in %ss' "$step" $((SECONDS - t0)))"$'\n'
    printf '== test/%s.sh passed in %ss\n' "$step" $((SECONDS - t0)) >&2
done

if [ -n "$matrix_pid" ]; then
    printf '== waiting for test/matrix.sh (started %ss ago)\n' $((SECONDS - matrix_t0)) >&2
    status=0
    wait "$matrix_pid" || status=$?
    matrix_pid=""
    cat "$matrix_log" >&2
    if [ $status != 0 ]; then failed matrix.sh $((SECONDS - matrix_t0)); fi
    times="$times$(printf '== test/matrix.sh passed in %ss (beside the host steps)' $((SECONDS - matrix_t0)))"$'\n'
fi
printf '%s' "$times" >&2
printf '== all steps passed in %ss\n' $((SECONDS - start)) >&2
