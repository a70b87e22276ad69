#!/usr/bin/env bash
# test/package.sh: the Debian package, built and tested as installed.
#
# Builds postgresql-NN-wxpay-signplan with "dpkg-buildpackage -us -uc -b"
# (debian/: pg_buildext, dh --with pgxs) in a clean copy of this tree, for
# PostgreSQL $WX_PG_MAJOR (15) only; installs it into the system's
# PostgreSQL with apt; starts a cluster of the system's server in a
# scratch directory; runs the pg_regress files (sql/, expected/) against
# it with a plain "make installcheck", as a user would, so that
# CREATE EXTENSION loads the packaged library and scripts and the Makefile
# starts the WeChat Pay simulator (test/installcheck.sh; before the
# package is installed, the same command must fail naming what is
# missing); and
# removes the package again, whatever happened, so that nothing of it
# stays on the machine.  Refuses to run when the package is installed
# already (it would remove it); the files of a "make install" into the
# system's server (test/demo.sh's) are set aside first and put back after.  WX_MAKE_ARGS as in test/run.sh (default:
# the regression files only, "TAP_TESTS=").  Run as root or with sudo.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WX_MAKE_ARGS=${WX_MAKE_ARGS-TAP_TESTS=}
pkg="postgresql-$WX_PG_MAJOR-wxpay-signplan"

wx_install_deps
# pg_buildext and the pgxs debhelper sequence, and dpkg-buildpackage
wx_install_packages postgresql-server-dev-all debhelper dpkg-dev
if dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
    echo "$pkg is installed already; this test installs and then removes it: remove it first" >&2
    exit 1
fi

wx_make_work
libdir=$("$WX_PG_CONFIG" --pkglibdir)
extdir=$("$WX_PG_CONFIG" --sharedir)/extension
package_cleanup() {
    if dpkg -s "$pkg" >/dev/null 2>&1; then
        wx_log "removing $pkg"
        DEBIAN_FRONTEND=noninteractive $WX_SUDO apt-get purge -y -qq "$pkg" >/dev/null || true
    fi
    if [ -f "$WX_WORK/installed.tar" ]; then
        wx_log "putting back the extension's files that were installed before"
        $WX_SUDO tar -xpPf "$WX_WORK/installed.tar"
    fi
    wx_cleanup
}
trap package_cleanup EXIT

# The extension's files in the system's server, from "make install": aside
# (absolute names, removed from their place) until package_cleanup.
installed=()
for f in "$libdir/wxpay_signplan.so" "$libdir/bitcode/wxpay_signplan.index.bc" \
         "$libdir/bitcode/wxpay_signplan" "$extdir"/wxpay_signplan.control "$extdir"/wxpay_signplan--*.sql; do
    [ -e "$f" ] && installed+=("$f")
done
if [ ${#installed[@]} -gt 0 ]; then
    wx_log "setting aside ${#installed[@]} files of an installed wxpay_signplan"
    $WX_SUDO tar -cPf "$WX_WORK/installed.tar" --remove-files "${installed[@]}"
fi

# "make installcheck" as a user runs it: no WXPAY_* variables, the server
# named by PGHOST/PGPORT/PGUSER.
wx_start_cluster
wx_copy_tree "$WX_WORK/tree"
[ "$(id -u)" = 0 ] && chown -R postgres "$WX_WORK/tree"
installcheck() {
    (cd "$WX_WORK/tree" &&
     wx_as_pg env -u WXPAY_PKI -u WXPAY_SIM_URL -u WXPAY_SIM_CONTROL \
        PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres \
        make -s PG_CONFIG="$WX_PG_CONFIG" installcheck "$@")
}
eval "margs=(${WX_MAKE_ARGS:-})"

wx_log "make installcheck before the package is installed: names what is missing"
status=0
out=$(installcheck "${margs[@]}" 2>&1) || status=$?
want="make installcheck: extension wxpay_signplan is not installed in the server at $PGHOST port $PGPORT"
if [ "$status" != 2 ] || ! grep -qF "$want" <<<"$out"; then
    printf '%s\n' "$out" | tail -n 20
    echo "---- expected exit status 2 (got $status) and: $want"
    echo "replay: bash test/package.sh"
    exit 1
fi

wx_log "building $pkg (dpkg-buildpackage -us -uc -b, log in $WX_WORK/build.log)"
wx_copy_tree "$WX_WORK/src"
if ! (cd "$WX_WORK/src" && PG_SUPPORTED_VERSIONS=$WX_PG_MAJOR dpkg-buildpackage -us -uc -b) \
        >"$WX_WORK/build.log" 2>&1; then
    tail -n 60 "$WX_WORK/build.log"
    echo "---- dpkg-buildpackage failed (the last 60 lines of its log above; WX_KEEP=1 keeps the whole log)"
    echo "replay: bash test/package.sh, or in a clean clone: dpkg-buildpackage -us -uc -b"
    exit 1
fi
deb=$(ls "$WX_WORK"/"${pkg}"_*.deb)
wx_log "installing $(basename "$deb")"
DEBIAN_FRONTEND=noninteractive $WX_SUDO apt-get install -y -qq "$deb" >/dev/null
# what CREATE EXTENSION loads is the package's
for f in "$libdir/wxpay_signplan.so" "$extdir/wxpay_signplan.control"; do
    owner=$(dpkg -S "$f" 2>/dev/null | cut -d: -f1)
    if [ "$owner" != "$pkg" ]; then
        echo "$f is not installed by $pkg (owner: ${owner:-none})" >&2
        exit 1
    fi
done

wx_log "make installcheck against the installed package (${WX_MAKE_ARGS:-all tests})"
if ! installcheck "${margs[@]}"; then
    [ -f "$WX_WORK/tree/regression.diffs" ] && cat "$WX_WORK/tree/regression.diffs"
    for f in "$WX_WORK"/tree/tmp_check/log/regress_log_*; do
        [ -f "$f" ] && grep -q '^not ok' "$f" &&
            { echo "-- $(basename "$f")"; grep -A 25 '^not ok' "$f" | head -n 120; }
    done
    echo "---- make installcheck failed against the installed package"
    echo "replay: bash test/package.sh (WX_KEEP=1 keeps $WX_WORK)"
    exit 1
fi
