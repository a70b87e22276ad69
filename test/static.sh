#!/usr/bin/env bash
# test/static.sh: the build must be warning-free and the analyzers clean.
#
# 1. A clean build of a copy of the tree with -Werror (on top of the
#    Makefile's -Wall -Wextra), so no stale object hides a warning.
# 2. clang's static analyzer over every file in src/, with the real server,
#    libcurl and OpenSSL headers; any finding fails.
# 3. cppcheck (warning, performance and portability checks) over src/ and
#    the fuzz targets; any finding fails.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

wx_install_deps
wx_install_harden_deps
wx_make_work
status=0

wx_log "-Werror build"
wx_copy_tree "$WX_WORK/werror"
if ! make -C "$WX_WORK/werror" -s PG_CONFIG="$WX_PG_CONFIG" COPT=-Werror >"$WX_WORK/werror.log" 2>&1; then
    cat "$WX_WORK/werror.log"
    status=1
fi

wx_log "clang static analyzer"
inc=$("$WX_PG_CONFIG" --includedir-server)
for f in "$WX_ROOT"/src/*.c; do
    if ! clang --analyze -Xanalyzer -analyzer-output=text -Xanalyzer -analyzer-werror \
            -I"$WX_ROOT/src" $(pkg-config --cflags libcurl openssl) -isystem "$inc" \
            -D_GNU_SOURCE -DWXPAY_VERSION='"analyzer"' -o /dev/null "$f"; then
        status=1
    fi
done

wx_log "cppcheck"
if ! cppcheck --enable=warning,performance,portability --error-exitcode=1 --quiet \
        --inline-suppr --std=c99 -I"$WX_ROOT/src" "$WX_ROOT"/src/*.c "$WX_ROOT"/test/fuzz/*.c; then
    status=1
fi

exit $status
