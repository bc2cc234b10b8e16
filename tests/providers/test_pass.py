"""PassProvider against real pass and GnuPG: a throwaway key (no passphrase) and temp password stores.

The contract runs twice: whole entries (firstLine = false, every value round-trips) and the default
first-line mode (values with a line break are refused; seeded entries read as their first line).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_vault.configuration.project import load_config
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
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.passstore import PassOptions, PassProvider
from agent_vault.providers.registry import provider_class
from tests.providers.cli_backends import (
    GpgKey,
    isolated_environment,
    kill_gpg_agent,
    make_gpg_key,
    pass_init,
    pass_insert,
    pass_show,
    recording_wrapper,
    require,
    script,
)
from tests.providers.contract import SEED, TRICKY, ProviderContract, in_threads

PREFIX = "agents"
VALUE = "fake-pass-value-5555"
_stores = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    require("pass", "apt install pass (Debian/Ubuntu) or brew install pass (macOS)")
    require("gpg", "apt install gnupg")
    with isolated_environment(tmp_path_factory.mktemp("pass-env")):
        yield


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory, _isolated: None) -> Iterator[GpgKey]:
    made = make_gpg_key(tmp_path_factory.mktemp("gpg") / "home", "agent-vault test <test@example.invalid>")
    yield made
    kill_gpg_agent(made.home)


@pytest.fixture(scope="session")
def stranger(tmp_path_factory: pytest.TempPathFactory, _isolated: None) -> Iterator[GpgKey]:
    """Another key, whose secret half the provider's GnuPG home never holds."""
    made = make_gpg_key(tmp_path_factory.mktemp("gpg-other") / "home", "someone else <other@example.invalid>")
    yield made
    kill_gpg_agent(made.home)


def new_store(tmp_path: Path, key: GpgKey, entries: dict[str, bytes] | None = None) -> Path:
    store = tmp_path / f"store-{next(_stores)}"
    pass_init(store, key)
    for path, content in (entries or {}).items():
        pass_insert(store, key, path, content)
    return store


def make(
    store: Path,
    key: GpgKey | None,
    *,
    writable: bool = False,
    first_line: bool = True,
    prefix: str = PREFIX,
    base_dir: Path | None = None,
) -> PassProvider:
    options = PassOptions(
        store_dir=str(store), prefix=prefix, first_line=first_line, gnupg_home=str(key.home) if key else None
    )
    context = ProviderContext(vault="pw", base_dir=base_dir or store.parent, writable=writable)
    return PassProvider(options, context)


class _PassContract(ProviderContract):
    first_line = True
    #: a hidden part is never listed; a trailing "/" would name a folder (pass strips it)
    unholdable_names = ("folder/.hidden", "trailing/")

    @pytest.fixture(autouse=True)
    def _keys(self, key: GpgKey, stranger: GpgKey) -> None:
        self.key, self.stranger = key, stranger

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        entries = {f"{PREFIX}/{name}": f"{value}\n".encode() for name, value in names_to_values.items()}
        entries["outside/DECOY"] = b"fake-decoy-outside-the-prefix\n"
        store = new_store(tmp_path, self.key, entries)
        return make(store, self.key, writable=writable, first_line=self.first_line)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        """Entries encrypted to a key whose secret key is not in the provider's GnuPG home."""
        store = new_store(tmp_path, self.stranger, {f"{PREFIX}/{n}": f"{v}\n".encode() for n, v in SEED.items()})
        return make(store, self.key)


class TestPassWholeEntryContract(_PassContract):
    first_line = False


class TestPassFirstLineContract(_PassContract):
    """The default mode: the contract, with the two value tests stated for first lines."""

    # a first line cannot hold a newline: those writes are refused
    refused_values = tuple(case for case, value in TRICKY.items() if "\n" in value)

    def test_tricky_values_seeded(self, tmp_path: Path) -> None:
        seed = {f"K_{case}": value for case, value in TRICKY.items()}
        provider = self.make_provider(tmp_path, seed, False)
        assert provider.list_names() == sorted(seed)
        assert {name: provider.get(name).reveal() for name in seed} == {n: v.split("\n")[0] for n, v in seed.items()}


# --- first line and whole entries -----------------------------------------------------------------


def test_first_line_write_keeps_the_other_lines(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/db": b"fake-old-1111\nuser: bob\nurl: https://db.example\n"})
    provider = make(store, key, writable=True)
    assert provider.get("db").reveal() == "fake-old-1111"
    provider.set_many({"db": SecretValue(VALUE)})
    assert pass_show(store, key, f"{PREFIX}/db") == f"{VALUE}\nuser: bob\nurl: https://db.example\n".encode()
    assert provider.get("db").reveal() == VALUE


def test_first_line_write_of_an_entry_without_a_newline(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/bare": b"fake-bare"})
    provider = make(store, key, writable=True)
    assert provider.get("bare").reveal() == "fake-bare"
    provider.set_many({"bare": SecretValue(VALUE), "fresh": SecretValue("fake-fresh")})
    assert pass_show(store, key, f"{PREFIX}/bare") == f"{VALUE}\n".encode()
    assert pass_show(store, key, f"{PREFIX}/fresh") == b"fake-fresh\n"


def test_a_value_with_a_line_break_is_refused_in_first_line_mode(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/db": b"fake-old\n"})
    provider = make(store, key, writable=True)
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"other": SecretValue("fake-ok"), "db": SecretValue("fake-a\nfake-b")})
    assert "fake-a" not in str(caught.value) and "firstLine = false" in str(caught.value)
    assert provider.list_names() == ["db"]  # nothing of the batch was written
    assert pass_show(store, key, f"{PREFIX}/db") == b"fake-old\n"


def test_whole_entries_drop_exactly_one_final_newline(tmp_path: Path, key: GpgKey) -> None:
    entries = {f"{PREFIX}/one": b"fake-a\nfake-b\n", f"{PREFIX}/none": b"fake-c", f"{PREFIX}/two": b"fake-d\n\n"}
    provider = make(new_store(tmp_path, key, entries), key, first_line=False)
    assert provider.get("one").reveal() == "fake-a\nfake-b"
    assert provider.get("none").reveal() == "fake-c"
    assert provider.get("two").reveal() == "fake-d\n"


def test_whole_entry_writes_end_with_one_newline(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/db": b"fake-old\nuser: bob\n"})
    provider = make(store, key, writable=True, first_line=False)
    provider.set_many({"db": SecretValue("fake-x\nfake-y")})
    assert pass_show(store, key, f"{PREFIX}/db") == b"fake-x\nfake-y\n"


# --- names ----------------------------------------------------------------------------------------


def test_listing_walks_the_prefix_folder_and_skips_what_pass_hides(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(
        tmp_path,
        key,
        {
            f"{PREFIX}/KEY": b"fake-1\n",
            f"{PREFIX}/team/api key": b"fake-2\n",
            f"{PREFIX}/.hidden": b"fake-3\n",
            f"{PREFIX}/.secret-folder/KEY": b"fake-4\n",
            f"{PREFIX}/odd*name": b"fake-5\n",
            "top-level": b"fake-6\n",
        },
    )
    (store / PREFIX / "notes.txt").write_text("not an entry")
    (store / PREFIX / "team" / ".gpg-id").write_text(key.fingerprint + "\n")
    provider = make(store, key)
    assert provider.list_names() == ["KEY", "team/api key"]
    assert make(store, key, prefix="").list_names() == ["agents/KEY", "agents/team/api key", "top-level"]
    assert make(store, key, prefix="/agents/team/").list_names() == ["api key"]
    assert make(store, key, prefix="not-there-yet").list_names() == []


def test_odd_names_become_paths_in_the_store(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key)
    provider = make(store, key, writable=True)
    provider.set_many({"nested/path/KEY": SecretValue("fake-n"), "with space": SecretValue("fake-s")})
    assert (store / PREFIX / "nested" / "path" / "KEY.gpg").is_file()
    assert (store / PREFIX / "with space.gpg").is_file()


def test_a_folder_is_not_a_secret(tmp_path: Path, key: GpgKey) -> None:
    """`pass show <folder>` prints the folder's tree; the provider must not return that as a value."""
    store = new_store(tmp_path, key, {f"{PREFIX}/team/KEY": b"fake-1\n"})
    provider = make(store, key)
    with pytest.raises(SecretNotFound):
        provider.get("team")
    assert not provider.has("team")
    assert provider.has("team/KEY")
    assert not provider.has("folder/.hidden")


def test_names_pass_cannot_hold_are_refused_before_writing(tmp_path: Path, key: GpgKey) -> None:
    provider = make(new_store(tmp_path, key), key, writable=True)
    for name in ("a/.hidden", "trailing/", "x" * 252):
        with pytest.raises(InvalidRequest):
            provider.set_many({"fine": SecretValue("fake-ok"), name: SecretValue(VALUE)})
    with pytest.raises(InvalidRequest):
        provider.set_many({"../escape": SecretValue(VALUE)})
    assert provider.list_names() == []


# --- the store and its keys -----------------------------------------------------------------------


def test_a_missing_store_names_the_fix(tmp_path: Path, key: GpgKey) -> None:
    provider = make(tmp_path / "no-store", key)
    for call in (provider.list_names, lambda: provider.get("KEY")):
        with pytest.raises(ConfigError) as caught:
            call()
        assert "storeDir" in str(caught.value) and "pass init" in str(caught.value)


def test_an_uninitialised_store_is_not_initialised_by_us(tmp_path: Path, key: GpgKey) -> None:
    store = tmp_path / "bare-store"
    store.mkdir()
    provider = make(store, key, writable=True)
    assert provider.list_names() == []
    with pytest.raises(ConfigError) as caught:
        provider.set_many({"KEY": SecretValue(VALUE)})
    assert "pass init" in str(caught.value) and VALUE not in str(caught.value)
    assert not (store / ".gpg-id").exists()


def test_a_subfolder_encrypted_for_someone_else(tmp_path: Path, key: GpgKey, stranger: GpgKey) -> None:
    """The prefix's .gpg-id decides the listing check; an entry for another key fails on reading."""
    store = new_store(tmp_path, key, {f"{PREFIX}/mine": b"fake-mine\n"})
    pass_init(store, stranger, subfolder=f"{PREFIX}/theirs")
    pass_insert(store, stranger, f"{PREFIX}/theirs/KEY", f"{VALUE}\n".encode())
    provider = make(store, key)
    assert provider.list_names() == ["mine", "theirs/KEY"]
    assert provider.get("mine").reveal() == "fake-mine"
    with pytest.raises(ProviderAuthError) as caught:
        provider.get("theirs/KEY")
    assert "secret key" in str(caught.value) and VALUE not in str(caught.value)
    with pytest.raises(ProviderAuthError) as listing:
        make(store, key, prefix=f"{PREFIX}/theirs").list_names()
    assert stranger.fingerprint in str(listing.value) and "gnupgHome" in str(listing.value)


def test_a_mistyped_gnupg_home_is_not_created(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/KEY": f"{VALUE}\n".encode()})
    missing = tmp_path / "no-such-gnupg"
    provider = PassProvider(
        PassOptions(store_dir=str(store), prefix=PREFIX, gnupg_home=str(missing)),
        ProviderContext(vault="pw", base_dir=tmp_path),
    )
    for call in (provider.list_names, lambda: provider.get("KEY")):
        with pytest.raises(ConfigError) as caught:
            call()
        assert "gnupgHome" in str(caught.value)
    assert not missing.exists()


def test_gnupg_home_defaults_to_the_users(tmp_path: Path, key: GpgKey, monkeypatch: pytest.MonkeyPatch) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/KEY": f"{VALUE}\n".encode()})
    with pytest.raises(ProviderAuthError):
        make(store, None).get("KEY")  # the isolated default home holds no key
    monkeypatch.setenv("GNUPGHOME", str(key.home))
    assert make(store, None).get("KEY").reveal() == VALUE


def test_store_dir_defaults_and_relative_paths(tmp_path: Path, key: GpgKey, monkeypatch: pytest.MonkeyPatch) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/KEY": f"{VALUE}\n".encode()})
    monkeypatch.setenv("PASSWORD_STORE_DIR", str(store))
    context = ProviderContext(vault="pw", base_dir=tmp_path)
    provider = PassProvider(PassOptions(prefix=PREFIX, gnupg_home=str(key.home)), context)
    assert provider.get("KEY").reveal() == VALUE
    monkeypatch.delenv("PASSWORD_STORE_DIR")
    home_store = Path(os.environ["HOME"]) / ".password-store"
    assert "'" + str(home_store) in repr(PassProvider(PassOptions(), context))
    relative = PassProvider(PassOptions(store_dir=store.name, prefix=PREFIX, gnupg_home=str(key.home)), context)
    assert relative.list_names() == ["KEY"]


# --- writes ---------------------------------------------------------------------------------------


def test_read_only_vault_names_the_fix(tmp_path: Path, key: GpgKey) -> None:
    provider = make(new_store(tmp_path, key), key)
    with pytest.raises(ReadOnlyVault) as caught:
        provider.set_many({"KEY": SecretValue(VALUE)})
    assert "writable = true" in str(caught.value) and VALUE not in str(caught.value)


def test_values_never_reach_a_command_line_or_the_environment(
    tmp_path: Path, key: GpgKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pass and the gpg it runs are wrapped by scripts that log their argv and environment."""
    log = tmp_path / "argv.log"
    wrappers = tmp_path / "bin"
    for program in ("pass", "gpg"):
        recording_wrapper(wrappers, program, require(program, "apt install pass gnupg"), log)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    store = new_store(tmp_path, key, {f"{PREFIX}/db": b"fake-old\nuser: bob\n"})
    first_line = make(store, key, writable=True)
    whole = make(store, key, writable=True, first_line=False)
    values = {"db": "fake-argv-first-7777", "new": "fake-argv-new-8888"}
    first_line.set_many({name: SecretValue(value) for name, value in values.items()})
    whole.set_many({"multi": SecretValue("fake-argv-multi-9999\nfake-argv-line-2")})
    assert first_line.get("db").reveal() == values["db"]
    assert whole.get("multi").reveal() == "fake-argv-multi-9999\nfake-argv-line-2"
    first_line.list_names()
    recorded = log.read_bytes()
    assert b"insert\0--multiline\0--force\0--\0agents/db\0" in recorded  # the wrappers saw the calls
    assert str(wrappers / "gpg").encode() + b"\0" in recorded  # and the gpg pass runs
    for secret in (
        "fake-argv-first-7777",
        "fake-argv-new-8888",
        "fake-argv-multi-9999",
        "fake-argv-line-2",
        "fake-old",
    ):
        assert secret.encode() not in recorded


def test_concurrent_writes_from_threads_all_land(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key)
    provider = make(store, key, writable=True)
    in_threads(lambda i: provider.set_many({f"thread-{i}": SecretValue(f"fake-thread-{i}")}), range(6))
    assert provider.list_names() == [f"thread-{i}" for i in range(6)]
    assert [provider.get(f"thread-{i}").reveal() for i in range(6)] == [f"fake-thread-{i}" for i in range(6)]


# --- failures -------------------------------------------------------------------------------------


def test_a_failed_batch_names_what_was_and_was_not_written(tmp_path: Path, key: GpgKey) -> None:
    """Each entry is its own file: pass cannot write a batch atomically, so the error says how far it got."""
    store = new_store(tmp_path, key)
    (store / PREFIX).mkdir()
    (store / PREFIX / "blocker").write_text("a plain file where a folder would go")
    provider = make(store, key, writable=True)
    with pytest.raises(ProviderError) as caught:
        provider.set_many({"first": SecretValue("fake-first"), "blocker/x": SecretValue(VALUE)})
    message = str(caught.value)
    assert "Already written: 'first'; not written: 'blocker/x'" in message and VALUE not in message
    assert provider.get("first").reveal() == "fake-first"


def test_an_entry_that_is_not_text_is_refused_without_its_content(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/blob": b"fake-\xff\xfe-binary\n"})
    with pytest.raises(ProviderError) as caught:
        make(store, key).get("blob")
    assert "UTF-8" in str(caught.value) and "fake-" not in str(caught.value)


def test_missing_pass_names_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError) as caught:
        PassProvider(PassOptions(), ProviderContext(vault="pw", base_dir=tmp_path))
    assert "apt install pass" in str(caught.value) and "brew install pass" in str(caught.value)


def test_a_hanging_pass_is_stopped(tmp_path: Path, key: GpgKey, monkeypatch: pytest.MonkeyPatch) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/KEY": f"{VALUE}\n".encode()})
    fake = tmp_path / "slow-bin"
    script(fake, "pass", "exec sleep 60")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(PassProvider, "call_timeout", 0.3)
    with pytest.raises(ProviderUnavailable) as caught:
        make(store, key).get("KEY")
    assert "passphrase" in str(caught.value)


def test_pass_errors_are_classified_without_their_text(
    tmp_path: Path, key: GpgKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that fails loudly: the message is ours, the tool's text (which could be a value) is not."""
    store = new_store(tmp_path, key, {f"{PREFIX}/KEY": f"{VALUE}\n".encode()})
    fake = tmp_path / "loud-bin"
    script(fake, "pass", "echo 'fake-leaked-value-4242 gpg: decryption failed: No secret key' >&2; exit 2")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ProviderAuthError) as caught:
        make(store, key).get("KEY")
    assert "fake-leaked-value-4242" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    script(fake, "pass", "echo 'fake-leaked-value-4242' >&2; exit 3")
    with pytest.raises(ProviderError) as unknown:
        make(store, key).get("KEY")
    assert "exit status 3" in str(unknown.value) and "fake-leaked-value-4242" not in str(unknown.value)


# --- options and config ---------------------------------------------------------------------------


def test_options_use_camel_case_keys_and_check_the_prefix() -> None:
    options = PassOptions.model_validate(
        {"storeDir": "~/store", "prefix": "team/agents/", "firstLine": False, "gnupgHome": "/g"}
    )
    assert (options.store_dir, options.prefix, options.first_line, options.gnupg_home) == (
        "~/store",
        "team/agents",
        False,
        "/g",
    )
    for bad in ("../up", "a/../b", "a//b", "./x"):
        with pytest.raises(ValidationError) as caught:
            PassOptions.model_validate({"prefix": bad})
        assert "folder inside the store" in str(caught.value)
    with pytest.raises(ValidationError):
        PassOptions.model_validate({"storedir": "x"})
    with pytest.raises(ValidationError):
        PassOptions.model_validate({"firstLine": "sometimes"})


def test_the_entry_point_is_installed() -> None:
    assert provider_class("pass") is PassProvider


def test_a_toml_config_builds_a_working_provider(tmp_path: Path, key: GpgKey) -> None:
    store = new_store(tmp_path, key, {f"{PREFIX}/OPENAI_API_KEY": f"{VALUE}\nuser: bot\n".encode()})
    config_path = tmp_path / "agent-vault.toml"
    config_path.write_text(
        "[vaults.pw]\n"
        'type = "pass"\n'
        f'storeDir = "{store.name}"\n'
        f'prefix = "{PREFIX}"\n'
        'gnupgHome = "env:TEST_GNUPGHOME"\n'
        "writable = true\n"
    )
    vault = load_config(config_path, {"TEST_GNUPGHOME": str(key.home)}).vaults["pw"]
    context = ProviderContext(vault="pw", base_dir=vault.base_dir, writable=vault.writable)
    provider = provider_class(vault.type)(vault.options, context)  # type: ignore[call-arg]
    assert provider.list_names() == ["OPENAI_API_KEY"]
    assert provider.get("OPENAI_API_KEY").reveal() == VALUE
    provider.set_many({"OPENAI_API_KEY": SecretValue("fake-rotated")})
    assert pass_show(store, key, f"{PREFIX}/OPENAI_API_KEY") == b"fake-rotated\nuser: bot\n"
    assert VALUE not in repr(provider)
