#!/usr/bin/env bash
# Back up a PostgreSQL database to $BACKUP_DIR/amani_backup_YYYYmmdd_HHMMSS.sql.gz.
#
#   DATABASE_URL=postgresql://user:pass@db:5432/amani ./backup_database.sh
#   PGHOST=db PGUSER=amani PGDATABASE=amani ./backup_database.sh
#
# The dump is plain SQL made with `pg_dump --clean --if-exists --no-owner --no-privileges`,
# gzipped. It is written to a hidden temporary file next to its final name, checked
# (gzip integrity, pg_dump's own start and "complete" markers) and only then renamed into
# place, so a backup that exists is a whole one. Any failure exits non-zero and removes the
# temporary file. The timestamp in the name is UTC.
#
# Settings (environment):
#   DATABASE_URL            libpq URI; a SQLAlchemy-style "postgresql+asyncpg://" scheme is
#                           accepted. Unset: the usual PGHOST, PGPORT, PGUSER, PGPASSWORD,
#                           PGDATABASE variables (and ~/.pgpass) apply.
#   BACKUP_DIR              where backups go (default ./backups, created mode 700)
#   BACKUP_RETENTION_DAYS   delete backups older than this many days (default 7; 0 keeps all)
#   BACKUP_RETENTION_COUNT  keep only this many newest backups (default 0: no count limit)
# The backup just written is never deleted by pruning; other files in BACKUP_DIR are left alone.
#
# Exit status: 0 success (the new file's path on stdout), 1 failure, 2 bad usage or settings.
set -euo pipefail

readonly PROG="${0##*/}"
# Backups hold the whole database: readable by their owner only.
umask 077

# shellcheck source=_pg_common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/_pg_common.sh"

if [[ $# -gt 0 ]]; then
    case "$1" in
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        *) die 2 "unexpected argument '$1' (this script takes none; see --help)" ;;
    esac
fi

BACKUP_DIR="${BACKUP_DIR:-./backups}"
BACKUP_RETENTION_DAYS="${BACKUP_RETENTION_DAYS:-7}"
BACKUP_RETENTION_COUNT="${BACKUP_RETENTION_COUNT:-0}"

[[ "$BACKUP_RETENTION_DAYS" =~ ^[0-9]+$ ]] ||
    die 2 "BACKUP_RETENTION_DAYS='$BACKUP_RETENTION_DAYS' must be a whole number of days (0 keeps all)"
[[ "$BACKUP_RETENTION_COUNT" =~ ^[0-9]+$ ]] ||
    die 2 "BACKUP_RETENTION_COUNT='$BACKUP_RETENTION_COUNT' must be a whole number (0: no limit)"
[[ -n "$BACKUP_DIR" ]] || die 2 "BACKUP_DIR must not be empty"
# Base 10 even with leading zeros ("08" would otherwise be an invalid octal number).
BACKUP_RETENTION_DAYS=$((10#$BACKUP_RETENTION_DAYS))
BACKUP_RETENTION_COUNT=$((10#$BACKUP_RETENTION_COUNT))

for tool in pg_dump gzip awk; do
    command -v "$tool" >/dev/null 2>&1 ||
        die 1 "$tool not found on PATH (pg_dump comes with the PostgreSQL client, e.g. apt-get install postgresql-client)"
done

connection_target

mkdir -p -- "$BACKUP_DIR" || die 1 "cannot create BACKUP_DIR '$BACKUP_DIR'"
[[ -w "$BACKUP_DIR" ]] || die 1 "BACKUP_DIR '$BACKUP_DIR' is not writable"

stamp="$(date -u +%Y%m%d_%H%M%S)"
final="$BACKUP_DIR/amani_backup_${stamp}.sql.gz"
[[ ! -e "$final" ]] || die 1 "$final already exists (two backups in the same second?); not overwriting it"

# The temporary file lives in BACKUP_DIR so the final rename is atomic (same file system),
# and starts with a dot so pruning and `ls backups/amani_backup_*` never see it.
tmp="$(mktemp "$BACKUP_DIR/.amani_backup_${stamp}.XXXXXX")" ||
    die 1 "cannot create a temporary file in '$BACKUP_DIR'"
cleanup() {
    rm -f -- "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

note "backing up $target"
if ! pg_dump "${conn_args[@]}" --clean --if-exists --no-owner --no-privileges --format=plain |
    gzip -6 >"$tmp"; then
    die 1 "pg_dump of $target failed (see the message above); no backup written"
fi
gzip -t -- "$tmp" 2>/dev/null || die 1 "the new backup does not read back as gzip; no backup written"
is_complete_dump "$tmp" || die 1 "the new backup is not a complete pg_dump; no backup written"
# Make the data durable before the name appears (GNU sync accepts files; elsewhere, best effort).
sync -- "$tmp" 2>/dev/null || true
mv -f -- "$tmp" "$final" || die 1 "cannot rename the backup into place as $final"
trap - EXIT
note "wrote $final ($(wc -c <"$final" | tr -d ' ') bytes)"

# --- retention ---------------------------------------------------------------------------
# Only files named exactly like ours are considered; the name's timestamp (UTC) gives the age,
# which survives copies that do not keep modification times (cp, object-storage sync).
mapfile -t backups < <(
    find "$BACKUP_DIR" -maxdepth 1 -type f -name 'amani_backup_*.sql.gz' -printf '%f\n' |
        grep -E '^amani_backup_[0-9]{8}_[0-9]{6}\.sql\.gz$' | LC_ALL=C sort -r || true
)
pruned=0
if [[ "$BACKUP_RETENTION_DAYS" -gt 0 ]]; then
    now="$(date -u +%s)"
    cutoff="$(date -u -d "@$((now - BACKUP_RETENTION_DAYS * 86400))" +%Y%m%d_%H%M%S)"
fi
index=0
for name in "${backups[@]}"; do
    index=$((index + 1))
    [[ "$BACKUP_DIR/$name" != "$final" ]] || continue
    name_stamp="${name#amani_backup_}"
    name_stamp="${name_stamp%.sql.gz}"
    too_many=0
    too_old=0
    if [[ "$BACKUP_RETENTION_COUNT" -gt 0 && "$index" -gt "$BACKUP_RETENTION_COUNT" ]]; then
        too_many=1
    fi
    if [[ "$BACKUP_RETENTION_DAYS" -gt 0 && "$name_stamp" < "$cutoff" ]]; then
        too_old=1
    fi
    if [[ "$too_many" -eq 1 || "$too_old" -eq 1 ]]; then
        rm -f -- "${BACKUP_DIR:?}/$name"
        pruned=$((pruned + 1))
    fi
done
if [[ "$pruned" -gt 0 ]]; then
    note "pruned $pruned old backup(s) (BACKUP_RETENTION_DAYS=$BACKUP_RETENTION_DAYS, BACKUP_RETENTION_COUNT=$BACKUP_RETENTION_COUNT)"
fi

printf '%s\n' "$final"
