"""examples/scripts/backup_database.sh and restore_database.sh against a real PostgreSQL.

The module starts its own server: `initdb` + `pg_ctl` on a temporary directory, listening on
127.0.0.1 and a free port, with its socket inside that directory. PostgreSQL refuses to run as
root, so when the tests run as root (CI, containers) the server runs as the `postgres` system
user (or `nobody`) and owns its directory; the scripts under test run as the current user and
connect over TCP, as an operator's would. Every wait is bounded.
"""

from __future__ import annotations

import glob
import gzip
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support import ROOT

pytestmark = pytest.mark.integration

SCRIPTS = ROOT / "examples" / "scripts"
BACKUP = SCRIPTS / "backup_database.sh"
RESTORE = SCRIPTS / "restore_database.sh"
BACKUP_NAME = re.compile(r"amani_backup_\d{8}_\d{6}\.sql\.gz")
# Seconds any one command (initdb, pg_ctl, a script, psql) may take.
COMMAND_TIMEOUT = 60


def _client_environment() -> dict[str, str]:
    """os.environ without libpq's PG* variables, so the caller's PGSSLMODE, PGHOST or
    PGPASSWORD cannot redirect or break the connections made here."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _postgres_bindir() -> Path | None:
    """The server binaries' directory: pg_config's answer, else the newest Debian one."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
        )
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))

    def major(path: str) -> int:
        match = re.search(r"/(\d+)/bin$", path)
        return int(match.group(1)) if match else 0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major)[::-1]]
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    return None


def _require_postgres() -> Path:
    """Like require_binary(): skip locally without PostgreSQL, fail when CI is set."""
    bindir = _postgres_bindir()
    missing = [
        tool for tool in ("psql", "pg_dump") if bindir is None or not (bindir / tool).is_file()
    ]
    if bindir is None or missing or shutil.which("gzip") is None:
        message = (
            "PostgreSQL server and client binaries (initdb, pg_ctl, postgres, psql, pg_dump) "
            "and gzip are needed (.ci/run installs postgresql with apt-get)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return bindir


@dataclass
class PostgresServer:
    bindir: Path
    port: int
    user: str = "amani"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        """Run SQL as the superuser; return unaligned, tuples-only output."""
        result = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-qAt",
                "-v",
                "ON_ERROR_STOP=1",
                f"--dbname={self.url(database)}",
                "-c",
                sql,
            ],
            env=_client_environment(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.psql("postgres", f'DROP DATABASE "{name}" WITH (FORCE)')


def _server_account() -> tuple[int, int] | None:
    """The (uid, gid) to run the server as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    pytest.fail("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _reachable_temp_root(account: tuple[int, int] | None) -> str | None:
    """The usual temporary directory, unless the server user could not get through it."""
    default = Path(tempfile.gettempdir())
    if account is None:
        return None
    if all(os.stat(p).st_mode & 0o001 for p in (default, *default.parents)):
        return None
    return "/tmp"


def _run_as(account: tuple[int, int] | None, args: list[str], log: Path) -> None:
    kwargs: dict[str, object] = {}
    if account is not None:
        kwargs = {"user": account[0], "group": account[1], "extra_groups": []}
    with log.open("ab") as out:
        result = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            env=_client_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server on 127.0.0.1, stopped and deleted afterwards."""
    bindir = _require_postgres()
    account = _server_account()
    # Not pytest's tmp_path: its parents are private to root, and the server user must reach it.
    base = Path(tempfile.mkdtemp(prefix="amani-pg-", dir=_reachable_temp_root(account)))
    if account is not None:
        os.chown(base, *account)
    data, sockets, log = base / "data", base / "sockets", base / "server.log"
    port = free_port()
    server = PostgresServer(bindir=bindir, port=port)
    try:
        _run_as(account, ["mkdir", str(sockets)], base / "setup.log")
        _run_as(
            account,
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                server.user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            base / "setup.log",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        _run_as(
            account,
            [
                str(bindir / "pg_ctl"),
                "--pgdata",
                str(data),
                "--log",
                str(log),
                "--options",
                options,
                "--wait",
                "--timeout",
                "30",
                "start",
            ],
            base / "setup.log",
        )
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            _run_as(
                account,
                [
                    str(bindir / "pg_ctl"),
                    "--pgdata",
                    str(data),
                    "--mode",
                    "immediate",
                    "--wait",
                    "--timeout",
                    "30",
                    "stop",
                ],
                base / "setup.log",
            )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database named after the test, dropped afterwards."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    postgres.create_database(name)
    yield name
    postgres.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Awkward values on purpose: NULLs, quotes, backslashes, tabs, newlines, non-ASCII, arrays,
# JSON, exact decimals and timestamps must all survive the round trip.
SCHEMA_AND_DATA = r"""
CREATE TABLE customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    note text,
    balance numeric(14, 2) NOT NULL DEFAULT 0,
    tags text[],
    profile jsonb,
    created_at timestamptz NOT NULL
);
CREATE TABLE payments (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    amount numeric(14, 2) NOT NULL CHECK (amount > 0),
    provider text NOT NULL
);
CREATE INDEX payments_provider ON payments (provider);
CREATE VIEW customer_totals AS
    SELECT c.id, c.name, coalesce(sum(p.amount), 0) AS total
    FROM customers c LEFT JOIN payments p ON p.customer_id = c.id GROUP BY c.id, c.name;
INSERT INTO customers (name, note, balance, tags, profile, created_at) VALUES
    ('Ada O''Neil', E'line one\nline two\ttabbed \\ backslash', 1234.56, '{vip,"with space"}',
     '{"kyc": "verified", "limits": [1, 2.5, null]}', '2025-01-22 14:30:00+00'),
    ('Zoë Ñandú 漢字 🚀', NULL, -0.01, '{}', NULL, '1999-12-31 23:59:59.999999+00'),
    ('\.', '\.', 0, NULL, '"just a string"', '2025-06-01 00:00:00+00');
INSERT INTO customers (name, balance, created_at)
    SELECT 'bulk ' || g, g * 1.25, timestamptz '2025-01-01' + g * interval '1 minute'
    FROM generate_series(1, 2000) AS g;
INSERT INTO payments (customer_id, amount, provider)
    SELECT 1 + g % 2003, 10 + g % 97, (ARRAY['fincra', 'stripe', 'paystack'])[1 + g % 3]
    FROM generate_series(1, 3000) AS g;
"""


def snapshot(postgres: PostgresServer, database: str) -> dict[str, str]:
    """Every row of every table and view, in a fixed order, plus the sequences' positions."""
    tables = postgres.psql(
        database,
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' ORDER BY table_name",
    ).split()
    state = {
        name: postgres.psql(database, f"COPY (SELECT * FROM {name} ORDER BY 1) TO STDOUT")
        for name in tables
    }
    state["sequences"] = postgres.psql(
        database,
        "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1",
    )
    return state


def run_script(
    script: Path, *args: str, cwd: Path, env: dict[str, str], bindir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    path = os.environ.get("PATH", "")
    if bindir is not None:
        # The client matching the server, ahead of whatever else is installed.
        path = f"{bindir}{os.pathsep}{path}"
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=cwd,
        env={**_client_environment(), "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def backups_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def make_backup(postgres: PostgresServer, database: str, tmp_path: Path, **env: str) -> Path:
    result = run_script(
        BACKUP,
        cwd=tmp_path,
        env={"DATABASE_URL": postgres.url(database), **env},
        bindir=postgres.bindir,
    )
    assert result.returncode == 0, result.stderr
    return tmp_path / result.stdout.strip()


def test_backup_destroy_restore_gives_back_every_row(
    postgres: PostgresServer, database: str, tmp_path: Path
) -> None:
    """A backup restored into a re-created database is identical, row for row."""
    postgres.psql(database, SCHEMA_AND_DATA)
    before = snapshot(postgres, database)
    assert sorted(before) == ["customer_totals", "customers", "payments", "sequences"]
    assert len(before["customers"].splitlines()) == 2003
    # A SQLAlchemy-style URL with a password: accepted, and the password never printed.
    url = postgres.url(database).replace(
        "postgresql://amani@", "postgresql+asyncpg://amani:s3cret@"
    )

    backup = run_script(BACKUP, cwd=tmp_path, env={"DATABASE_URL": url}, bindir=postgres.bindir)

    assert backup.returncode == 0, backup.stderr
    written = Path(backup.stdout.strip())
    assert written.parent == Path("./backups")
    assert BACKUP_NAME.fullmatch(written.name)
    assert backups_in(tmp_path / "backups") == [written.name]  # no temporary file left
    assert (tmp_path / written).stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in backup.stderr
    assert "amani:***@127.0.0.1" in backup.stderr
    with gzip.open(tmp_path / written, "rt", encoding="utf-8") as dump:
        text = dump.read()
    assert "-- PostgreSQL database dump complete" in text

    postgres.drop_database(database)
    postgres.create_database(database)
    assert snapshot(postgres, database) == {"sequences": ""}

    restore = run_script(
        RESTORE,
        str(written),
        cwd=tmp_path,
        env={"DATABASE_URL": url},
        bindir=postgres.bindir,
    )

    assert restore.returncode == 0, restore.stderr
    assert "s3cret" not in restore.stderr
    assert snapshot(postgres, database) == before
    # The sequences carry on where they were, so new rows do not collide with restored ones.
    assert (
        postgres.psql(
            database, "INSERT INTO customers (name, created_at) VALUES ('new', now()) RETURNING id"
        )
        == "2004\n"
    )


def _truncated_gzip(dump: bytes) -> bytes:
    packed = gzip.compress(dump)
    return packed[: len(packed) // 2]


def _dump_without_end_marker(dump: bytes) -> bytes:
    return gzip.compress(dump.replace(b"-- PostgreSQL database dump complete", b""))


BAD_FILES = {
    "missing": (None, "does not exist"),
    "empty": (lambda dump: b"", "is empty"),
    "truncated gzip": (_truncated_gzip, "is not a valid gzip file"),
    "not gzip": (lambda dump: dump, "is not a valid gzip file"),
    "gzip of something else": (
        lambda dump: gzip.compress(b"DROP TABLE customers;\n"),
        "is not a complete pg_dump SQL dump",
    ),
    "dump cut before its end": (_dump_without_end_marker, "is not a complete pg_dump SQL dump"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_backup_file_is_refused_before_touching_the_database(
    postgres: PostgresServer, database: str, tmp_path: Path, kind: str
) -> None:
    """Missing, empty, corrupt or incomplete files are refused; even --force changes nothing."""
    postgres.psql(database, SCHEMA_AND_DATA)
    good = make_backup(postgres, database, tmp_path)
    postgres.psql(database, "UPDATE customers SET balance = 0; DELETE FROM payments;")
    before = snapshot(postgres, database)
    make_bad, reason = BAD_FILES[kind]
    bad = tmp_path / "bad.sql.gz"
    if make_bad is not None:
        bad.write_bytes(make_bad(gzip.decompress(good.read_bytes())))

    result = run_script(
        RESTORE,
        "--force",
        str(bad),
        cwd=tmp_path,
        env={"DATABASE_URL": postgres.url(database)},
        bindir=postgres.bindir,
    )

    assert result.returncode == 1
    assert result.stderr == f"restore_database.sh: error: refusing to restore: '{bad}' {reason}" + (
        " (corrupt or truncated)\n"
        if "gzip" in reason
        else " (no start or end marker)\n"
        if "pg_dump" in reason
        else "\n"
    )
    assert snapshot(postgres, database) == before


def test_non_empty_target_is_refused_without_force_and_replaced_with_it(
    postgres: PostgresServer, database: str, tmp_path: Path
) -> None:
    """Without --force a database holding tables is left alone; with it, the backup wins."""
    postgres.psql(database, SCHEMA_AND_DATA)
    backed_up = snapshot(postgres, database)
    backup = make_backup(postgres, database, tmp_path)
    postgres.psql(
        database,
        "UPDATE customers SET name = 'changed'; DELETE FROM payments WHERE id > 10;"
        "CREATE TABLE unrelated (id int); INSERT INTO unrelated VALUES (7);",
    )
    changed = snapshot(postgres, database)
    env = {"DATABASE_URL": postgres.url(database)}

    refused = run_script(RESTORE, str(backup), cwd=tmp_path, env=env, bindir=postgres.bindir)

    assert refused.returncode == 1
    assert "is not empty (6 relations, e.g. public.customer_totals, public.customers," in (
        refused.stderr
    )
    assert "pass --force" in refused.stderr
    assert snapshot(postgres, database) == changed

    forced = run_script(
        RESTORE, "--force", str(backup), cwd=tmp_path, env=env, bindir=postgres.bindir
    )

    assert forced.returncode == 0, forced.stderr
    after = snapshot(postgres, database)
    # Everything the backup holds is back; what it never knew about is left alone.
    assert after.pop("unrelated") == "7\n"
    assert after == backed_up


def test_failing_restore_is_rolled_back_entirely(
    postgres: PostgresServer, database: str, tmp_path: Path
) -> None:
    """A restore that fails half-way (after dropping the tables) leaves the database as it was."""
    postgres.psql(database, SCHEMA_AND_DATA)
    backup = make_backup(postgres, database, tmp_path)
    postgres.psql(database, "UPDATE customers SET note = 'after the backup' WHERE id = 2")
    before = snapshot(postgres, database)
    # A well-formed dump whose last statement fails, long after its DROP and COPY statements.
    dump = gzip.decompress(backup.read_bytes())
    end = b"--\n-- PostgreSQL database dump complete"
    assert dump.count(end) == 1
    broken = tmp_path / "broken.sql.gz"
    broken.write_bytes(gzip.compress(dump.replace(end, b"SELECT 1 / 0;\n\n" + end)))

    result = run_script(
        RESTORE,
        "--force",
        str(broken),
        cwd=tmp_path,
        env={"DATABASE_URL": postgres.url(database)},
        bindir=postgres.bindir,
    )

    assert result.returncode == 1
    assert "division by zero" in result.stderr
    assert result.stderr.endswith(
        "restore failed (see the message above); the transaction was rolled back and "
        f"{postgres.url(database)} is unchanged\n"
    )
    assert snapshot(postgres, database) == before


def test_failed_backup_leaves_no_file_behind(postgres: PostgresServer, tmp_path: Path) -> None:
    """pg_dump failing (here: no such database) exits 1 and writes nothing into BACKUP_DIR."""
    result = run_script(
        BACKUP,
        cwd=tmp_path,
        env={"DATABASE_URL": postgres.url("no_such_database"), "BACKUP_DIR": "out"},
        bindir=postgres.bindir,
    )

    assert result.returncode == 1
    assert 'database "no_such_database" does not exist' in result.stderr
    assert result.stderr.endswith("failed (see the message above); no backup written\n")
    assert result.stdout == ""
    assert backups_in(tmp_path / "out") == []


def _stamp(days_ago: float) -> str:
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(time.time() - days_ago * 86400))


def test_retention_prunes_by_age_then_by_count(
    postgres: PostgresServer, database: str, tmp_path: Path
) -> None:
    """Old backups go by BACKUP_RETENTION_DAYS and BACKUP_RETENTION_COUNT; other files stay."""
    postgres.psql(database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    directory = tmp_path / "kept"
    directory.mkdir()
    old = [f"amani_backup_{_stamp(days)}.sql.gz" for days in (30, 8, 6, 1)]
    others = ["notes.txt", "amani_backup_latest.sql.gz", "amani_backup_20200101_000000.sql"]
    for name in old + others:
        (directory / name).write_bytes(b"placeholder")

    first = make_backup(postgres, database, tmp_path, BACKUP_DIR="kept", BACKUP_RETENTION_DAYS="7")

    assert backups_in(directory) == sorted([*old[2:], first.name, *others])
    time.sleep(1.1)  # the next backup needs a new second for its name

    second = make_backup(
        postgres,
        database,
        tmp_path,
        BACKUP_DIR="kept",
        BACKUP_RETENTION_DAYS="0",
        BACKUP_RETENTION_COUNT="2",
    )

    assert backups_in(directory) == sorted([first.name, second.name, *others])


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BACKUP_RETENTION_DAYS", "a week", "must be a whole number of days (0 keeps all)"),
        ("BACKUP_RETENTION_COUNT", "-1", "must be a whole number (0: no limit)"),
    ],
)
def test_bad_retention_setting_is_a_usage_error(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    """A retention value that is not a whole number stops the backup with status 2."""
    result = run_script(BACKUP, cwd=tmp_path, env={name: value})

    assert result.returncode == 2
    assert result.stderr == f"backup_database.sh: error: {name}='{value}' {message}\n"
    assert backups_in(tmp_path / "backups") == []


def test_unreachable_database_is_reported_and_nothing_is_restored(
    postgres: PostgresServer, database: str, tmp_path: Path
) -> None:
    """A good file and a server that does not answer: exit 1, with libpq's reason."""
    postgres.psql(database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    backup = make_backup(postgres, database, tmp_path)
    closed = f"postgresql://amani:s3cret@127.0.0.1:{free_port()}/{database}"

    result = run_script(
        RESTORE, str(backup), cwd=tmp_path, env={"DATABASE_URL": closed}, bindir=postgres.bindir
    )

    assert result.returncode == 1
    assert result.stderr.startswith(
        "restore_database.sh: error: cannot query postgresql://amani:***@127.0.0.1:"
    )
    assert "Connection refused" in result.stderr
    assert "s3cret" not in result.stderr


def test_restore_without_a_file_prints_usage(tmp_path: Path) -> None:
    result = run_script(RESTORE, cwd=tmp_path, env={})

    assert result.returncode == 2
    assert result.stderr == (
        "restore_database.sh: error: usage: restore_database.sh [--force] BACKUP_FILE.sql.gz\n"
    )


def test_the_demo_store_runs_on_postgresql(postgres: PostgresServer, database: str) -> None:
    """DATABASE_URL=postgresql://... works with the demo extra's driver (psycopg 3)."""
    from examples.demo_app.store import Store

    store = Store(postgres.url(database))
    try:
        store.add_transaction("tx-1", "hold", 250.5)
        store.add_user("u-1", "ada@example.com")
        assert store.get_transaction("tx-1") == {"id": "tx-1", "type": "hold", "amount": 250.5}
        assert store.get_transaction("missing") is None
    finally:
        store.engine.dispose()
    assert postgres.psql(database, "SELECT email FROM users") == "ada@example.com\n"
