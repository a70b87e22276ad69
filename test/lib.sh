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

if [ "$(id -u)" = 0 ]; then WX_SUDO=""; else WX_SUDO="sudo"; fi

wx_log() { printf '== %s\n' "$*" >&2; }

# Install the Debian packages that are not there yet.
wx_install_deps() {
    local missing=""
    for p in $WX_PACKAGES; do
        if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        wx_log "installing:$missing"
        $WX_SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $WX_SUDO apt-get install -y -qq $missing >/dev/null
    fi
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

wx_build_install() {
    wx_log "building and installing the extension"
    make -C "$WX_ROOT" -s PG_CONFIG="$WX_PG_CONFIG" ${WX_MAKE_FLAGS:-} >/dev/null
    $WX_SUDO make -C "$WX_ROOT" -s PG_CONFIG="$WX_PG_CONFIG" ${WX_MAKE_FLAGS:-} install >/dev/null
}

# Run a command as the cluster's OS user.
wx_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- env PATH="$PATH" "$@"
    else
        "$@"
    fi
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

# Everything the suite and the demo need, in order.  With WX_PRIVATE_PG=1
# the extension goes into a private copy of the server (the test suite);
# otherwise into the system's PostgreSQL (the demo: it is the install).
wx_prepare() {
    wx_install_deps
    if [ -n "${WX_PRIVATE_PG:-}" ]; then wx_private_pg; fi
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
