#!/usr/bin/env bash
# test/all.sh: the whole test command (the README's, and CI's .ci/run).
#
# In order, each step in its own scratch directory, stopping at the first
# failure:
#   1. test/static.sh    -Werror build, clang's analyzer, cppcheck
#   2. test/run.sh       the fast suite: pg_regress + TAP, fuzz corpora replayed
#   3. test/package.sh   the Debian package (debian/) built, installed for 15,
#                        the pg_regress files run against it, removed again
#   4. test/sanitize.sh  the same suite with the extension under ASan + UBSan
#   5. test/fuzz.sh      bounded libFuzzer runs (WX_FUZZ_SECONDS per target)
#   6. test/matrix.sh    the fast suite against PostgreSQL 17, 18 and 19 in
#                        cached Debian chroots (WX_MATRIX=0 skips it)
# The matrix's chroots are made (or checked) in the background from the
# start, while the host's steps run (debootstrap waits on the network and
# the disk more than on the CPU); the host's packages are installed first,
# so that only one apt-get runs at a time.  Within each suite, TAP files run
# WX_PROVE_JOBS at a time (test/lib.sh).
# Prints the time each step took (each TAP file's, too: prove --timer), and
# on a failure, last, the command that replays each failed part alone.
# Developers iterate with test/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$SECONDS
steps="static run package sanitize fuzz"
if [ "${WX_MATRIX:-1}" != 0 ]; then steps="$steps matrix"; fi
# Each failed part's replay command is collected here and printed last.
export WX_REPLAY_FILE
WX_REPLAY_FILE=$(mktemp /tmp/wxpay-replay.XXXXXX)
prep_pid=""
prep_log=$(mktemp /tmp/wxpay-matrix-prepare.XXXXXX)
trap '[ -z "$prep_pid" ] || kill "$prep_pid" 2>/dev/null; rm -f "$WX_REPLAY_FILE" "$prep_log"' EXIT

# every host package any step needs, before anything runs beside
(
    . "$here/lib.sh"
    wx_install_packages $WX_PACKAGES $WX_HARDEN_PACKAGES postgresql-server-dev-all \
        debhelper dpkg-dev debootstrap
)
if [[ " $steps " == *" matrix "* ]]; then
    WX_MATRIX_PREPARE_ONLY=1 bash "$here/matrix.sh" >"$prep_log" 2>&1 &
    prep_pid=$!
fi

times=""
for step in $steps; do
    t0=$SECONDS
    if [ "$step" = matrix ] && [ -n "$prep_pid" ]; then
        # the chroots: made meanwhile; a failure here is the matrix's to
        # report (it tries again, and says which major has no chroot)
        wait "$prep_pid" || true
        prep_pid=""
        cat "$prep_log" >&2
    fi
    printf '== test/%s.sh\n' "$step" >&2
    if ! WX_REPLAY_CMD="bash test/$step.sh" bash "$here/$step.sh"; then
        printf '%s' "$times" >&2
        printf '== test/%s.sh FAILED after %ss; to replay:\n' "$step" $((SECONDS - t0)) >&2
        if [ -s "$WX_REPLAY_FILE" ]; then sort -u "$WX_REPLAY_FILE" >&2
        else printf 'replay: bash test/%s.sh\n' "$step" >&2; fi
        exit 1
    fi
    times="$times$(printf '== test/%s.sh passed in %ss' "$step" $((SECONDS - t0)))"$'\n'
    printf '== test/%s.sh passed in %ss\n' "$step" $((SECONDS - t0)) >&2
done
printf '%s' "$times" >&2
printf '== all steps passed in %ss\n' $((SECONDS - start)) >&2
