#!/usr/bin/env bash
# Restore a backup made by backup_database.sh into a PostgreSQL database, all or nothing.
#
#   DATABASE_URL=postgresql://user:pass@db:5432/amani ./restore_database.sh FILE
#   ./restore_database.sh --force FILE     # the target already holds tables: replace them
#
# Before connecting to anything, FILE must exist, be non-empty, pass `gzip -t` and contain
# pg_dump's opening and closing markers; otherwise the script stops with the reason and the
# database is never touched.
#
# A target that already holds tables, views or sequences is refused unless --force is given.
# With --force, every object the backup contains is dropped and recreated from it (the backup
# was made with --clean --if-exists); objects the backup does not know are left alone.
#
# The whole restore is one transaction: the first failing statement stops psql
# (ON_ERROR_STOP) and nothing is committed, so a failed restore leaves the database exactly
# as it was.
#
# Settings (environment): DATABASE_URL (a libpq URI; "postgresql+asyncpg://" accepted), or the
# usual PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE variables when it is unset.
#
# Exit status: 0 restored, 1 refused or failed (database unchanged), 2 bad usage.
set -euo pipefail

readonly PROG="${0##*/}"

# shellcheck source=_pg_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_pg_common.sh"

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

force=0
file=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -f | --force) force=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            [[ $# -eq 1 ]] || die 2 "expected exactly one backup file after --"
            file="$1"
            ;;
        -*) die 2 "unknown option '$1' (see --help)" ;;
        *)
            [[ -z "$file" ]] || die 2 "expected exactly one backup file, got '$file' and '$1'"
            file="$1"
            ;;
    esac
    shift
done
[[ -n "$file" ]] || die 2 "usage: $PROG [--force] BACKUP_FILE.sql.gz"

# --- the file, checked before the database is contacted -----------------------------------
[[ -e "$file" ]] || die 1 "refusing to restore: '$file' does not exist"
[[ -f "$file" ]] || die 1 "refusing to restore: '$file' is not a regular file"
[[ -r "$file" ]] || die 1 "refusing to restore: '$file' is not readable"
[[ -s "$file" ]] || die 1 "refusing to restore: '$file' is empty"
for tool in psql gzip awk; do
    command -v "$tool" >/dev/null 2>&1 ||
        die 1 "$tool not found on PATH (psql comes with the PostgreSQL client, e.g. apt-get install postgresql-client)"
done
gzip -t -- "$file" 2>/dev/null ||
    die 1 "refusing to restore: '$file' is not a valid gzip file (corrupt or truncated)"
is_complete_dump "$file" ||
    die 1 "refusing to restore: '$file' is not a complete pg_dump SQL dump (no start or end marker)"

# --- the target ---------------------------------------------------------------------------
connection_target
psql_cmd=(psql -X -v ON_ERROR_STOP=1 "${conn_args[@]}")

# User relations (tables, views, materialized views, sequences, foreign tables), leaving out
# system schemas and objects that belong to an extension.
existing_sql="
SELECT count(*) || ' ' || coalesce(string_agg(name, ', ') FILTER (WHERE n <= 5), '')
FROM (
    SELECT quote_ident(ns.nspname) || '.' || quote_ident(c.relname) AS name,
           row_number() OVER (ORDER BY ns.nspname, c.relname) AS n
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND ns.nspname NOT IN ('pg_catalog', 'information_schema')
      AND ns.nspname !~ '^pg_(toast|temp_)'
      AND NOT EXISTS (
          SELECT 1 FROM pg_catalog.pg_depend d
          WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
            AND d.deptype = 'e')
) AS objects"
if ! existing="$("${psql_cmd[@]}" -At -c "$existing_sql" 2>&1)"; then
    die 1 "cannot query $target: ${existing}"
fi
count="${existing%% *}"
names="${existing#* }"
if [[ "$count" -gt 0 && "$force" -eq 0 ]]; then
    die 1 "refusing to restore: $target is not empty ($count relations, e.g. $names); restore into an empty database, or pass --force to replace the objects the backup contains"
fi

# --- the restore, one transaction ---------------------------------------------------------
# Explicit BEGIN/COMMIT rather than psql --single-transaction: psql -1 sends COMMIT when its
# input ends, even if gzip died half-way through the stream. Here COMMIT is only written
# after gzip has produced the whole dump; any SQL error stops psql (ON_ERROR_STOP) and a
# session that ends without COMMIT is rolled back by the server.
note "restoring $file into $target$([[ "$force" -eq 1 ]] && printf ' (--force)')"
if ! {
    printf 'BEGIN;\nSET LOCAL client_min_messages = warning;\n'
    gzip -dc -- "$file" && printf '\nCOMMIT;\n'
} | "${psql_cmd[@]}" -q -f - >/dev/null; then
    die 1 "restore failed (see the message above); the transaction was rolled back and $target is unchanged"
fi
note "restored $file into $target"
