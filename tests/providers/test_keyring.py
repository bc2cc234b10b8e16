"""KeyringProvider: the provider contract and its own rules, against real keyring back ends.

Back ends: keyrings.alt's PlaintextKeyring (an ini file under a temp XDG_DATA_HOME), the Secret
Service (gnome-keyring-daemon on a private D-Bus session bus, started once for this module), keyring's
ChainerBackend over both, and an in-memory back end that cannot list its entries. Every test runs with
HOME, XDG dirs and DBUS_SESSION_BUS_ADDRESS pointing at temp paths: the user's keyring is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.core
import pytest
from keyring.backends.SecretService import Keyring as SecretServiceKeyring
from keyring.errors import KeyringLocked
from keyrings.alt.file import EncryptedKeyring, PlaintextKeyring

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
from agent_vault.providers.keyring_store import INSTALL_HINT, KeyringOptions, KeyringProvider
from agent_vault.providers.registry import provider_class
from tests.providers.contract import ODD_NAMES, SEED, ProviderContract, everything_said
from tests.providers.keyring_backends import (
    INSTALL,
    LOGIN_COLLECTION,
    MemoryKeyring,
    SecretServiceDaemon,
    missing_binaries,
)

PLAINTEXT = "keyrings.alt.file.PlaintextKeyring"
SECRET_SERVICE = "keyring.backends.SecretService.Keyring"
CHAINER = "keyring.backends.chainer.ChainerBackend"
MEMORY = "tests.providers.keyring_backends.MemoryKeyring"
SERVICE = "agent-vault-test"
VALUE = "fake-keyring-value-5555"
#: the names the contract's write tests use; back ends that need `names` for the exact spelling get these
CONTRACT_WRITES = ("NEW_ONE", "FIRST", "TRICKY", *ODD_NAMES)


def make(
    backend: str | None = PLAINTEXT,
    *,
    service: str = SERVICE,
    names: tuple[str, ...] = (),
    writable: bool = False,
    vault: str = "kr",
) -> KeyringProvider:
    options = KeyringOptions(service=service, names=names, backend=backend)
    return KeyringProvider(options, ProviderContext(vault=vault, base_dir=Path("/nonexistent"), writable=writable))


def unique_service() -> str:
    return f"agent-vault-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temp HOME and XDG dirs, no keyring settings from the environment, no reachable session bus."""
    for var in list(os.environ):
        if var.startswith("KEYRING_PROPERTY_") or var == "PYTHON_KEYRING_BACKEND":
            monkeypatch.delenv(var)
    for var, sub in (("HOME", "home"), ("XDG_DATA_HOME", "data"), ("XDG_CONFIG_HOME", "config")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    return tmp_path


@pytest.fixture(scope="module")
def secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretServiceDaemon]:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: {INSTALL}")
    daemon = SecretServiceDaemon(tmp_path_factory.mktemp("secret-service"))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def bus(secret_service: SecretServiceDaemon, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretServiceDaemon]:
    """The private Secret Service for this test; its login collection unlocked again afterwards."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", secret_service.address)
    yield secret_service
    secret_service.unlock()


@pytest.fixture
def memory() -> Iterator[type[MemoryKeyring]]:
    MemoryKeyring.enabled = True
    MemoryKeyring.entries.clear()
    MemoryKeyring.refuse.clear()
    MemoryKeyring.broken = None
    yield MemoryKeyring
    MemoryKeyring.enabled = False
    MemoryKeyring.entries.clear()
    MemoryKeyring.refuse.clear()
    MemoryKeyring.broken = None


def plaintext_file(home: Path) -> Path:
    return home / "data" / "python_keyring" / "keyring_pass.cfg"


# --- the contract, against each back end ----------------------------------------------------------


class TestPlaintextFileContract(ProviderContract):
    """keyrings.alt's file: listable, but its keys are lower-cased, so exact spellings come from `names`."""

    unholdable_names = ("UNLISTED_UPPER",)

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        seed = PlaintextKeyring()
        for name, value in names_to_values.items():
            seed.set_password(SERVICE, name, value)
        return make(PLAINTEXT, names=(*names_to_values, *CONTRACT_WRITES), writable=writable)


class TestSecretServiceContract(ProviderContract):
    """gnome-keyring on a private bus: lists by the service attribute, keeps names as written."""

    @pytest.fixture(autouse=True)
    def _on_bus(self, bus: SecretServiceDaemon) -> None:
        self.daemon = bus

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        service = unique_service()
        seed = SecretServiceKeyring()
        for name, value in names_to_values.items():
            seed.set_password(service, name, value)
        return make(SECRET_SERVICE, service=service, writable=writable)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        provider = self.make_provider(tmp_path, dict(SEED), False)
        self.daemon.lock()  # the `bus` fixture unlocks it after the test
        return provider


class TestChainContract(ProviderContract):
    """keyring's ChainerBackend over the Secret Service and the plaintext file: writes go to the first."""

    @pytest.fixture(autouse=True)
    def _chain(self, bus: SecretServiceDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
        self.daemon = bus
        monkeypatch.setattr(keyring.backend, "get_all_keyring", lambda: [SecretServiceKeyring(), PlaintextKeyring()])

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        service = unique_service()
        seed = SecretServiceKeyring()
        for name, value in names_to_values.items():
            seed.set_password(service, name, value)
        return make(CHAINER, service=service, writable=writable)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        provider = self.make_provider(tmp_path, dict(SEED), False)
        self.daemon.lock()  # the `bus` fixture unlocks it after the test
        return provider


class TestNonListingBackendContract(ProviderContract):
    """A back end that cannot list: only the configured `names` that exist are listed and writable."""

    unholdable_names = ("NOT_IN_NAMES",)

    @pytest.fixture(autouse=True)
    def _memory(self, memory: type[MemoryKeyring]) -> None:
        pass

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        for name, value in names_to_values.items():
            MemoryKeyring.entries[(SERVICE, name)] = value
        return make(MEMORY, names=(*names_to_values, *CONTRACT_WRITES), writable=writable)

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider:
        provider = self.make_provider(tmp_path, dict(SEED), False)
        MemoryKeyring.broken = KeyringLocked("fake: the keyring refused")
        return provider


# --- options and config ----------------------------------------------------------------------------


def write_config(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "agent-vault.toml"
    path.write_text(f'[vaults.desk]\ntype = "keyring"\n{section}\n')
    return path


def test_options_defaults_and_camel_case() -> None:
    options = KeyringOptions()
    assert (options.service, options.names, options.backend) == ("agent-vault", (), None)
    options = KeyringOptions.model_validate({"service": "svc", "names": ["A", "b", "A"], "backend": PLAINTEXT})
    assert (options.service, options.names, options.backend) == ("svc", ("A", "b"), PLAINTEXT)


def test_a_toml_config_loads_and_builds_a_working_provider(tmp_path: Path) -> None:
    PlaintextKeyring().set_password("my-agents", "DATABASE_URL", "fake-db-url-1111")
    path = write_config(
        tmp_path,
        'service = "my-agents"\nnames = ["OPENAI_API_KEY"]\nbackend = "keyrings.alt.file.PlaintextKeyring"\n'
        "writable = true",
    )
    config = load_config(path, {})
    vault = config.vaults["desk"]
    assert isinstance(vault.options, KeyringOptions)
    cls = provider_class(vault.type)
    assert cls is KeyringProvider
    provider = cls(vault.options, ProviderContext(vault="desk", base_dir=vault.base_dir, writable=vault.writable))  # type: ignore[call-arg]
    assert isinstance(provider, SecretProvider)
    assert provider.list_names() == ["database_url"]
    assert provider.get("DATABASE_URL").reveal() == "fake-db-url-1111"
    provider.set_many({"OPENAI_API_KEY": SecretValue("fake-openai-2222")})
    assert provider.list_names() == ["OPENAI_API_KEY", "database_url"]
    assert PlaintextKeyring().get_password("my-agents", "OPENAI_API_KEY") == "fake-openai-2222"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('names = ["ok", "bad name "]', "vaults.desk.names"),
        ('names = ["ok", "bad name "]', "Fix: correct or remove this entry of `names`"),
        ('backend = "not a class"', "is not a class path"),
        ('service = ""', "vaults.desk.service"),
        ('service = "svc "', "leading/trailing spaces"),
        ('servce = "svc"', "did you mean `service`?"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path: Path, section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, section), {})
    assert expected in str(caught.value)


def test_loading_a_keyring_config_does_not_import_keyring(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'service = "svc"')
    code = (
        "import sys; from pathlib import Path; from agent_vault.configuration.project import load_config; "
        f"load_config(Path({str(path)!r}), {{}}); "
        "assert 'keyring' not in sys.modules, 'keyring was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_keyring_package_is_a_config_error_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keyring", None)  # `import keyring` now raises ImportError
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value) == INSTALL_HINT
    assert INSTALL_HINT == "the keyring provider needs the keyring package: pip install 'agent-vault[keyring]'"


# --- choosing the back end ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["no_such_module.Keyring", "keyring.backends.NoSuch", "pathlib.Path"])
def test_a_backend_that_is_not_a_keyring_class_fails_at_construction(backend: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(backend)
    message = str(caught.value)
    assert repr(backend) in message
    assert "keyring --list-backends" in message


@pytest.mark.parametrize("backend", ["keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"])
def test_backends_that_store_nothing_are_refused(backend: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(backend)
    assert "stores nothing" in str(caught.value)
    assert "Fix: set `backend`" in str(caught.value)


def test_the_default_backend_stores_nothing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    provider = make(None)
    with pytest.raises(ConfigError) as caught:
        provider.list_names()
    assert "keyring.backends.null.Keyring, which stores nothing" in str(caught.value)


def test_the_default_backend_comes_from_keyrings_own_settings(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    global_before = keyring.core._keyring_backend
    PlaintextKeyring().set_password(SERVICE, "from_env", "fake-env-1111")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", PLAINTEXT)
    assert make(None).get("from_env").reveal() == "fake-env-1111"

    monkeypatch.delenv("PYTHON_KEYRING_BACKEND")
    (isolated / "config" / "python_keyring").mkdir()
    (isolated / "config" / "python_keyring" / "keyringrc.cfg").write_text(f"[backend]\ndefault-keyring={PLAINTEXT}\n")
    assert make(None).list_names() == ["from_env"]
    assert keyring.core._keyring_backend is global_before, "the provider must not change keyring's global choice"


def test_an_unloadable_default_setting_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "no_such_module.Keyring")
    with pytest.raises(ConfigError) as caught:
        make(None).list_names()
    assert "PYTHON_KEYRING_BACKEND or keyringrc.cfg" in str(caught.value)


def test_the_encrypted_file_backend_is_refused_rather_than_prompting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        make("keyrings.alt.file.EncryptedKeyring")
    assert "asks for its password on the terminal" in str(caught.value)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyrings.alt.file.EncryptedKeyring")
    with pytest.raises(ConfigError) as caught:
        make(None).list_names()
    assert "asks for its password on the terminal" in str(caught.value)


def test_keyring_property_environment_settings_apply(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = isolated / "elsewhere" / "agents.cfg"
    custom.parent.mkdir()
    monkeypatch.setenv("KEYRING_PROPERTY_FILE_PATH", str(custom))
    provider = make(writable=True)
    provider.set_many({"moved": SecretValue("fake-moved-1111")})
    assert "fake-moved-1111" not in custom.read_text()  # base64, but in this file
    assert make().list_names() == ["moved"]
    assert not plaintext_file(isolated).exists()


# --- the plaintext file: lower-cased keys ------------------------------------------------------------


def test_file_names_are_listed_lower_case_unless_configured_and_read_in_any_case() -> None:
    backend = PlaintextKeyring()
    backend.set_password(SERVICE, "OPENAI_API_KEY", "fake-openai-1111")
    backend.set_password(SERVICE, "Stripe Key", "fake-stripe-2222")
    backend.set_password("other-service", "ELSEWHERE", "fake-other-3333")
    provider = make()
    assert provider.list_names() == ["openai_api_key", "stripe key"]
    assert provider.get("openai_api_key").reveal() == "fake-openai-1111"
    assert provider.get("OpenAI_API_Key").reveal() == "fake-openai-1111"
    assert provider.has("OPENAI_API_KEY") and not provider.has("ELSEWHERE")
    assert make(names=("OPENAI_API_KEY", "NOT_STORED")).list_names() == ["OPENAI_API_KEY", "stripe key"]


def test_file_names_outside_the_request_grammar_are_not_listed() -> None:
    backend = PlaintextKeyring()
    backend.set_password(SERVICE, "good", "fake-good-1111")
    backend.set_password(SERVICE, "ünïcode", "fake-uni-2222")
    backend.set_password(SERVICE, " padded", "fake-pad-3333")
    assert make().list_names() == ["good"]


def test_file_writes_refuse_names_the_listing_would_change(isolated: Path) -> None:
    provider = make(writable=True, names=("Configured_Name",))
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"lower_ok": SecretValue("fake-a-1111"), "NEW_UPPER": SecretValue("fake-b-2222")})
    message = str(caught.value)
    assert "'NEW_UPPER' would be listed as 'new_upper'" in message
    assert "add 'NEW_UPPER' to `names`" in message
    assert "fake-" not in message
    assert not plaintext_file(isolated).exists(), "nothing is written when one name is refused"
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"twin": SecretValue("fake-a-1111"), "TWIN": SecretValue("fake-b-2222")})
    assert "are the same entry" in str(caught.value)
    provider.set_many({"lower_ok": SecretValue("fake-a-1111"), "Configured_Name": SecretValue("fake-c-3333")})
    assert provider.list_names() == ["Configured_Name", "lower_ok"]


def test_configured_names_that_differ_only_in_case_are_refused_for_the_file() -> None:
    with pytest.raises(ConfigError) as caught:
        make(names=("Token", "TOKEN")).list_names()
    assert "`names` has 'Token' and 'TOKEN'" in str(caught.value)


@pytest.mark.parametrize("service", ["DEFAULT", "keyring-setting"])
def test_file_sections_with_a_meaning_are_refused_as_services(service: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(service=service).list_names()
    assert "Fix: choose another `service`" in str(caught.value)


def test_a_damaged_file_is_an_error_without_its_contents(isolated: Path) -> None:
    path = plaintext_file(isolated)
    path.parent.mkdir(parents=True)
    path.write_text(f"this is not ini {VALUE}\n[agent_2Dvault_2Dtest]\nx = 1\n")
    provider = make()
    for call in (provider.list_names, lambda: provider.get("x"), lambda: provider.has("x")):
        with pytest.raises(ProviderError) as caught:
            call()
        assert "is not a keyring file keyrings.alt can read" in str(caught.value)
        assert VALUE not in everything_said(caught.value)


def test_concurrent_writes_from_two_vaults_to_one_file_all_survive() -> None:
    first = make(service="svc-one", writable=True, vault="one")
    second = make(service="svc-two", writable=True, vault="two")
    errors: list[BaseException] = []

    def write(provider: KeyringProvider, prefix: str) -> None:
        try:
            for i in range(15):
                provider.set_many({f"{prefix}_{i}": SecretValue(f"fake-{prefix}-{i}")})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p, x)) for p, x in ((first, "a"), (second, "b"), (first, "c"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert first.list_names() == sorted([f"a_{i}" for i in range(15)] + [f"c_{i}" for i in range(15)])
    assert second.list_names() == sorted(f"b_{i}" for i in range(15))


# --- back ends that cannot list ------------------------------------------------------------------------


def test_a_non_listing_backend_lists_configured_names_that_exist(memory: type[MemoryKeyring]) -> None:
    memory.entries[(SERVICE, "LISTED")] = "fake-listed-1111"
    memory.entries[(SERVICE, "UNLISTED")] = "fake-unlisted-2222"
    provider = make(MEMORY, names=("LISTED", "ABSENT"), writable=True)
    assert provider.list_names() == ["LISTED"]
    assert provider.has("UNLISTED"), "an existing entry can be asked for even when it is not listed"
    assert provider.get("UNLISTED").reveal() == "fake-unlisted-2222"
    with pytest.raises(SecretNotFound):
        provider.get("ABSENT")
    with pytest.raises(InvalidRequest) as caught:
        provider.set_many({"ABSENT": SecretValue("fake-new-3333"), "NEW": SecretValue("fake-new-4444")})
    assert "cannot list its entries" in str(caught.value)
    assert "Fix: add 'NEW' to `names` of vault 'kr'" in str(caught.value)
    assert (SERVICE, "ABSENT") not in memory.entries
    provider.set_many({"ABSENT": SecretValue("fake-new-3333")})
    assert provider.list_names() == ["ABSENT", "LISTED"]


def test_a_failed_write_says_what_was_written_without_values(memory: type[MemoryKeyring]) -> None:
    memory.refuse.add("SECOND")
    provider = make(MEMORY, names=("FIRST", "SECOND", "THIRD"), writable=True)
    values = {"FIRST": "fake-first-1111", "SECOND": "fake-second-2222", "THIRD": "fake-third-3333"}
    with pytest.raises(ProviderError) as caught:
        provider.set_many({name: SecretValue(value) for name, value in values.items()})
    message = str(caught.value)
    assert "refused to store 'SECOND'" in message
    assert "Already written: 'FIRST'; not written: 'SECOND', 'THIRD'." in message
    assert not any(value in everything_said(caught.value) for value in values.values())
    assert memory.entries == {(SERVICE, "FIRST"): "fake-first-1111"}


def test_backend_errors_never_carry_the_library_text(memory: type[MemoryKeyring]) -> None:
    memory.broken = RuntimeError(f"backend exploded while holding {VALUE}")
    provider = make(MEMORY, names=("X",), writable=True)
    for call in (provider.list_names, lambda: provider.get("X"), lambda: provider.set_many({"X": SecretValue(VALUE)})):
        with pytest.raises(ProviderError) as caught:
            call()
        assert "failed to" in str(caught.value) and "(RuntimeError)" in str(caught.value)
        assert VALUE not in everything_said(caught.value)
    assert VALUE not in repr(provider)


# --- the Secret Service -----------------------------------------------------------------------------------


def test_secret_service_entries_are_shared_with_keyring_itself(bus: SecretServiceDaemon) -> None:
    service = unique_service()
    plain = SecretServiceKeyring()
    plain.set_password(service, "Set By Keyring", "fake-kr-1111")
    plain.set_password(f"{service}-other", "ELSEWHERE", "fake-other-2222")
    provider = make(SECRET_SERVICE, service=service, writable=True)
    provider.set_many({"Set_By_Provider": SecretValue("fake-av-3333")})
    assert provider.list_names() == ["Set By Keyring", "Set_By_Provider"]
    assert plain.get_password(service, "Set_By_Provider") == "fake-av-3333"
    assert provider.get("Set By Keyring").reveal() == "fake-kr-1111"
    assert not provider.has("ELSEWHERE") and provider.has("Set By Keyring")


def test_secret_service_uses_the_preferred_collection(
    bus: SecretServiceDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = bus.create_collection(f"agents-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("KEYRING_PROPERTY_PREFERRED_COLLECTION", path)
    service = unique_service()
    provider = make(SECRET_SERVICE, service=service, writable=True)
    provider.set_many({"IN_AGENTS": SecretValue("fake-agents-1111")})
    assert provider.list_names() == ["IN_AGENTS"]
    assert [a["username"] for a in bus.items(path, {"service": service})] == ["IN_AGENTS"]
    assert bus.items(LOGIN_COLLECTION, {"service": service}) == []
    bus.lock(path)
    with pytest.raises(ProviderAuthError):
        provider.list_names()
    bus.unlock(path)


def test_secret_service_follows_keyrings_attribute_scheme(
    bus: SecretServiceDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYRING_PROPERTY_SCHEME", "KeePassXC")
    service = unique_service()
    provider = make(SECRET_SERVICE, service=service, writable=True)
    provider.set_many({"KP_NAME": SecretValue("fake-kp-1111")})
    assert [a["UserName"] for a in bus.items(LOGIN_COLLECTION, {"Title": service})] == ["KP_NAME"]
    assert provider.list_names() == ["KP_NAME"]
    assert provider.has("KP_NAME") and provider.get("KP_NAME").reveal() == "fake-kp-1111"


def test_a_locked_collection_refuses_every_call_without_prompting(bus: SecretServiceDaemon) -> None:
    service = unique_service()
    SecretServiceKeyring().set_password(service, "TOKEN", VALUE)
    provider = make(SECRET_SERVICE, service=service, writable=True)
    bus.lock()
    calls = (
        provider.list_names,
        lambda: provider.get("TOKEN"),
        lambda: provider.has("TOKEN"),
        lambda: provider.set_many({"TOKEN": SecretValue("fake-new-2222")}),
    )
    for call in calls:
        with pytest.raises(ProviderAuthError) as caught:
            call()
        assert "collection is locked" in str(caught.value) and "Fix: unlock it" in str(caught.value)
        assert VALUE not in everything_said(caught.value)
    bus.unlock()
    assert provider.get("TOKEN").reveal() == VALUE


def test_no_secret_service_on_the_bus_is_unavailable() -> None:
    provider = make(SECRET_SERVICE)  # the isolated bus address points at nothing
    with pytest.raises(ProviderUnavailable) as caught:
        provider.list_names()
    assert "no Secret Service answers on the D-Bus session bus" in str(caught.value)
    assert "DBUS_SESSION_BUS_ADDRESS" in str(caught.value)


def test_a_bus_that_never_answers_is_unavailable_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "bus" that completes D-Bus authentication and then never replies: only our timeout can end the call."""
    path = tmp_path / "silent-bus"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while not stop.is_set() and (chunk := conn.recv(4096)):
                buffer += chunk
                while b"\r\n" in buffer and not buffer.startswith(b"BEGIN"):
                    line, buffer = buffer.split(b"\r\n", 1)
                    if line.lstrip(b"\0").startswith(b"AUTH"):
                        conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
                    elif line.startswith(b"NEGOTIATE_UNIX_FD"):
                        conn.sendall(b"AGREE_UNIX_FD\r\n")

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = listener.accept()[0]
            except TimeoutError:
                continue
            accepted.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={path}")
    monkeypatch.setattr(KeyringProvider, "call_timeout", 1.0)
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            make(SECRET_SERVICE).list_names()
        assert "did not list the entries within 1 seconds" in str(caught.value)
    finally:
        stop.set()
        acceptor.join(5)
        for conn in accepted:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        listener.close()


# --- the chain ------------------------------------------------------------------------------------------


def test_a_chain_lists_and_reads_every_member_and_writes_to_the_first(
    bus: SecretServiceDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = [PlaintextKeyring(), SecretServiceKeyring()]  # keyring shares these process-wide
    monkeypatch.setattr(keyring.backend, "get_all_keyring", lambda: shared)
    service = unique_service()
    SecretServiceKeyring().set_password(service, "BOTH", "fake-ss-1111")
    PlaintextKeyring().set_password(service, "both", "fake-file-2222")
    PlaintextKeyring().set_password(service, "FILE_ONLY", "fake-file-3333")
    provider = make(CHAINER, service=service, writable=True)
    assert provider.list_names() == ["BOTH", "both", "file_only"]
    assert provider.get("BOTH").reveal() == "fake-ss-1111"
    assert provider.get("FILE_ONLY").reveal() == "fake-file-3333"
    provider.set_many({"NEW_UPPER": SecretValue("fake-new-4444")})  # the Secret Service is first: it takes it
    assert SecretServiceKeyring().get_password(service, "NEW_UPPER") == "fake-new-4444"
    assert PlaintextKeyring().get_password(service, "NEW_UPPER") is None
    assert provider.list_names() == ["BOTH", "NEW_UPPER", "both", "file_only"]
    assert all(vars(member) == vars(type(member)()) for member in shared), "keyring's instances are not changed"
    monkeypatch.setattr(keyring.backend, "get_all_keyring", lambda: [EncryptedKeyring()])
    with pytest.raises(ConfigError) as caught:  # the only member would prompt on the terminal
        make(CHAINER, service=service).list_names()
    assert "chains no back end agent-vault can use" in str(caught.value)


# --- writes, reprs --------------------------------------------------------------------------------------


def test_read_only_vault_names_the_fix() -> None:
    with pytest.raises(ReadOnlyVault) as caught:
        make().set_many({"X": SecretValue(VALUE)})
    assert "set `writable: true`" in str(caught.value)
    assert VALUE not in str(caught.value)


def test_repr_and_close() -> None:
    PlaintextKeyring().set_password(SERVICE, "x", VALUE)
    provider = make()
    assert provider.get("x").reveal() == VALUE
    assert repr(provider) == "KeyringProvider(vault='kr', service='agent-vault-test')"
    provider.close()
    assert provider.list_names() == ["x"]


def test_a_seed_style_json_vault_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent-vault.config.json"
    section: dict[str, Any] = {"type": "keyring", "service": "agents", "names": ["A"], "backend": SECRET_SERVICE}
    path.write_text(json.dumps({"vaults": {"desk": section}}))
    options = load_config(path, {}).vaults["desk"].options
    assert options == KeyringOptions(service="agents", names=("A",), backend=SECRET_SERVICE)
