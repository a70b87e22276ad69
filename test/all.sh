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
# Prints the time each step took.  Developers iterate with test/run.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$SECONDS
steps="static run package sanitize fuzz"
if [ "${WX_MATRIX:-1}" != 0 ]; then steps="$steps matrix"; fi
for step in $steps; do
    t0=$SECONDS
    printf '== test/%s.sh\n' "$step" >&2
    if ! bash "$here/$step.sh"; then
        printf '== test/%s.sh FAILED after %ss\n' "$step" $((SECONDS - t0)) >&2
        exit 1
    fi
    printf '== test/%s.sh passed in %ss\n' "$step" $((SECONDS - t0)) >&2
done
printf '== all steps passed in %ss\n' $((SECONDS - start)) >&2
