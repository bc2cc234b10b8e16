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
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_vault.cli.table import table
from agent_vault.domain.errors import BrokerRunning, StoreMigrationError
from agent_vault.home import StatePaths, state_paths

if TYPE_CHECKING:
    from agent_vault.store.migration import Copy, SqliteSource
    from agent_vault.store.postgres_audit import PostgresAuditLog

Say = Callable[[str], None]

_STORE_HEADER = re.compile(r"^[ \t]*\[[ \t]*store[ \t]*\][ \t]*(#[^\n]*)?$", re.MULTILINE)
_ENV_REF = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")


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
        f"the broker at it as that role, in settings.toml:\n\n[store]\nurl = {_toml_string(role_url)}"
    )
    return 0


def _target(to: str) -> tuple[str, str]:
    """(what settings.toml would say, the URL): `--to env:VAR` is read from the environment and kept as is."""
    setting = to.strip()
    url = setting
    ref = _ENV_REF.fullmatch(setting)
    if ref is not None:
        url = os.environ.get(ref[1], "")
        if not url:
            raise StoreMigrationError(f"--to {setting}: the variable {ref[1]} is not set (export the URL in it)")
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
        f"url = {_toml_string(shown)}",
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
        """Refuse unless settings.toml is what the log last accepted (or none was ever recorded): agent-vault
        takes its own edit without proof, never anyone else's. The log is the source's; or, when the target
        already holds the copy (`found`), the target's, where an earlier run may have accepted this very edit."""
        from agent_vault.broker.integrity import SETTINGS_DIGEST, SettingsChange, settings_snapshot

        if found is None:
            accepted = source.latest("settings_accepted")
        else:
            accepted = audit.latest_with(SETTINGS_DIGEST, ("settings_accepted",))
        if accepted is None or SETTINGS_DIGEST not in accepted.detail:
            return
        change = SettingsChange(self.path, accepted)
        if change.digest == change.accepted_digest or settings_snapshot(self.staged)[0] == change.accepted_digest:
            return
        raise StoreMigrationError(
            f"{change.describe()} --update-settings accepts only its own [store] url line: accept the file first "
            "(`agent-vault settings accept`, with proof), then migrate again. Nothing was copied."
        )

    def apply(self, audit: PostgresAuditLog) -> str:
        """Record the new file as accepted in `audit` (unless an earlier run did), then move it into place."""
        from agent_vault.broker.integrity import SETTINGS_DIGEST, SETTINGS_KEYS, settings_snapshot
        from agent_vault.broker.recorder import Recorder

        digest, keys = settings_snapshot(self.staged)
        latest = audit.latest_with(SETTINGS_DIGEST, ("settings_accepted",))
        if latest is None or latest.detail.get(SETTINGS_DIGEST) != digest:
            latest = Recorder(audit).write(
                "settings_accepted", {SETTINGS_DIGEST: digest, SETTINGS_KEYS: keys, "via": "store migrate"}
            )
        os.replace(self.staged, self.path)
        return (
            f"\nWrote [store] url into {self.path} (its other lines and its mode kept), and recorded the file as "
            f"accepted in the new audit log (row {latest.id}, settings_accepted), so `agent-vault doctor` does not "
            "flag it. The next broker start uses PostgreSQL."
        )

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.staged.unlink()


def with_store_url(text: str, setting: str, path: Path) -> str:
    """`text` (settings.toml) with `url = setting` in its `[store]` table (added at the end if it has none),
    and nothing else changed, which is checked by reading both back."""
    try:
        before: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StoreMigrationError(f"{path}: invalid TOML ({exc}); fix it first") from None
    line = f"url = {_toml_string(setting)}"
    store = before.get("store")
    if store is None:
        body = text if not text or text.endswith("\n") else text + "\n"
        new = f"{body}{chr(10) if body.strip() else ''}[store]\n{line}\n"
    else:
        headers = list(_STORE_HEADER.finditer(text))
        if not isinstance(store, dict) or "url" in store or len(headers) != 1:
            raise StoreMigrationError(
                f"cannot add [store] url to {path} by itself: add it by hand, as shown without --update-settings"
            )
        at = headers[0].end()
        new = f"{text[:at]}\n{line}{text[at:] if text[at:] else chr(10)}"
    wanted = json.loads(json.dumps(before))
    wanted.setdefault("store", {})["url"] = setting
    try:
        after = tomllib.loads(new)
    except tomllib.TOMLDecodeError:
        after = None
    if after != wanted:
        raise StoreMigrationError(f"cannot add [store] url to {path} without changing anything else: add it by hand")
    return new


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, for what a URL holds)."""
    return json.dumps(value, ensure_ascii=False)
