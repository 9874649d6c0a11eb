# Shared by backup_database.sh and restore_database.sh (sourced, not run): messages, the
# connection target, and what makes a dump complete. Expects PROG to be set.

die() {
    local status="$1"
    shift
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit "$status"
}

note() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

# Sets conn_args (for pg_dump/psql) and target (for messages, password masked).
# DATABASE_URL wins; otherwise libpq reads the PG* variables itself.
connection_target() {
    conn_args=()
    target="host=${PGHOST:-<libpq default>} port=${PGPORT:-5432} user=${PGUSER:-<login name>} dbname=${PGDATABASE:-<user name>}"
    if [[ -n "${DATABASE_URL:-}" ]]; then
        local url
        # libpq does not know SQLAlchemy driver suffixes such as postgresql+asyncpg://.
        url="$(printf '%s' "$DATABASE_URL" | sed -E 's#^postgres(ql)?\+[A-Za-z0-9_]+://#postgresql://#')"
        conn_args=("--dbname=$url")
        # Never print the password.
        target="$(printf '%s' "$url" | sed -E 's#^([a-z]+://[^:/@]*):[^@]*@#\1:***@#')"
    fi
}

# A dump is complete only if pg_dump wrote both its opening and its closing comment.
is_complete_dump() {
    gzip -dc -- "$1" | awk '
        NR <= 10 && $0 == "-- PostgreSQL database dump" { head = 1 }
        $0 == "-- PostgreSQL database dump complete" { tail = 1 }
        END { exit !(head && tail) }'
}
