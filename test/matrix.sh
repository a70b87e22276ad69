#!/usr/bin/env bash
# test/matrix.sh: the fast suite against every PostgreSQL major Debian ships,
# each in a Debian chroot of the suite that carries it:
#   17  trixie
#   18  sid
#   19  experimental (sid plus experimental; only the server comes from there)
# (15 is the host's, tested by test/run.sh; 16 is in no Debian suite.)
#
# For each major: makes (or reuses) a cached chroot built with
# "debootstrap --variant=minbase" from the Debian mirror apt uses on this
# machine, with the server, its headers, libcurl, OpenSSL, Node.js and
# IPC::Run installed; then copies this tree into it and runs, inside, a clean
# build that counts compiler warnings, the fuzz corpora replay, pg_regress
# and the TAP tests against that server (test/lib.sh, WX_PG_MAJOR).  Prints a
# table: major, exact server version, build warnings, regression result,
# TAP result.  Exits non-zero if any major has a warning or a failure.
#
# The chroots are cached in $WX_MATRIX_CACHE (default
# /var/cache/wxpay-matrix), one directory per suite and recipe (the package
# list, the mirror and this script's recipe version make the key); a cache
# entry is used only if it was completed (marker written last) and still
# holds every package, otherwise it is removed and built again.  Chroots are
# prepared in parallel (network and disk bound); the suites run one after
# another (two suites at once on 2 cores only make the TAP tests' timeouts
# tighter, not the whole faster).
#
# /proc, /dev, /dev/pts and /dev/shm are mounted into a chroot only while it
# is used, in a private mount namespace (unshare), and unmounted by a trap
# on every exit path, failure or interrupt; nothing stays mounted.
#
# Environment:
#   WX_MATRIX_MAJORS  majors to test (default "17 18 19")
#   WX_MATRIX_CACHE   cache directory (default /var/cache/wxpay-matrix)
#   WX_MATRIX_MIRROR  Debian mirror (default: the one in apt's sources)
#   WX_MATRIX_KEEP=1  keep the per-major logs directory
#   WX_MAKE_ARGS      passed to the suite as in test/run.sh (subsets)
#   WX_MATRIX_PREPARE_ONLY=1  make (or check) the chroots, run nothing
# test/all.sh runs this after the host's steps; WX_MATRIX=0 skips it there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WX_TREE=$(cd "$here/.." && pwd)

# Bump when the way a chroot is made changes, so caches are rebuilt.
MATRIX_RECIPE=1

mlog() { printf '== matrix: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# Inside a chroot: "matrix.sh --inside MAJOR" runs the suite against that
# major's server and prints one result line.
# ---------------------------------------------------------------------------
matrix_inside() {
    export WX_PG_MAJOR=$1
    # the random fault test: 4 schedules of a seed of their own per major
    # (test/run.sh explores 12 on 15)
    export WXPAY_RANDOM_SCHEDULES=${WXPAY_RANDOM_SCHEDULES:-4}
    # shellcheck source=lib.sh
    . "$here/lib.sh"
    WX_PRIVATE_PG=1
    local version warnings regress=FAIL tap=FAIL

    wx_install_deps
    version=$("$WX_PG_CONFIG" --version | sed 's/^PostgreSQL //')

    # A clean build of a copy of the tree: every compiler warning counts
    # (the Makefile's -Wall -Wextra, and deprecated declarations).
    wx_make_work
    wx_copy_tree "$WX_WORK/warn"
    if make -C "$WX_WORK/warn" -s PG_CONFIG="$WX_PG_CONFIG" COPT=-Wdeprecated-declarations \
            >"$WX_WORK/warn.log" 2>&1; then
        warnings=$(grep -c 'warning:' "$WX_WORK/warn.log" || true)
    else
        warnings="build failed"
    fi
    if [ "$warnings" != 0 ]; then cat "$WX_WORK/warn.log" >&2; fi

    if [ "$warnings" != "build failed" ]; then
        wx_prepare
        wx_fuzz_replay || warnings="fuzz replay failed"
        # pg_regress and TAP as two runs on the same cluster and simulator,
        # so that a regression failure does not hide the TAP result
        local user_args=${WX_MAKE_ARGS:-}
        if WX_MAKE_ARGS="TAP_TESTS= $user_args" wx_run_suite >&2; then regress=ok; fi
        if WX_MAKE_ARGS="REGRESS= $user_args" wx_run_suite >&2; then tap=ok; fi
    fi
    printf 'WXMATRIX|%s|%s|%s|%s|%s\n' "$WX_PG_MAJOR" "$version" "$warnings" "$regress" "$tap"
}

if [ "${1:-}" = --inside ]; then
    matrix_inside "$2"
    exit 0
fi

# ---------------------------------------------------------------------------
# Outside: chroots, mounts, the table.
# ---------------------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
    echo "test/matrix.sh makes chroots and mounts: run it as root" >&2
    exit 1
fi

# Everything below runs in a private mount namespace: the chroots' mounts
# are invisible to the rest of the machine and die with the namespace even
# if this script is killed outright.  The traps unmount them regardless.
if [ -z "${WX_MATRIX_NS:-}" ]; then
    export WX_MATRIX_NS=1
    exec unshare --mount --propagation private -- bash "$0" "$@"
fi

WX_MATRIX_MAJORS=${WX_MATRIX_MAJORS:-17 18 19}
WX_MATRIX_CACHE=${WX_MATRIX_CACHE:-/var/cache/wxpay-matrix}

suite_of() {
    case $1 in
        17) echo trixie ;;
        18) echo sid ;;
        19) echo experimental ;;
        *) echo "no Debian suite ships PostgreSQL $1" >&2; return 1 ;;
    esac
}

# What the suite needs in the chroot (test/lib.sh's WX_PACKAGES), and a few
# things minbase lacks.
packages_of() {
    echo "postgresql-$1 postgresql-server-dev-$1 libcurl4-openssl-dev libssl-dev pkg-config make gcc" \
        "libc6-dev libipc-run-perl perl openssl curl nodejs ca-certificates"
}

# The Debian mirror apt uses here (deb822 .sources or one-line sources.list).
debian_mirror() {
    if [ -n "${WX_MATRIX_MIRROR:-}" ]; then echo "$WX_MATRIX_MIRROR"; return; fi
    local m
    m=$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
           awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { print $i; break } }' \
               /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
         } | grep -E '^https?://[^ ]*/debian/?$' | head -n 1)
    echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=$(debian_mirror)

cache_dir_of() {
    local major=$1 suite key
    suite=$(suite_of "$major")
    key=$(printf '%s\n' "$MATRIX_RECIPE" "$suite" "$MIRROR" "$(packages_of "$major")" | sha256sum | cut -c1-12)
    echo "$WX_MATRIX_CACHE/$suite-$key"
}

# Mounts at or below directory $1, deepest first.
mounts_below() {
    findmnt -n -l -o TARGET | awk -v d="$1" 'index($0, d "/") == 1 || $0 == d' | sort -r
}

# Stop what still runs rooted in chroot $1 (a server or simulator an
# interrupted suite left behind), then unmount everything below it.
release_chroot() {
    local dir=$1 p root pids="" m
    [ -d "$dir" ] || return 0
    dir=$(readlink -f "$dir")
    for p in /proc/[0-9]*; do
        root=$(readlink "$p/root" 2>/dev/null) || continue
        if [ "$root" = "$dir" ]; then pids="$pids ${p#/proc/}"; fi
    done
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        for p in $pids; do
            while [ -e "/proc/$p" ]; do sleep 0.1; done
        done
    fi
    for m in $(mounts_below "$dir"); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
    if [ -n "$(mounts_below "$dir")" ]; then
        echo "matrix: could not unmount below $dir:" >&2
        mounts_below "$dir" >&2
        return 1
    fi
}

# Remove a chroot directory; never while anything is mounted below it (a
# bound /dev would take the machine's device nodes with it).
remove_chroot() {
    local dir=$1
    [ -e "$dir" ] || return 0
    release_chroot "$dir"
    rm -rf --one-file-system "$dir"
}

mount_chroot() {
    local dir=$1
    mount -t proc proc "$dir/proc"
    mount --bind /dev "$dir/dev"
    mount --make-rslave "$dir/dev"
    mount --bind /dev/pts "$dir/dev/pts"
    mount -t tmpfs -o mode=1777,size=1g shm "$dir/dev/shm"
}

in_chroot() {
    local dir=$1; shift
    chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# A cache entry is good if it was completed for this key and still has
# every package installed and a working pg_config.
chroot_ok() {
    local major=$1 dir=$2
    [ -f "$dir/.wxpay-matrix-complete" ] &&
        [ "$(cat "$dir/.wxpay-matrix-complete")" = "$(basename "$dir")" ] &&
        # shellcheck disable=SC2046
        [ "$(in_chroot "$dir" dpkg-query -W -f '${db:Status-Status}\n' $(packages_of "$major") 2>/dev/null |
             grep -cx installed)" = "$(packages_of "$major" | wc -w)" ] &&
        [ -z "$(in_chroot "$dir" dpkg --audit 2>&1)" ] &&
        in_chroot "$dir" "/usr/lib/postgresql/$major/bin/pg_config" --version >/dev/null 2>&1
}

# Make the chroot of one major in $dir.partial, then rename it into place.
build_chroot() {
    local major=$1 dir=$2 suite base tmp pkgs
    suite=$(suite_of "$major")
    base=$suite
    [ "$suite" = experimental ] && base=sid
    tmp="$dir.partial"
    remove_chroot "$tmp"
    trap 'release_chroot "$tmp"' EXIT
    mkdir -p "$(dirname "$dir")"
    mlog "PostgreSQL $major: debootstrap --variant=minbase $base from $MIRROR"
    debootstrap --variant=minbase "$base" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 || {
        tail -n 30 "$tmp.log" >&2
        return 1
    }
    {
        echo "deb $MIRROR $base main"
        if [ "$suite" = experimental ]; then echo "deb $MIRROR experimental main"; fi
    } >"$tmp/etc/apt/sources.list"
    cat >"$tmp/etc/apt/apt.conf.d/99wxpay-matrix" <<'CONF'
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dpkg::Options { "--force-confold"; };
CONF
    # no services start in the chroot, and no default cluster is made
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    mkdir -p "$tmp/etc/postgresql-common"
    echo "create_main_cluster = false" >"$tmp/etc/postgresql-common/createcluster.conf"

    mount_chroot "$tmp"
    pkgs=$(packages_of "$major")
    {
        in_chroot "$tmp" apt-get update -q &&
        if [ "$suite" = experimental ]; then
            # everything from sid, then the server alone from experimental
            # shellcheck disable=SC2086
            in_chroot "$tmp" apt-get install -y -q $(echo "$pkgs" | tr ' ' '\n' | grep -v "^postgresql-") &&
            in_chroot "$tmp" apt-get install -y -q -t experimental "postgresql-$major" "postgresql-server-dev-$major"
        else
            # shellcheck disable=SC2086
            in_chroot "$tmp" apt-get install -y -q $pkgs
        fi &&
        in_chroot "$tmp" apt-get clean
    } >>"$tmp.log" 2>&1 || {
        tail -n 30 "$tmp.log" >&2
        release_chroot "$tmp"
        return 1
    }
    release_chroot "$tmp"
    trap - EXIT
    basename "$dir" >"$tmp/.wxpay-matrix-complete"
    remove_chroot "$dir"
    mv "$tmp" "$dir"
    mv "$tmp.log" "$dir.log"
    # older recipes of the same suite are dead weight
    local old
    for old in "$WX_MATRIX_CACHE/$suite"-*; do
        case $old in "$dir"|"$dir".*) continue ;; esac
        if [ -d "$old" ]; then remove_chroot "$old"; else rm -f "$old"; fi
    done
}

# Ready the chroot of one major (cached or new), under a lock per suite.
prepare_chroot() {
    local major=$1 dir
    dir=$(cache_dir_of "$major")
    mkdir -p "$WX_MATRIX_CACHE"
    exec 8>"$WX_MATRIX_CACHE/$(suite_of "$major").lock"
    flock 8
    if chroot_ok "$major" "$dir"; then
        mlog "PostgreSQL $major: cached chroot $dir"
    else
        if [ -e "$dir" ]; then mlog "PostgreSQL $major: cache $dir incomplete or damaged, rebuilding"; fi
        build_chroot "$major" "$dir"
        chroot_ok "$major" "$dir" || { mlog "PostgreSQL $major: the new chroot is not usable"; return 1; }
    fi
}

# Run the suite of one major in its chroot; appends its row to $RESULTS.
run_major() {
    local major=$1 dir work line
    dir=$(cache_dir_of "$major")
    work="$dir/wxpay-matrix-run"
    # one run at a time in a chroot (another matrix run may share the cache)
    exec 8>"$WX_MATRIX_CACHE/$(suite_of "$major").lock"
    flock 8
    rm -rf --one-file-system "$work"
    mkdir -p "$work"
    # this tree as test/lib.sh copies it (no build products, no .git)
    (cd "$WX_TREE" && tar cf - --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
        --exclude='./results' --exclude='./tmp_check' .) | tar xf - -C "$work"
    # (cleanup, the EXIT trap, releases it if this is interrupted)
    mount_chroot "$dir"
    mlog "PostgreSQL $major: running the suite (log $LOGS/$major.log)"
    # in the background, so that an interrupt runs the traps at once (they
    # stop everything in the chroot) instead of after the suite
    in_chroot "$dir" env ${WX_MAKE_ARGS:+WX_MAKE_ARGS="$WX_MAKE_ARGS"} \
        WX_REPLAY_CMD="WX_MATRIX_MAJORS=$major bash test/matrix.sh" \
        bash /wxpay-matrix-run/test/matrix.sh --inside "$major" >"$LOGS/$major.log" 2>&1 &
    wait $! || true
    release_chroot "$dir"
    rm -rf --one-file-system "$work"
    exec 8>&-
    line=$(grep '^WXMATRIX|' "$LOGS/$major.log" | tail -n 1 || true)
    if [ -z "$line" ]; then line="WXMATRIX|$major|?|?|not run|not run"; fi
    echo "$line" >>"$RESULTS"
}

LOGS=$(mktemp -d /tmp/wxpay-matrix.XXXXXX)
RESULTS="$LOGS/results"
: >"$RESULTS"
PREP_PIDS=()

cleanup() {
    local p major
    for p in "${PREP_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for major in $WX_MATRIX_MAJORS; do
        if release_chroot "$(cache_dir_of "$major")"; then
            rm -rf --one-file-system "$(cache_dir_of "$major")/wxpay-matrix-run"
        fi
        release_chroot "$(cache_dir_of "$major").partial" || true
    done
    if [ -z "${WX_MATRIX_KEEP:-}" ] && [ -z "${MATRIX_FAILED:-}" ]; then rm -rf "$LOGS"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v debootstrap >/dev/null 2>&1 || {
    mlog "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

start=$SECONDS
# Chroots in parallel (downloads and unpacking), suites one at a time.
# Each writes its exit status to a file: by the time a later major's turn
# comes, thousands of processes of the earlier suites may have reused its
# pid, and bash then no longer knows it ("wait: pid ... is not a child of
# this shell"), so wait only blocks and the file tells the outcome.
for major in $WX_MATRIX_MAJORS; do
    suite_of "$major" >/dev/null
    rm -f "$LOGS/prepare-$major.rc"
    (prepare_chroot "$major" >"$LOGS/prepare-$major.log" 2>&1; echo $? >"$LOGS/prepare-$major.rc") &
    PREP_PIDS+=($!)
done
# wait for the chroot of major $1 (the i-th, $2); true when it was made
prepared() {
    wait "${PREP_PIDS[$2]}" 2>/dev/null || true
    [ "$(cat "$LOGS/prepare-$1.rc" 2>/dev/null)" = 0 ]
}
# WX_MATRIX_PREPARE_ONLY=1: make the chroots and stop (test/all.sh does
# this first, in the background, while the host's steps run).
if [ -n "${WX_MATRIX_PREPARE_ONLY:-}" ]; then
    status=0 i=0
    for major in $WX_MATRIX_MAJORS; do
        prepared "$major" "$i" || status=1
        cat "$LOGS/prepare-$major.log" >&2
        i=$((i + 1))
    done
    PREP_PIDS=()
    mlog "chroots prepared in $((SECONDS - start))s"
    exit $status
fi
i=0
for major in $WX_MATRIX_MAJORS; do
    if prepared "$major" "$i"; then
        cat "$LOGS/prepare-$major.log" >&2
        run_major "$major"
    else
        cat "$LOGS/prepare-$major.log" >&2
        echo "WXMATRIX|$major|no chroot|-|not run|not run" >>"$RESULTS"
    fi
    i=$((i + 1))
done
PREP_PIDS=()

status=0
printf '\n%-6s %-34s %-9s %-11s %s\n' major "server version" warnings regression TAP
while IFS='|' read -r _ major version warnings regress tap; do
    printf '%-6s %-34s %-9s %-11s %s\n' "$major" "$version" "$warnings" "$regress" "$tap"
    if [ "$warnings" != 0 ] || [ "$regress" != ok ] || [ "$tap" != ok ]; then status=1; fi
done <"$RESULTS"
printf 'matrix finished in %ss\n' $((SECONDS - start))
if [ $status != 0 ]; then
    MATRIX_FAILED=1
    for major in $WX_MATRIX_MAJORS; do
        if ! grep -q "^WXMATRIX|$major|[^|]*|0|ok|ok$" "$RESULTS"; then
            echo "---- PostgreSQL $major: $LOGS/$major.log (tail)"
            tail -n 150 "$LOGS/$major.log" 2>/dev/null || true
        fi
    done
    echo "logs kept in $LOGS" >&2
    # last, the command that replays each failed part
    for major in $WX_MATRIX_MAJORS; do
        replay=$(grep '^replay: ' "$LOGS/$major.log" 2>/dev/null || true)
        [ -n "$replay" ] || grep -q "^WXMATRIX|$major|[^|]*|0|ok|ok$" "$RESULTS" ||
            replay="replay: WX_MATRIX_MAJORS=$major bash test/matrix.sh"
        [ -n "$replay" ] || continue
        echo "$replay"
        if [ -n "${WX_REPLAY_FILE:-}" ]; then echo "$replay" >>"$WX_REPLAY_FILE"; fi
    done
fi
exit $status
