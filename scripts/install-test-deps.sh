#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain: PostgreSQL's
# server programs and psql, which shoal-testkit runs as throwaway servers, and
# faketime, which runs a node with a skewed clock (tests/triggers_kill.rs), and
# iproute2's ip, for network namespaces (tests/store_outage.rs), and
# PgBouncer, which shoal-testkit puts in front of a test server in each pooling
# mode (crates/store/tests/pooler.rs, crates/shoal/tests/failover.rs), and
# Python's croniter, the independent cron implementation that shoal's schedules
# are compared with (crates/core/tests/cron_vixie_differential.rs), and
# schemathesis, which fuzzes a node against its OpenAPI document.
# Idempotent: does nothing when they are already there.
set -euo pipefail

# The same search as shoal-testkit (crates/testkit/src/pg/bins.rs).
server_bindir() {
    local dir
    if [[ -n "${SHOAL_PG_BINDIR:-}" && -x "$SHOAL_PG_BINDIR/postgres" && -x "$SHOAL_PG_BINDIR/initdb" ]]; then
        echo "$SHOAL_PG_BINDIR"
        return 0
    fi
    if dir=$(pg_config --bindir 2>/dev/null) && [[ -x "$dir/postgres" && -x "$dir/initdb" ]]; then
        echo "$dir"
        return 0
    fi
    # Highest version first, compared as numbers (10 > 9.6).
    while read -r dir; do
        if [[ -x "$dir/postgres" && -x "$dir/initdb" ]]; then
            echo "$dir"
            return 0
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5Vr)
    return 1
}

have_psql() {
    command -v psql >/dev/null 2>&1 || [[ -x "$1/psql" ]]
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-test-deps: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

apt_install() {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian's postinst creates a "main" cluster and may start it; the tests run
# their own servers on free ports, so one on 5432 would only use resources.
stop_packaged_clusters() {
    if command -v pg_lsclusters >/dev/null 2>&1; then
        local version name _
        while read -r version name _; do
            as_root pg_ctlcluster "$version" "$name" stop >/dev/null 2>&1 || true
        done < <(pg_lsclusters -h 2>/dev/null || true)
    fi
    as_root service postgresql stop >/dev/null 2>&1 || true
}

did=()
if bindir=$(server_bindir); then
    if ! have_psql "$bindir"; then
        apt_install postgresql-client
        did+=("installed postgresql-client")
    fi
else
    apt_install postgresql
    stop_packaged_clusters
    bindir=$(server_bindir) || {
        echo "install-test-deps: installed postgresql but found no server programs" >&2
        exit 1
    }
    did+=("installed postgresql")
fi

if ! command -v faketime >/dev/null 2>&1; then
    apt_install faketime
    did+=("installed faketime")
fi

# `ip`, which puts a node in a network namespace of its own to cut it off from gossip
# (crates/shoal/tests/common/netns.rs).
if ! command -v ip >/dev/null 2>&1; then
    apt_install iproute2
    did+=("installed iproute2")
fi

# PgBouncer: the tests run their own, as PostgreSQL's user, on free ports. Debian's
# package may start one of its own on 6432 where an init system runs; it is stopped.
if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
    apt_install pgbouncer
    as_root service pgbouncer stop >/dev/null 2>&1 || true
    did+=("installed pgbouncer")
fi

# Python tools, pinned: the cron differential test relies on croniter's
# day_or/implement_cron_bug semantics; schemathesis fuzzes a node against its
# OpenAPI document (crates/shoal/tests/openapi_fuzz.rs).
CRONITER_VERSION=7.0.0
SCHEMATHESIS_VERSION=4.32.5
have_pip_package() { # name version
    python3 -c "import sys; from importlib.metadata import version; sys.exit(version('$1') != '$2')" >/dev/null 2>&1
}
pip_install() { # name version
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-pip
        did+=("installed python3")
    elif ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
        did+=("installed python3-pip")
    fi
    local pip_args=(install --quiet --disable-pip-version-check --no-input)
    # Debian's Python refuses installs outside a venv (PEP 668) unless told; older
    # pips have no such rule and no such option.
    if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
        pip_args+=(--break-system-packages)
    fi
    if [[ $(id -u) -eq 0 ]]; then
        pip_args+=(--root-user-action=ignore)
    else
        pip_args+=(--user)
    fi
    python3 -m pip "${pip_args[@]}" "$1==$2"
    have_pip_package "$1" "$2" || {
        echo "install-test-deps: installed $1 $2 but python3 cannot see it" >&2
        exit 1
    }
    did+=("installed $1 $2")
}
have_pip_package croniter "$CRONITER_VERSION" || pip_install croniter "$CRONITER_VERSION"
have_pip_package schemathesis "$SCHEMATHESIS_VERSION" || pip_install schemathesis "$SCHEMATHESIS_VERSION"
# pip puts scripts where PATH may not look (~/.local/bin for --user installs).
if ! python3 -m schemathesis.cli --version >/dev/null 2>&1 && ! command -v schemathesis >/dev/null 2>&1; then
    echo "install-test-deps: schemathesis is installed but cannot be run" >&2
    exit 1
fi

# shoal-testkit runs PostgreSQL as this user when tests run as root (it refuses
# to run as root); the package creates it, but a hand-made install may not.
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    did+=("created the postgres user")
fi

if [[ ${#did[@]} -eq 0 ]]; then
    echo "install-test-deps: PostgreSQL ($bindir), faketime, ip, pgbouncer, croniter $CRONITER_VERSION and schemathesis $SCHEMATHESIS_VERSION already present; nothing to do"
else
    echo "install-test-deps: $(IFS=,; echo "${did[*]}" | sed 's/,/, /g') ($bindir)"
fi
