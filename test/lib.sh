# test/lib.sh: shared by test/run.sh (the whole suite), test/demo.sh and the
# benchmarks.  Sourced, not run.  Installs what is missing, builds and
# installs the extension, and starts a private PostgreSQL cluster and the
# WeChat Pay simulator in a scratch directory that wx_cleanup removes.
#
# PostgreSQL refuses to run as root: as root, the cluster and everything
# that talks to it as a superuser run as the "postgres" OS user.

WX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WX_PG_MAJOR=${WX_PG_MAJOR:-15}
WX_PACKAGES="postgresql-$WX_PG_MAJOR postgresql-server-dev-$WX_PG_MAJOR libcurl4-openssl-dev
    libssl-dev pkg-config make gcc libipc-run-perl openssl curl nodejs"

# Only the hardening steps (test/all.sh: static analysis, sanitizers,
# fuzzing) need these; the fast suite never installs them.
WX_HARDEN_PACKAGES="clang libclang-rt-14-dev llvm cppcheck libasan8 libubsan1"

if [ "$(id -u)" = 0 ]; then WX_SUDO=""; else WX_SUDO="sudo"; fi

wx_log() { printf '== %s\n' "$*" >&2; }

# Install those of the given Debian packages that are not there yet.
wx_install_packages() {
    local missing=""
    for p in "$@"; do
        if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        wx_log "installing:$missing"
        $WX_SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $WX_SUDO apt-get install -y -qq $missing >/dev/null
    fi
}

# What the hardening steps need on top of the suite's packages.
wx_install_harden_deps() {
    wx_install_packages $WX_HARDEN_PACKAGES
}

# The suite's packages, and PATH / WX_PG_CONFIG for the server.
wx_install_deps() {
    wx_install_packages $WX_PACKAGES
    export PATH="/usr/lib/postgresql/$WX_PG_MAJOR/bin:$PATH"
    WX_PG_CONFIG=/usr/lib/postgresql/$WX_PG_MAJOR/bin/pg_config
    [ -x "$WX_PG_CONFIG" ] || WX_PG_CONFIG=$(command -v pg_config)
}

# The scratch directory of one run; wx_cleanup removes it.
wx_make_work() {
    [ -n "${WX_WORK:-}" ] && return 0
    WX_WORK=$(mktemp -d /tmp/wxpay-test.XXXXXX)
    chmod 755 "$WX_WORK"
    [ "$(id -u)" = 0 ] && chown postgres "$WX_WORK"
    trap wx_cleanup EXIT
}

# A private copy of the PostgreSQL installation in the scratch directory, so
# that the suite tests exactly this tree's build without touching the
# system's installed extension (and runs beside other checkouts).  Debian's
# server is relocatable: its programs find share/ and lib/ relative to
# their own path.
wx_private_pg() {
    wx_make_work
    local bindir libdir sharedir incdir root="$WX_WORK/pg"
    bindir=$("$WX_PG_CONFIG" --bindir)
    libdir=$("$WX_PG_CONFIG" --pkglibdir)
    sharedir=$("$WX_PG_CONFIG" --sharedir)
    incdir=$("$WX_PG_CONFIG" --includedir-server)
    mkdir -p "$root$(dirname "$bindir")" "$root$(dirname "$libdir")" "$root$(dirname "$sharedir")"
    cp -a "$bindir" "$root$bindir"
    [ -d "$root$libdir" ] || cp -a "$libdir" "$root$libdir"
    cp -a "$sharedir" "$root$sharedir"
    mkdir -p "$root$(dirname "$incdir")"
    ln -s "$incdir" "$root$incdir"
    if [ "$("$root$bindir/pg_config" --sharedir)" != "$root$sharedir" ] ||
       [ "$("$root$bindir/pg_config" --pkglibdir)" != "$root$libdir" ]; then
        echo "this PostgreSQL installation is not relocatable" >&2
        return 1
    fi
    WX_PG_CONFIG="$root$bindir/pg_config"
    export PATH="$root$bindir:$PATH"
    WX_SUDO=""
}

# A clean copy of the source tree (no build products) in directory $1.
wx_copy_tree() {
    mkdir -p "$1"
    (cd "$WX_ROOT" && tar cf - --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
        --exclude='./results' --exclude='./tmp_check' .) | tar xf - -C "$1"
}

# Builds in the source tree; with WX_COPT (extra compiler and linker flags,
# PGXS's COPT: e.g. sanitizers) in a clean copy in the scratch directory,
# so that no object built with other flags is reused or left behind.
wx_build_install() {
    local src="$WX_ROOT"
    if [ -n "${WX_COPT:-}" ]; then
        wx_make_work
        src="$WX_WORK/build"
        wx_copy_tree "$src"
    fi
    wx_log "building and installing the extension${WX_COPT:+ (COPT=$WX_COPT)}"
    make -C "$src" -s PG_CONFIG="$WX_PG_CONFIG" ${WX_COPT:+"COPT=$WX_COPT"} ${WX_MAKE_FLAGS:-} >/dev/null
    $WX_SUDO make -C "$src" -s PG_CONFIG="$WX_PG_CONFIG" ${WX_COPT:+"COPT=$WX_COPT"} \
        ${WX_MAKE_FLAGS:-} install >/dev/null
}

# Run a command as the cluster's OS user.
wx_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- env PATH="$PATH" "$@"
    else
        "$@"
    fi
}

# CREATE EXTENSION and the default wxpay_config row for the simulator's
# public-key merchant, in database ${1:-postgres}.  psql reads the keys from
# the PKI files, so they are never typed into SQL; backup_base_url is NULL,
# so nothing ever fails over to WeChat Pay's real backup domain.
wx_setup_config() {
    wx_as_pg env WXPAY_PKI="$WXPAY_PKI" WXPAY_SIM_URL="$WXPAY_SIM_URL" \
        psql -X -q -v ON_ERROR_STOP=1 -d "${1:-postgres}" -f - <<'SQL'
CREATE EXTENSION wxpay_signplan;
\set key `cat "$WXPAY_PKI/merchant.key"`
\set serial `cat "$WXPAY_PKI/merchant_serial.txt"`
\set pubkey_id `cat "$WXPAY_PKI/pub_key_id.txt"`
\set pubkey `cat "$WXPAY_PKI/platform_pub.pem"`
\set ca `cat "$WXPAY_PKI/ca.crt"`
\getenv sim_url WXPAY_SIM_URL
INSERT INTO wxpay_config (mchid, serial_no, private_key, wechatpay_public_key_id,
                          wechatpay_public_key, base_url, ca_cert, backup_base_url)
VALUES ('1900000001', :'serial', :'key', :'pubkey_id', :'pubkey', :'sim_url', :'ca', NULL);
SQL
}

# Scratch directory, test PKI and the simulator.  Exports WXPAY_PKI,
# WXPAY_SIM_URL, WXPAY_SIM_CONTROL.
wx_start_sim() {
    wx_make_work
    bash "$WX_ROOT/test/pki.sh" "$WX_WORK/pki" >/dev/null

    mkfifo "$WX_WORK/sim.fifo"
    node "$WX_ROOT/test/sim/simulator.js" --pki "$WX_WORK/pki" ${WX_SIM_ARGS:-} \
        >"$WX_WORK/sim.fifo" 2>"$WX_WORK/sim.log" &
    WX_SIM_PID=$!
    exec 9<"$WX_WORK/sim.fifo"
    local line=""
    # blocks until the simulator listens (or exits)
    read -r -t 60 line <&9 || true
    case "$line" in
        READY*) ;;
        *) echo "simulator did not start:"; cat "$WX_WORK/sim.log"; return 1 ;;
    esac
    local port=${line#*port=}; port=${port%% *}
    local control=${line#*control=}
    export WXPAY_PKI="$WX_WORK/pki"
    export WXPAY_SIM_URL="https://127.0.0.1:$port"
    export WXPAY_SIM_CONTROL="http://127.0.0.1:$control"
}

# A private cluster listening on a Unix socket in the scratch directory.
wx_start_cluster() {
    export PGDATA="$WX_WORK/data" PGHOST="$WX_WORK" PGPORT=$((50000 + RANDOM % 10000)) PGUSER=postgres
    wx_as_pg initdb -D "$PGDATA" -U postgres -A trust --no-sync >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$WX_WORK'
port = $PGPORT
fsync = off
${WX_PG_CONF:-}
CONF
    wx_as_pg pg_ctl -D "$PGDATA" -l "$WX_WORK/postgres.log" -w start >/dev/null
    WX_CLUSTER_UP=1
}

# Run the pg_regress files and the TAP tests ("make installcheck", the
# TAP clusters started from the same server) on a copy of the tree that
# the postgres OS user may write into.  The TAP files run WX_PROVE_JOBS at once
# (default 3: on 2 cores most of a TAP file's time is spent waiting for its
# servers, workers and simulator, so three keep both cores busy).  Returns non-zero on any failure,
# after printing the diffs and the tails of the TAP logs.
wx_run_suite() {
    local status=0
    # WX_MAKE_ARGS is shell words: REGRESS='01_setup 03_stop' stays one
    eval "local -a margs=(${WX_MAKE_ARGS:-})"
    wx_copy_tree "$WX_WORK/tree"
    [ "$(id -u)" = 0 ] && chown -R postgres "$WX_WORK/tree"
    if ! (cd "$WX_WORK/tree" &&
          wx_as_pg env WXPAY_PKI="$WXPAY_PKI" WXPAY_SIM_URL="$WXPAY_SIM_URL" \
            WXPAY_SIM_CONTROL="$WXPAY_SIM_CONTROL" PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER=postgres \
            WX_PROVE_JOBS="${WX_PROVE_JOBS:-3}" \
            ${WXPAY_RANDOM_SCHEDULES:+WXPAY_RANDOM_SCHEDULES="$WXPAY_RANDOM_SCHEDULES"} \
            ${WXPAY_RANDOM_SEED:+WXPAY_RANDOM_SEED="$WXPAY_RANDOM_SEED"} \
            ${WX_SANITIZE:+WXPAY_SANITIZER=1} make -s PG_CONFIG="$WX_PG_CONFIG" installcheck "${margs[@]}"); then
        status=1
        [ -f "$WX_WORK/tree/regression.diffs" ] && cat "$WX_WORK/tree/regression.diffs"
        for f in "$WX_WORK"/tree/tmp_check/log/regress_log_*; do
            [ -f "$f" ] && { echo "---- $f (tail)"; tail -n 40 "$f"; }
        done
        # Last, so that output cut short (CI keeps the end) still names
        # every failed assertion and what the test printed after it.
        echo "---- failed tests"
        for f in "$WX_WORK"/tree/tmp_check/log/regress_log_*; do
            [ -f "$f" ] && grep -q '^not ok' "$f" &&
                { echo "-- $(basename "$f")"; grep -A 25 '^not ok' "$f" | head -n 120; }
        done
        wx_replay_lines "${margs[@]}"
    fi
    return $status
}

# Prints, last, one "replay:" line per failed part of the suite: the exact
# command that runs that part alone (a random test's seed included), as
# WX_REPLAY_CMD (default "bash test/run.sh") runs the suite.  With
# WX_REPLAY_FILE set, the lines are appended there too (test/all.sh prints
# them after its verdict, so that they are the last lines CI shows).
# $@: the make arguments of the failed run.
wx_replay_lines() {
    local cmd=${WX_REPLAY_CMD:-bash test/run.sh} f name seed regress="" lines="" extra="" a
    for a in "$@"; do
        case $a in REGRESS=*|PROVE_TESTS=*|TAP_TESTS=*) ;; *) extra="$extra $a" ;; esac
    done
    if [ -f "$WX_WORK/tree/regression.diffs" ]; then
        # 01_setup first (the others need it), then each failed file
        regress=$(sed -n 's|^diff .* [^ ]*/expected/\([^ /]*\)\.out .*|\1|p' \
            "$WX_WORK/tree/regression.diffs" | sed 's/_[0-9]*$//' | sort -u |
            { grep -vx 01_setup || true; } | tr '\n' ' ')
        lines="${lines}replay: WX_MAKE_ARGS=\"TAP_TESTS= REGRESS='01_setup${regress:+ ${regress% }}'$extra\" $cmd"$'\n'
    fi
    for f in "$WX_WORK"/tree/tmp_check/log/regress_log_*; do
        [ -f "$f" ] || continue
        grep -qE '^not ok|^# Looks like your test (exited|died)|^Bail out' "$f" || continue
        name=${f##*/regress_log_}
        seed=$(grep -oE 'WXPAY_RANDOM_SEED=[0-9]+' "$f" | head -n 1 || true)
        lines="${lines}replay: ${seed:+$seed }WX_MAKE_ARGS=\"REGRESS= PROVE_TESTS='test/t/$name.pl'$extra\" $cmd"$'\n'
    done
    [ -n "$lines" ] || lines="replay: ${WX_MAKE_ARGS:+WX_MAKE_ARGS=\"$WX_MAKE_ARGS\" }$cmd"$'\n'
    echo "---- replay (each failed part alone)"
    printf '%s' "$lines"
    if [ -n "${WX_REPLAY_FILE:-}" ]; then printf '%s' "$lines" >>"$WX_REPLAY_FILE"; fi
}

# The fuzz targets' C entry points run once over every stored input (seed
# corpus and the inputs of past crashes), built with gcc and its address and
# undefined-behaviour sanitizers: the crashes fuzzing ever found stay fixed
# without needing clang.
wx_fuzz_replay() {
    local out="$WX_WORK/fuzz-replay" t inc
    mkdir -p "$out"
    inc=$("$WX_PG_CONFIG" --includedir-server)
    wx_log "replaying the fuzz corpora"
    for t in "$WX_ROOT"/test/fuzz/fuzz_*.c; do
        t=$(basename "$t" .c)
        gcc -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -Wall -Wextra -Werror \
            -I"$WX_ROOT/src/protocol" -isystem "$inc" -DWXPAY_FUZZ_REPLAY \
            -o "$out/$t" "$WX_ROOT/test/fuzz/$t.c" "$WX_ROOT/test/fuzz/replay.c" \
            "$WX_ROOT/src/protocol/protocol.c" || return 1
        ASAN_OPTIONS=detect_leaks=1 "$out/$t" "$WX_ROOT/test/fuzz/corpus/$t" \
            "$WX_ROOT/test/fuzz/regressions/$t" || return 1
    done
}

# Sanitized server: the postgres program of the private installation is
# replaced by a wrapper that preloads gcc's AddressSanitizer runtime (the
# server itself is not instrumented; the extension is, with WX_COPT) and
# sets the sanitizer options.  Every postmaster started from this
# installation gets it: the suite's cluster, every TAP test's clusters and
# initdb's bootstrap runs.  Reports go to $WX_SAN_DIR.
WX_SAN_COPT="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
wx_sanitize_server() {
    local bindir asan
    bindir=$("$WX_PG_CONFIG" --bindir)
    asan=$(readlink -f "$(gcc -print-file-name=libasan.so)")
    WX_SAN_DIR="$WX_WORK/sanitizer"
    mkdir -p "$WX_SAN_DIR"
    chmod 1777 "$WX_SAN_DIR"
    # Debian's gcc 12 runtime, when preloaded, deadlocks in the constructor
    # of libp11-kit (which the server links through GnuTLS): it calls
    # newlocale(), which holds glibc's locale lock while its malloc starts
    # the runtime, whose dlsym("swift_demangle") failure then translates
    # the dlerror() message under the same lock.  Providing the symbol (a
    # demangler that demangles nothing) avoids the failing lookup.
    printf '%s\n' '#include <stddef.h>' \
        'char *swift_demangle(const char *, size_t, char *, size_t *, unsigned);' \
        'char *swift_demangle(const char *n, size_t l, char *o, size_t *ol, unsigned f)' \
        '{ (void) n; (void) l; (void) o; (void) ol; (void) f; return NULL; }' \
        >"$WX_WORK/san-shim.c"
    gcc -shared -fPIC -o "$WX_WORK/san-shim.so" "$WX_WORK/san-shim.c"
    mv "$bindir/postgres" "$bindir/postgres.unwrapped"
    cat >"$bindir/postgres" <<WRAP
#!/bin/bash
# test/lib.sh wx_sanitize_server: the server with the ASan runtime preloaded
export LD_PRELOAD="$asan:$WX_WORK/san-shim.so\${LD_PRELOAD:+:\$LD_PRELOAD}"
export ASAN_OPTIONS="log_path=$WX_SAN_DIR/asan:abort_on_error=1:halt_on_error=1:detect_leaks=\${WX_SAN_LEAKS:-1}:leak_check_at_exit=1:exitcode=0:verify_asan_link_order=0:detect_odr_violation=0:print_suppressions=0"
export UBSAN_OPTIONS="log_path=$WX_SAN_DIR/ubsan:print_stacktrace=1:halt_on_error=1:abort_on_error=1"
exec -a "\$0" "\${0%/*}/postgres.unwrapped" "\$@"
WRAP
    chmod 755 "$bindir/postgres"
}

# Everything the suite and the demo need, in order.  With WX_PRIVATE_PG=1
# the extension goes into a private copy of the server (the test suite);
# otherwise into the system's PostgreSQL (the demo: it is the install).
wx_prepare() {
    wx_install_deps
    if [ -n "${WX_PRIVATE_PG:-}" ]; then wx_private_pg; fi
    if [ -n "${WX_SANITIZE:-}" ]; then
        WX_COPT="$WX_SAN_COPT${WX_COPT:+ $WX_COPT}"
        wx_sanitize_server
    fi
    wx_build_install
    wx_start_sim
    wx_start_cluster
}

wx_cleanup() {
    if [ -n "${WX_CLUSTER_UP:-}" ]; then
        wx_as_pg pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ -n "${WX_SIM_PID:-}" ]; then
        kill "$WX_SIM_PID" 2>/dev/null || true
        wait "$WX_SIM_PID" 2>/dev/null || true
    fi
    if [ -n "${WX_KEEP:-}" ]; then
        echo "kept $WX_WORK" >&2
    elif [ -n "${WX_WORK:-}" ]; then
        rm -rf "$WX_WORK"
    fi
}
