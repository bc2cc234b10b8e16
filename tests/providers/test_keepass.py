"""KeePassProvider against real kdbx files made by pykeepass in temp dirs.

Most databases use a cheap argon2 setting (one pass, 8 MiB) so each test opens them in
milliseconds; one test uses pykeepass's default argon2 database, as KeePass would make it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_vault.configuration.project import load_config, redacted_view
from agent_vault.domain.errors import (
    ConfigError,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderUnavailable,
    ReadOnlyVault,
    SecretNotFound,
)
from agent_vault.domain.secret import SecretValue
from agent_vault.providers import files
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.keepass import INSTALL_HINT, KeePassOptions, KeePassProvider
from agent_vault.providers.registry import provider_class, provider_entry_points
from tests.providers.contract import SEED, ProviderContract, everything_said, in_threads

pykeepass = pytest.importorskip("pykeepass", reason="install the extra: pip install 'agent-vault[keepass]'")

PASSWORD = "fake-master-password-0000"
WRONG = "fake-wrong-password-9999"
VALUE = "fake-keepass-value-1111"
GROUP = "Agents/dev"


# --- databases ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cheap_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty kdbx4 database with a cheap argon2 setting, password PASSWORD."""
    path = tmp_path_factory.mktemp("keepass-template") / "template.kdbx"
    kp = pykeepass.create_database(str(path), password=PASSWORD)
    params = kp.kdbx.header.value.dynamic_header.kdf_parameters.data.dict
    params["M"].value, params["I"].value, params["P"].value = 8 * 1024 * 1024, 1, 1
    kp.save()
    return path


def make_db(
    template: Path,
    path: Path,
    entries: dict[str, str] | None = None,
    *,
    group: str = "",
    password: str | None = PASSWORD,
    key_file: Path | None = None,
) -> Path:
    """A copy of the cheap template at `path`, with these credentials and `entries` (name -> password).

    A name's `/`-separated prefix becomes subgroups under `group`; every entry gets a username,
    URL and notes so tests can check that writes keep them.
    """
    shutil.copy(template, path)
    kp = pykeepass.PyKeePass(str(path), password=PASSWORD)
    kp.password, kp.keyfile = password, str(key_file) if key_file else None
    base = ensure_group(kp, group)
    for name, value in (entries or {}).items():
        *groups, title = name.split("/")
        kp.add_entry(ensure_group(kp, "/".join(groups), base), title, "fake-user", value, url="https://fake.example")
    kp.save()
    return path


def ensure_group(kp: Any, path: str, start: Any = None) -> Any:
    group = start if start is not None else kp.root_group
    for segment in filter(None, path.split("/")):
        found = [g for g in group.subgroups if g.name == segment]
        group = found[0] if found else kp.add_group(group, segment)
    return group


def open_db(path: Path, password: str | None = PASSWORD, key_file: Path | None = None) -> Any:
    return pykeepass.PyKeePass(str(path), password=password, keyfile=str(key_file) if key_file else None)


def entry_at(kp: Any, path: str) -> Any:
    """The entry at `group/.../title` (a full KeePass path below the root)."""
    found = kp.find_entries(path=path.split("/"))
    assert found is not None, path
    return found


def make(
    db: Path,
    *,
    writable: bool = False,
    password: str | None = PASSWORD,
    key_file: str | None = None,
    group: str = GROUP,
    field: str = "Password",
    base_dir: Path | None = None,
) -> KeePassProvider:
    options = KeePassOptions(file=str(db), password=password, key_file=key_file, group=group, field=field)
    context = ProviderContext(vault="kp", base_dir=base_dir or db.parent, writable=writable)
    return KeePassProvider(options, context)


def key_file_at(path: Path) -> Path:
    path.write_bytes(bytes(range(32)))  # a 32-byte binary key file, as KeePass accepts
    return path


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def db(cheap_template: Path, tmp_path: Path) -> Path:
    return make_db(
        cheap_template,
        tmp_path / "team.kdbx",
        {"API_KEY": "fake-api-1111", "prod/DATABASE_URL": "fake-db-2222", "prod/eu/TOKEN": "fake-tok-3333"},
        group=GROUP,
    )


# --- the contract ---------------------------------------------------------------------------------


class TestKeePassContract(ProviderContract):
    """Password-protected database, group Agents/dev exposed, names with `/` as subgroups."""

    @pytest.fixture(autouse=True)
    def _template(self, cheap_template: Path) -> None:
        self.template = cheap_template

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        path = make_db(self.template, tmp_path / "contract.kdbx", names_to_values, group=GROUP)
        return make(path, writable=writable)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        path = make_db(self.template, tmp_path / "contract.kdbx", dict(SEED), group=GROUP)
        return make(path, password=WRONG)


class TestKeePassKeyFileContract(ProviderContract):
    """Key-file-only database, the whole database exposed."""

    @pytest.fixture(autouse=True)
    def _template(self, cheap_template: Path) -> None:
        self.template = cheap_template

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        key = key_file_at(tmp_path / "team.key")
        path = make_db(self.template, tmp_path / "contract.kdbx", names_to_values, password=None, key_file=key)
        return make(path, writable=writable, password=None, key_file="team.key", group="")

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        key = key_file_at(tmp_path / "team.key")
        path = make_db(self.template, tmp_path / "contract.kdbx", dict(SEED), password=None, key_file=key)
        (tmp_path / "other.key").write_bytes(bytes(range(1, 33)))
        return make(path, password=None, key_file="other.key", group="")


# --- names ----------------------------------------------------------------------------------------


def test_names_are_titles_below_the_group_with_subgroups_as_prefixes(cheap_template: Path, tmp_path: Path) -> None:
    path = make_db(
        cheap_template, tmp_path / "t.kdbx", {"Agents/dev/API_KEY": "fake-1", "Agents/prod/API_KEY": "fake-2"}
    )
    kp = open_db(path)
    kp.add_entry(kp.root_group, "TOP_LEVEL", "u", "fake-3")
    kp.save()
    assert make(path).list_names() == ["API_KEY"]
    assert make(path).get("API_KEY").reveal() == "fake-1"
    assert make(path, group="Agents").list_names() == ["dev/API_KEY", "prod/API_KEY"]
    assert make(path, group="/Agents/prod/").get("API_KEY").reveal() == "fake-2"
    assert make(path, group="").list_names() == ["Agents/dev/API_KEY", "Agents/prod/API_KEY", "TOP_LEVEL"]


def test_recycle_bin_entries_are_never_listed_or_read(db: Path) -> None:
    kp = open_db(db)
    kp.trash_entry(entry_at(kp, "Agents/dev/API_KEY"))
    kp.save()
    assert kp.recyclebin_group is not None
    for group in ("", GROUP):
        provider = make(db, group=group)
        assert not any(name.endswith("API_KEY") for name in provider.list_names())
        with pytest.raises(SecretNotFound):
            provider.get("API_KEY")
        with pytest.raises(SecretNotFound):
            provider.get(f"{kp.recyclebin_group.name}/API_KEY")


def test_a_group_in_the_recycle_bin_cannot_be_exposed(db: Path) -> None:
    kp = open_db(db)
    kp.trash_group(ensure_group(kp, "Agents/dev/prod"))
    kp.save()
    with pytest.raises(ConfigError) as caught:
        make(db, group=f"{kp.recyclebin_group.name}/prod").list_names()
    assert "is in the Recycle Bin" in str(caught.value)


def test_titles_with_a_slash_or_outside_the_name_grammar_are_not_listed_but_reported(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kp = open_db(db)
    dev = ensure_group(kp, GROUP)
    kp.add_entry(dev, "team/api", "u", "fake-slash")
    kp.add_entry(dev, "Stripe (old)", "u", "fake-paren")
    kp.add_entry(ensure_group(kp, "Agents/dev/prod"), "", "u", "fake-untitled")
    kp.add_entry(ensure_group(kp, "Agents/dev/a/b"), "HIDDEN", "u", "fake-hidden")
    ensure_group(kp, "Agents/dev/a/b").name = "a/b"
    kp.save()
    provider = make(db)
    assert provider.list_names() == ["API_KEY", "prod/DATABASE_URL", "prod/eu/TOKEN"]
    with pytest.raises(SecretNotFound):
        provider.get("team/api")
    problems = provider.problems()
    assert "entry 'team/api' in group 'Agents/dev': '/' in a title is not supported" in problems
    assert "entry 'Stripe (old)' in group 'Agents/dev': not a valid secret name" in problems
    assert "an entry without a title in group 'Agents/dev/prod'" in problems
    assert any(p.startswith("group 'a/b' in group 'Agents/dev/a'") for p in problems)
    logged = caplog.text
    assert "team/api" in logged
    fakes = ("fake-slash", "fake-paren", "fake-hidden", "fake-untitled")
    assert not any(v in logged + repr(problems) for v in fakes)


def test_duplicate_titles_are_listed_once_and_refused_by_name(db: Path) -> None:
    kp = open_db(db)
    dev = ensure_group(kp, GROUP)
    twin = kp.add_entry(dev, "API_KEY", "other-user", "fake-twin-4444", force_creation=True)
    kp.save()
    before = db.read_bytes()
    provider = make(db, writable=True)
    assert provider.list_names().count("API_KEY") == 1
    with pytest.raises(ProviderError) as caught:
        provider.get("API_KEY")
    message = everything_said(caught.value)
    assert "2 KeePass entries are named 'API_KEY'" in message
    assert twin.uuid.hex in message
    assert "rename or delete" in message
    assert "fake-twin-4444" not in message and "fake-api-1111" not in message
    with pytest.raises(ProviderError) as caught:
        provider.set_many({"prod/DATABASE_URL": SecretValue("fake-new-5555"), "API_KEY": SecretValue("fake-new-5555")})
    assert "fake-new-5555" not in everything_said(caught.value)
    assert db.read_bytes() == before, "nothing is written when one name of a batch is refused"
    assert provider.get("prod/DATABASE_URL").reveal() == "fake-db-2222"
    assert "2 entries are named 'API_KEY'; reading or writing it is refused" in provider.problems()


def test_a_missing_or_ambiguous_group_is_a_config_error(db: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make(db, group="Agents/staging").list_names()
    assert "has no group 'Agents/staging'" in str(caught.value)
    assert "create the group in KeePass, or correct `group`" in str(caught.value)
    root = open_db(db).root_group.name
    with pytest.raises(ConfigError) as caught:
        make(db, group=f"{root}/Agents").list_names()
    assert f"leave out {root!r}" in str(caught.value)
    kp = open_db(db)
    kp.add_group(kp.root_group, "Agents")
    kp.save()
    with pytest.raises(ConfigError) as caught:
        make(db).list_names()
    assert "has 2 groups 'Agents'" in str(caught.value)


# --- fields ---------------------------------------------------------------------------------------


def test_a_custom_field_lists_only_entries_that_have_it(db: Path) -> None:
    kp = open_db(db)
    entry_at(kp, "Agents/dev/API_KEY").set_custom_property("api token", "fake-custom-6666", protect=True)
    kp.save()
    provider = make(db, field="api token", writable=True)
    assert provider.list_names() == ["API_KEY"]
    assert provider.get("API_KEY").reveal() == "fake-custom-6666"
    with pytest.raises(SecretNotFound) as caught:
        provider.get("prod/DATABASE_URL")
    assert "has no field 'api token'" in str(caught.value)
    provider.set_many({"prod/DATABASE_URL": SecretValue("fake-custom-7777"), "NEW": SecretValue("fake-custom-8888")})
    assert provider.list_names() == ["API_KEY", "NEW", "prod/DATABASE_URL"]
    kp = open_db(db)
    updated = entry_at(kp, "Agents/dev/prod/DATABASE_URL")
    assert updated.get_custom_property("api token") == "fake-custom-7777"
    assert updated.password == "fake-db-2222", "the password is not the configured field: it is kept"
    assert updated.is_custom_property_protected("api token")
    assert entry_at(kp, "Agents/dev/NEW").is_custom_property_protected("api token")


def test_standard_fields_by_any_case(db: Path) -> None:
    assert make(db, field="username").get("API_KEY").reveal() == "fake-user"
    assert make(db, field="URL").get("API_KEY").reveal() == "https://fake.example"
    provider = make(db, field="notes", writable=True)
    provider.set_many({"API_KEY": SecretValue("fake-line-1\r\nfake-line-2")})
    assert make(db, field="Notes").get("API_KEY").reveal() == "fake-line-1\r\nfake-line-2"
    assert make(db).get("API_KEY").reveal() == "fake-api-1111"


# --- writes ---------------------------------------------------------------------------------------


def test_an_update_keeps_the_entry_and_adds_a_history_item(db: Path) -> None:
    provider = make(db, writable=True)
    provider.set_many({"prod/DATABASE_URL": SecretValue("fake-rotated-1")})
    kp = open_db(db)
    entry = entry_at(kp, "Agents/dev/prod/DATABASE_URL")
    assert (entry.password, entry.username, entry.url) == ("fake-rotated-1", "fake-user", "https://fake.example")
    assert [h.password for h in entry.history] == ["fake-db-2222"]
    assert entry.mtime >= entry.history[0].mtime
    provider.set_many({"prod/DATABASE_URL": SecretValue("fake-rotated-1")})  # same value: nothing to do
    assert len(entry_at(open_db(db), "Agents/dev/prod/DATABASE_URL").history) == 1


def test_history_is_trimmed_to_the_database_setting(db: Path) -> None:
    kp = open_db(db)
    kp.tree.getroot().find("Meta/HistoryMaxItems").text = "2"
    kp.save()
    provider = make(db, writable=True)
    for i in range(4):
        provider.set_many({"API_KEY": SecretValue(f"fake-v{i}")})
    history = entry_at(open_db(db), "Agents/dev/API_KEY").history
    assert [h.password for h in history] == ["fake-v1", "fake-v2"]


def test_a_write_creates_entries_and_missing_subgroups(db: Path) -> None:
    provider = make(db, writable=True)
    provider.set_many({"prod/NEW": SecretValue("fake-n1"), "stage/us/NEW": SecretValue("fake-n2")})
    kp = open_db(db)
    assert entry_at(kp, "Agents/dev/prod/NEW").password == "fake-n1"
    assert entry_at(kp, "Agents/dev/stage/us/NEW").password == "fake-n2"
    assert len([g for g in ensure_group(kp, GROUP).subgroups if g.name == "prod"]) == 1


def test_unchanged_values_leave_the_file_alone(db: Path) -> None:
    before = db.read_bytes()
    make(db, writable=True).set_many({"API_KEY": SecretValue("fake-api-1111")})
    assert db.read_bytes() == before


def test_values_a_kdbx_cannot_hold_are_refused_before_anything_is_written(db: Path) -> None:
    before = db.read_bytes()
    provider = make(db, writable=True)
    for bad in ("fake-bell\x07-1234", "fake-\ud800-surrogate", "fake-\ufffe"):
        with pytest.raises(InvalidRequest) as caught:
            provider.set_many({"OK": SecretValue("fake-fine"), "API_KEY": SecretValue(bad)})
        assert bad not in everything_said(caught.value)
        assert "control character" in str(caught.value)
    assert db.read_bytes() == before
    assert provider.get("API_KEY").reveal() == "fake-api-1111"


def test_writes_keep_the_file_mode_follow_symlinks_and_leave_no_temp_files(db: Path, tmp_path: Path) -> None:
    os.chmod(db, 0o640)
    link = tmp_path / "link.kdbx"
    link.symlink_to(db.name)
    make(link, writable=True).set_many({"API_KEY": SecretValue("fake-via-link")})
    assert link.is_symlink()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640
    assert entry_at(open_db(db), "Agents/dev/API_KEY").password == "fake-via-link"
    assert temp_files(tmp_path) == []
    lock = tmp_path / ".team.kdbx.agent-vault.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_a_failure_while_writing_the_temp_file_leaves_the_database_as_it_was(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = make(db, writable=True)
    assert provider.get("API_KEY").reveal() == "fake-api-1111"
    real = files.write_and_sync

    def half_then_fail(fd: int, data: bytes, mode: int) -> None:
        real(fd, data[: len(data) // 2], mode)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_and_sync", half_then_fail)
    with pytest.raises(ProviderError) as caught:
        provider.set_many({"API_KEY": SecretValue("fake-lost-1"), "NEW": SecretValue("fake-lost-2")})
    assert "the database is unchanged" in str(caught.value)
    assert "fake-lost" not in everything_said(caught.value)
    assert temp_files(db.parent) == []
    assert entry_at(open_db(db), "Agents/dev/API_KEY").password == "fake-api-1111"
    # the half-applied change in memory was dropped: the provider reads the file again
    assert provider.get("API_KEY").reveal() == "fake-api-1111"
    assert "NEW" not in provider.list_names()
    monkeypatch.setattr(files, "write_and_sync", real)
    provider.set_many({"API_KEY": SecretValue("fake-after-1")})
    assert make(db).get("API_KEY").reveal() == "fake-after-1"


def test_a_failure_while_encrypting_drops_the_in_memory_change(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = make(db, writable=True)
    before = db.read_bytes()

    def boom(self: Any, buffer: Any) -> None:
        raise RuntimeError("fake build failure")

    monkeypatch.setattr(pykeepass.PyKeePass, "save", boom)
    with pytest.raises(ProviderError) as caught:
        provider.set_many({"API_KEY": SecretValue("fake-lost-3")})
    assert "could not be encrypted for saving (RuntimeError)" in str(caught.value)
    assert "fake build failure" not in everything_said(caught.value)
    assert db.read_bytes() == before
    assert provider.get("API_KEY").reveal() == "fake-api-1111"


CRASH = """
import os, sys
from pathlib import Path
from agent_vault.providers.base import ProviderContext
from agent_vault.providers.keepass import KeePassOptions, KeePassProvider
from agent_vault.domain.secret import SecretValue
provider = KeePassProvider(
    KeePassOptions(file=sys.argv[1], password=sys.argv[2], group="Agents/dev"),
    ProviderContext(vault="kp", base_dir=Path(sys.argv[1]).parent, writable=True),
)
os.replace = lambda *a: os._exit(9)  # the process dies with the new file written but not yet renamed
provider.set_many({"API_KEY": SecretValue("fake-crashed-1")})
"""


def test_a_crash_before_the_rename_leaves_the_database_intact(db: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CRASH, str(db), PASSWORD], timeout=120, check=False)
    assert done.returncode == 9
    assert len(temp_files(db.parent)) == 1  # the orphan is a separate file beside the database
    assert entry_at(open_db(db), "Agents/dev/API_KEY").password == "fake-api-1111"
    provider = make(db, writable=True)
    provider.set_many({"API_KEY": SecretValue("fake-after-crash")})
    assert entry_at(open_db(db), "Agents/dev/API_KEY").password == "fake-after-crash"


# --- edits made elsewhere ---------------------------------------------------------------------------


def test_edits_made_in_keepass_are_seen_and_kept_by_writes(db: Path) -> None:
    provider = make(db, writable=True)
    assert provider.list_names() == ["API_KEY", "prod/DATABASE_URL", "prod/eu/TOKEN"]
    kp = open_db(db)  # "the KeePass app": edits and saves while the provider has the file cached
    entry_at(kp, "Agents/dev/API_KEY").password = "fake-edited-in-app"
    kp.add_entry(ensure_group(kp, GROUP), "FROM_APP", "u", "fake-from-app")
    kp.save()
    assert provider.get("API_KEY").reveal() == "fake-edited-in-app"
    provider.set_many({"prod/DATABASE_URL": SecretValue("fake-from-agent")})
    kp = open_db(db)
    assert entry_at(kp, "Agents/dev/FROM_APP").password == "fake-from-app"
    assert entry_at(kp, "Agents/dev/API_KEY").password == "fake-edited-in-app"
    assert entry_at(kp, "Agents/dev/prod/DATABASE_URL").password == "fake-from-agent"


def test_a_save_by_keepass_during_our_write_is_not_lost(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = make(db, writable=True)
    provider.list_names()
    real = KeePassProvider._serialise
    calls = []

    def app_saves_meanwhile(self: KeePassProvider, kp: Any) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            other = open_db(db)
            other.add_entry(ensure_group(other, GROUP), "SAVED_MEANWHILE", "u", "fake-meanwhile")
            other.save()
        return real(self, kp)

    monkeypatch.setattr(KeePassProvider, "_serialise", app_saves_meanwhile)
    provider.set_many({"API_KEY": SecretValue("fake-ours")})
    assert len(calls) == 2, "the write started over on the new version"
    kp = open_db(db)
    assert entry_at(kp, "Agents/dev/SAVED_MEANWHILE").password == "fake-meanwhile"
    assert entry_at(kp, "Agents/dev/API_KEY").password == "fake-ours"
    assert temp_files(db.parent) == []


def test_a_file_that_keeps_changing_gives_up_without_writing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = make(db, writable=True)
    real = KeePassProvider._serialise

    def always_changed(self: KeePassProvider, kp: Any) -> bytes:
        other = open_db(db)
        other.add_entry(ensure_group(other, GROUP), f"N{len(other.entries)}", "u", "fake-churn")
        other.save()
        return real(self, kp)

    monkeypatch.setattr(KeePassProvider, "_serialise", always_changed)
    with pytest.raises(ProviderUnavailable) as caught:
        provider.set_many({"API_KEY": SecretValue("fake-never")})
    assert "kept changing" in str(caught.value)
    assert entry_at(open_db(db), "Agents/dev/API_KEY").password == "fake-api-1111"


def test_concurrent_writers_lose_nothing(db: Path) -> None:
    """Two providers on one file (as two agent-vault processes would be), writing at once."""
    writers = [make(db, writable=True), make(db, writable=True)]
    errors: list[BaseException] = []

    def write(index: int, provider: KeePassProvider) -> None:
        try:
            for i in range(5):
                provider.set_many({f"W{index}_{i}": SecretValue(f"fake-w{index}-{i}")})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i, p)) for i, p in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    names = make(db).list_names()
    assert {f"W{w}_{i}" for w in range(2) for i in range(5)} <= set(names)


def test_one_provider_is_safe_across_threads(db: Path) -> None:
    provider = make(db, writable=True)

    def work(index: int) -> None:
        for i in range(5):
            provider.set_many({f"T{index}": SecretValue(f"fake-t{index}-{i}")})
            assert provider.get(f"T{index}").reveal() == f"fake-t{index}-{i}"
            assert "API_KEY" in provider.list_names()

    in_threads(work, range(4), timeout=120)


# --- the cache ------------------------------------------------------------------------------------


def test_the_database_is_decrypted_once_while_the_file_is_unchanged(db: Path) -> None:
    provider = make(db, writable=True)
    provider.list_names()
    provider.get("API_KEY")
    provider.get("prod/DATABASE_URL")
    assert provider.opens == 1
    provider.set_many({"API_KEY": SecretValue("fake-cached-write")})
    assert provider.get("API_KEY").reveal() == "fake-cached-write"
    assert provider.list_names() == ["API_KEY", "prod/DATABASE_URL", "prod/eu/TOKEN"]
    assert provider.opens == 1, "our own write does not need a fresh decrypt"
    kp = open_db(db)
    kp.add_entry(ensure_group(kp, GROUP), "LATER", "u", "fake-later")
    kp.save()
    assert "LATER" in provider.list_names()
    assert provider.opens == 2
    provider.close()
    provider.list_names()
    assert provider.opens == 3


def test_a_default_argon2_database_as_keepass_makes_it(tmp_path: Path) -> None:
    path = tmp_path / "argon2.kdbx"
    kp = pykeepass.create_database(str(path), password=PASSWORD)
    assert kp.kdf_algorithm.startswith("argon2")
    kp.add_entry(ensure_group(kp, GROUP), "API_KEY", "u", VALUE)
    kp.save()
    provider = make(path, writable=True)
    assert provider.list_names() == ["API_KEY"]
    assert provider.get("API_KEY").reveal() == VALUE
    provider.set_many({"API_KEY": SecretValue("fake-argon2-new")})
    assert open_db(path).find_entries(title="API_KEY", first=True).password == "fake-argon2-new"
    assert provider.opens == 1
    with pytest.raises(ProviderAuthError):
        make(path, password=WRONG).list_names()


# --- credentials ----------------------------------------------------------------------------------


def test_password_and_key_file_together(cheap_template: Path, tmp_path: Path) -> None:
    key = key_file_at(tmp_path / "team.key")
    path = make_db(cheap_template, tmp_path / "both.kdbx", {"API_KEY": VALUE}, key_file=key)
    assert make(path, key_file="team.key", group="").get("API_KEY").reveal() == VALUE
    provider = make(path, key_file=str(key), group="", writable=True)
    provider.set_many({"API_KEY": SecretValue("fake-both-new")})
    assert open_db(path, key_file=key).find_entries(title="API_KEY", first=True).password == "fake-both-new"
    for denied in (make(path, group=""), make(path, password=None, key_file="team.key", group="")):
        with pytest.raises(ProviderAuthError) as caught:
            denied.list_names()
        assert "did not open with the configured" in str(caught.value)


def test_auth_errors_name_the_keys_and_never_the_password(db: Path) -> None:
    with pytest.raises(ProviderAuthError) as caught:
        make(db, password=WRONG).get("API_KEY")
    message = everything_said(caught.value)
    assert f"the KeePass database {db} did not open with the configured password" in message
    assert "Fix: set `password` for vault 'kp'" in message
    assert WRONG not in message and PASSWORD not in message


def test_a_missing_key_file_is_a_config_error(db: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make(db, key_file="nowhere.key")
    assert f"cannot read the key file {db.parent / 'nowhere.key'}" in str(caught.value)


def test_secrets_stay_out_of_reprs(db: Path) -> None:
    provider = make(db)
    provider.get("API_KEY")
    options = KeePassOptions(file=str(db), password=PASSWORD)
    shown = repr(options) + str(options) + repr(provider) + str(provider)
    assert PASSWORD not in shown and "fake-api-1111" not in shown


# --- broken files -----------------------------------------------------------------------------------


def test_a_missing_database_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make(tmp_path / "nowhere.kdbx")
    message = str(caught.value)
    assert f"the KeePass database {tmp_path / 'nowhere.kdbx'} does not exist" in message
    assert "correct `file`" in message and "agent-vault does not create databases" in message


def test_a_database_removed_after_start_is_a_config_error(db: Path) -> None:
    provider = make(db)
    provider.list_names()
    db.unlink()
    with pytest.raises(ConfigError) as caught:
        provider.get("API_KEY")
    assert "does not exist" in str(caught.value)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: b"fake not a database\n" * 20, "is not a KeePass database, or its header is damaged"),
        (lambda data: b"", "could not be read (StreamError)"),
        (lambda data: data[: len(data) // 2], "could not be read (StreamError)"),
        (lambda data: data[:-10] + bytes(10), "is damaged (its contents fail their checksum)"),
    ],
    ids=["not-kdbx", "empty", "truncated", "payload"],
)
def test_damaged_files_give_clear_errors(db: Path, damage: Any, expected: str) -> None:
    db.write_bytes(damage(db.read_bytes()))
    with pytest.raises(ProviderError) as caught:
        make(db).list_names()
    assert expected in str(caught.value)
    assert not isinstance(caught.value, ProviderAuthError)
    assert "stream read less" not in everything_said(caught.value)


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "dir.kdbx").mkdir()
    with pytest.raises(ConfigError) as caught:
        make(tmp_path / "dir.kdbx")
    assert "is not a regular file" in str(caught.value)


def test_a_read_only_vault_refuses_writes_naming_the_fix(db: Path) -> None:
    with pytest.raises(ReadOnlyVault) as caught:
        make(db).set_many({"API_KEY": SecretValue("fake-nope")})
    assert "set `writable: true`" in str(caught.value)


def test_write_names_are_checked(db: Path) -> None:
    provider = make(db, writable=True)
    for name in ("../escape", "a//b", " padded", "prod/"):
        with pytest.raises(InvalidRequest):
            provider.set_many({name: SecretValue("fake-bad-name")})


# --- the extra and the config ---------------------------------------------------------------------


def test_missing_pykeepass_is_a_config_error_naming_the_pip_command(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pykeepass", None)
    with pytest.raises(ConfigError) as caught:
        make(db)
    assert str(caught.value) == INSTALL_HINT
    assert INSTALL_HINT == "the keepass provider needs the pykeepass package: pip install 'agent-vault[keepass]'"


def test_loading_a_keepass_config_does_not_import_pykeepass(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.config.json"
    path.write_text(json.dumps({"vaults": {"kp": {"type": "keepass", "file": "x.kdbx", "password": "env:P"}}}))
    code = (
        "import sys; from pathlib import Path; from agent_vault.configuration.project import load_config; "
        f"load_config(Path({str(path)!r}), {{'P': 'x'}}); "
        "assert 'pykeepass' not in sys.modules, 'pykeepass was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_entry_point_is_installed() -> None:
    assert "keepass" in provider_entry_points(), "run: .venv/bin/pip install -e '.[test,providers]'"
    assert provider_class("keepass") is KeePassProvider


TOML = """
[vaults.team]
type = "keepass"
file = "secrets/team.kdbx"
password = "env:KEEPASS_PASSWORD"
group = "Agents/dev"
writable = true
ttl = 15
"""


def test_a_toml_config_builds_a_working_provider(db: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "secrets").mkdir(parents=True)
    shutil.copy(db, project / "secrets" / "team.kdbx")
    path = project / "agent-vault.config.toml"
    path.write_text(TOML)
    config = load_config(path, {"KEEPASS_PASSWORD": PASSWORD})
    vault = config.vaults["team"]
    assert isinstance(vault.options, KeePassOptions)
    assert (vault.options.group, vault.options.field) == ("Agents/dev", "Password")
    provider = provider_class(vault.type)(
        vault.options,  # type: ignore[call-arg]
        ProviderContext(vault="team", base_dir=vault.base_dir, writable=vault.writable),
    )
    assert provider.list_names() == ["API_KEY", "prod/DATABASE_URL", "prod/eu/TOKEN"]
    provider.set_many({"NEW": SecretValue("fake-toml-new")})
    assert provider.get("NEW").reveal() == "fake-toml-new"
    shown = repr(config) + repr(vault) + json.dumps(redacted_view(config))
    assert PASSWORD not in shown


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Any]:
    def load(section: dict[str, Any]) -> Any:
        path = tmp_path / "agent-vault.config.json"
        path.write_text(json.dumps({"vaults": {"kp": {"type": "keepass", **section}}}))
        return load_config(path, {"KEEPASS_PASSWORD": "fake-SECRET-pw"}).vaults["kp"].options

    yield load


def test_options_are_validated_with_messages_that_name_the_fix(load: Any) -> None:
    base = {"file": "team.kdbx", "password": "env:KEEPASS_PASSWORD"}
    assert load({**base, "field": "user name"}).field == "UserName"
    assert load({**base, "field": "API Token"}).field == "API Token"
    assert load({**base, "group": "/Agents/dev/"}).group == "Agents/dev"
    assert load({"file": "team.kdbx", "keyFile": "team.key"}).key_file == "team.key"
    cases = [
        ({"file": "team.kdbx"}, 'a KeePass vault needs `password` (normally "env:KEEPASS_PASSWORD") or `keyFile`'),
        ({**base, "group": "Agents//dev"}, "vaults.kp.group: group 'Agents//dev' has an empty segment"),
        ({**base, "field": "Title"}, "vaults.kp.field: field 'Title' is not a value field"),
        ({**base, "field": 'say "hi"'}, "vaults.kp.field: a custom field name may not contain double quotes"),
        ({**base, "keyfile": "x"}, "vaults.kp.keyfile: unknown key. Fix: did you mean `keyFile`?"),
        ({"password": "env:KEEPASS_PASSWORD"}, "vaults.kp.file: required key is missing"),
    ]
    for section, expected in cases:
        with pytest.raises(ConfigError) as caught:
            load(section)
        assert expected in str(caught.value)
        assert "fake-SECRET-pw" not in str(caught.value)
