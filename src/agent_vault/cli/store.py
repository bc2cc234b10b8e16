"""`agent-vault store migrate --to URL [--update-settings]`: move a local broker's state and audit log from its
SQLite files into an empty PostgreSQL database (the copy itself is `store/migration.py`), then print the
`[store]` lines that point the broker at it, or with `--update-settings` write them into settings.toml and
record that file as accepted in the new audit log, as `agent-vault settings accept` would
(docs/team.md, "Moving a local broker to PostgreSQL"). And `agent-vault store prepare`: the tables made by
their owner, and a role for the broker that cannot rewrite the audit (docs/team.md, "Deploying").

What it refuses, before writing anything: a target that is not a postgresql:// URL, `--update-settings`
with a password in the URL, a state dir already on PostgreSQL, a broker running on this state dir (it holds
the state dir's lock for the whole move, so none starts meanwhile), a chain that does not verify, and
`--update-settings` when settings.toml was changed since it was last accepted (only agent-vault's own edit
is taken without proof). A target with rows is refused by the copy, unless it holds a finished copy of this
very state dir (an earlier run stopped after its commit): then only what is left is done.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent_vault.cli.table import table
from agent_vault.configuration.env_refs import env_ref
from agent_vault.configuration.settings import toml_string, with_store_url
from agent_vault.domain.errors import BrokerRunning, StoreMigrationError
from agent_vault.home import StatePaths, state_paths

if TYPE_CHECKING:
    from agent_vault.store.migration import Copy, SqliteSource
    from agent_vault.store.postgres_audit import PostgresAuditLog

Say = Callable[[str], None]


def migrate(to: str, *, update_settings: bool, say: Say, tell: Say) -> int:
    """The command: `say` prints the summary (stdout), `tell` the progress (stderr)."""
    setting, url = _target(to)
    if update_settings and setting == url and _has_password(url):
        raise StoreMigrationError(
            "the URL carries a password, and --update-settings would write it into settings.toml. Keep it out "
            "of the file: give it with PGPASSWORD or a ~/.pgpass file (PGPASSFILE), or export the whole URL as "
            'a variable and pass `--to env:VAR` (the file then says url = "env:VAR"). Nothing was copied.'
        )
    paths = state_paths()
    from agent_vault.configuration.settings import settings_path, storage

    if storage(paths).shared:  # also refuses a settings.toml the broker would refuse
        raise StoreMigrationError(
            f"{settings_path(paths)} already has [store] url ({storage(paths).where}): this broker's state and audit "
            "are already in PostgreSQL; there is nothing local to move"
        )
    from agent_vault.store import migration

    with _state_dir_locked(paths), migration.SqliteSource(paths.state_db, paths.audit_db) as source:
        source.verified()  # a chain that does not verify is refused first, before anything is written
        update = _SettingsUpdate.prepare(settings_path(paths), setting) if update_settings else None
        try:
            with migration.open_target(url) as audit:
                found = migration.find_copy(source, audit)
                if update is not None:
                    update.check(found, source, audit)
                if found is None:
                    tell(f"copying {paths.root} into {audit.where} in one transaction ...")
                    copy = migration.copy_store(source, audit, origin=paths.root, progress=_progress(tell))
                else:
                    tell(f"{audit.where} already holds the copy of {paths.root} (row {found.record.id}): not again")
                    copy = found
                verdict = migration.check_copy(url, audit, copy)
                say(_summary(paths, audit.where, copy, verdict.rows))
                if update is not None:
                    say(update.apply(audit))
                else:
                    say(_lines_to_add(settings_path(paths), setting, url))
        finally:
            if update is not None:
                update.discard()
    return 0


_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def prepare(to: str, role: str, *, say: Say) -> int:
    """`store prepare --to OWNER_URL --app-role NAME`: as the tables' owner, make every table and a role for
    the broker that may append to the audit but never rewrite it (store/postgres_roles.py)."""
    _, url = _target(to)
    if not _ROLE.fullmatch(role):
        raise StoreMigrationError(
            f"--app-role {role!r}: a role name is lower-case letters, digits and _ (e.g. agent_vault_app)"
        )
    import psycopg

    from agent_vault.store.postgres_roles import prepare as make_ready

    try:
        done = make_ready(url, role)
    except psycopg.Error as exc:
        raise StoreMigrationError(
            f"could not prepare the database ({type(exc).__name__}: {str(exc).strip()}). Fix: run this as the "
            "database's owner (or a role that may create tables and roles), on an existing database"
        ) from None
    role_url = done.where.replace("postgresql://", f"postgresql://{role}@", 1)
    say(
        f"{done.where} is ready: {len(done.tables)} state tables and the audit tables, at the newest schema.\n"
        f"Role {role} may read and change the state and append to the audit, never rewrite or delete it.\n"
        f"Give it a way to log in (a password in the broker's ~/.pgpass, a client certificate), then point\n"
        f"the broker at it as that role, in settings.toml:\n\n[store]\nurl = {toml_string(role_url)}"
    )
    return 0


def _target(to: str) -> tuple[str, str]:
    """(what settings.toml would say, the URL): `--to env:VAR` is read from the environment and kept as is."""
    setting = to.strip()
    url = setting
    ref = env_ref(setting)
    if ref is not None:
        url = os.environ.get(ref, "")
        if not url:
            raise StoreMigrationError(f"--to {setting}: the variable {ref} is not set (export the URL in it)")
    from agent_vault.store.engines import is_postgres

    if not is_postgres(url):
        shown = setting if ref is not None else "the URL given"
        raise StoreMigrationError(
            f"--to must be a postgresql:// URL (postgresql://user@host:5432/dbname), and {shown} is not one"
        )
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise StoreMigrationError(
            "the PostgreSQL driver is not installed: pip install 'agent-vault[postgres]'"
        ) from None
    return setting, url


def _has_password(url: str) -> bool:
    from agent_vault.store.migration import has_password

    return has_password(url)


@contextlib.contextmanager
def _state_dir_locked(paths: StatePaths) -> Iterator[None]:
    """The state dir's lock, as a broker holds it: refused while one runs, and none starts meanwhile."""
    from agent_vault.daemon import lock_state_dir

    try:
        lock = lock_state_dir(paths)
    except BrokerRunning as exc:
        raise StoreMigrationError(
            f"{exc}: stop it first (`agent-vault stop`), then migrate. Nothing was copied."
        ) from None
    try:
        yield
    finally:
        lock.close()


def _progress(tell: Say) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        tell(f"audit rows copied: {done} / {total}")

    return report


def _summary(paths: StatePaths, where: str, copy: Copy, rows_now: int) -> str:
    counted = [(name, str(n)) for name, n in copy.tables.items()]
    counted.append(("audit", f"{copy.audit_rows} (chain head {copy.head[:16]}...)"))
    moved = "was copied" if not copy.earlier else "had been copied by an earlier run"
    return "\n".join(
        [
            f"{paths.root} (state.db and audit.db) {moved} into {where}:",
            table(("table", "rows"), counted, indent="  "),
            f"Checked: every table read back equal before the commit; after it, the same row counts, the same "
            f"head hash at row {copy.audit_rows}, and `audit verify` on the copy: intact, {rows_now} rows "
            f"(row {copy.record.id}: {copy.record.event}).",
            "state.db and audit.db were not changed: keep them as a backup until the broker runs on PostgreSQL.",
        ]
    )


def _lines_to_add(path: Path, setting: str, url: str) -> str:
    from agent_vault.store.migration import without_password

    shown = setting if setting != url else without_password(url)
    lines = [
        "",
        f"To run the broker on it, put these lines in {path} (or run again with --update-settings):",
        "",
        "[store]",
        f"url = {toml_string(shown)}",
        "",
    ]
    if shown != setting:
        lines.append(
            "(The password was left out: give it with PGPASSWORD or ~/.pgpass (PGPASSFILE) where the broker "
            'starts, or write url = "env:VAR" and export the whole URL as VAR.)'
        )
    lines.append(
        "After editing the file by hand, run `agent-vault settings accept` (it needs proof), or `agent-vault "
        "doctor` flags the change."
    )
    return "\n".join(lines)


# -- settings.toml ---------------------------------------------------------------------------------


@dataclass
class _SettingsUpdate:
    """settings.toml with `[store] url` added: written next to the file first (its digest is what the new
    log accepts), moved over it last, with the file's mode."""

    path: Path
    staged: Path

    @classmethod
    def prepare(cls, path: Path, setting: str) -> _SettingsUpdate:
        try:
            text, mode = path.read_text(encoding="utf-8"), path.stat().st_mode & 0o777
        except FileNotFoundError:
            text, mode = "", 0o600
        new = with_store_url(text, setting, path)
        staged = path.with_name(path.name + ".migrate")
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        fd = os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(new)
        os.chmod(staged, mode)
        return cls(path, staged)

    def check(self, found: Copy | None, source: SqliteSource, audit: PostgresAuditLog) -> None:
        """Refuse an edit of settings.toml that the log did not accept (see `integrity.foreign_settings_edit`).
        The log is the source's; or, when the target already holds the copy (`found`), the target's, where an
        earlier run may have accepted this very edit."""
        from agent_vault.broker.integrity import SETTINGS_DIGEST, foreign_settings_edit

        if found is None:
            accepted = source.latest("settings_accepted")
        else:
            accepted = audit.latest_with(SETTINGS_DIGEST, ("settings_accepted",))
        change = foreign_settings_edit(self.path, self.staged, accepted)
        if change is not None:
            raise StoreMigrationError(
                f"{change.describe()} --update-settings accepts only its own [store] url line: accept the file "
                "first (`agent-vault settings accept`, with proof), then migrate again. Nothing was copied."
            )

    def apply(self, audit: PostgresAuditLog) -> str:
        """Record the new file as accepted in `audit` (unless an earlier run did), then move it into place."""
        from agent_vault.broker.integrity import SETTINGS_DIGEST, settings_accepted
        from agent_vault.broker.recorder import Recorder

        detail = settings_accepted(self.staged, via="store migrate")
        latest = audit.latest_with(SETTINGS_DIGEST, ("settings_accepted",))
        if latest is None or latest.detail.get(SETTINGS_DIGEST) != detail[SETTINGS_DIGEST]:
            latest = Recorder(audit).write("settings_accepted", detail)
        os.replace(self.staged, self.path)
        return (
            f"\nWrote [store] url into {self.path} (its other lines and its mode kept), and recorded the file as "
            f"accepted in the new audit log (row {latest.id}, settings_accepted), so `agent-vault doctor` does not "
            "flag it. The next broker start uses PostgreSQL."
        )

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.staged.unlink()
