"""The contract every SecretProvider must meet, as a base class each provider's tests subclass.

A subclass named `Test...` implements `make_provider`; pytest then runs all of these against it.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from agent_vault.domain.errors import InvalidRequest, ProviderAuthError, ProviderError, ReadOnlyVault, SecretNotFound
from agent_vault.domain.secret import SecretValue
from agent_vault.providers.base import SecretProvider

#: obviously fake values; the tests check that none of them leaks into names or messages
SEED = {
    "ALPHA_TOKEN": "fake-alpha-value-1111",
    "BETA_PASSWORD": "fake beta value 2222",
    "gamma.key": "fake-gamma-value-3333",
    "_DELTA-KEY": "fake-delta-value-4444",
}

TRICKY = {
    "newline": "fake-line-one\nfake-line-two",
    "crlf": "fake-a\r\nfake-b",
    "injection": "fake-x\nOTHER_KEY=fake-y",
    "single_quote": "fake-it's",
    "double_quote": 'fake-say "hi"',
    "both_quotes": "fake-'one' \"two\"",
    "hash": "fake-value #not-a-comment",
    "equals": "fake=value==",
    "backslash": "fake\\path\\n-not-a-newline",
    "dollar": "fake-$HOME-${USER}",
    "spaces": "  fake padded  ",
    "tab": "fake\tvalue",
    "unicode": "fake-clé-☃-😀-日本",
    "empty": "",
}

#: names with every character a secret name may hold (see approvals/validation.py), one kind each
ODD_NAMES = (
    "with space",
    "dots.and-dashes",
    "colon:at@plus+",
    "nested/path/KEY",
    "UPPER_lower_9",
)


def everything_said(exc: BaseException) -> str:
    """The text of an exception and of every exception it shows when printed (causes, contexts)."""
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(parts)


def in_threads(work: Callable[[Any], object], args: Iterable[Any], timeout: float = 60) -> None:
    """Run `work(arg)` for every arg, each on its own thread, all at once; fail with the first error."""
    errors: list[BaseException] = []

    def run(arg: Any) -> None:
        try:
            work(arg)
        except BaseException as exc:  # raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(arg,)) for arg in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), f"a thread was still running after {timeout} s"
    if errors:
        raise errors[0]


class ProviderContract(abc.ABC):
    """Tests any provider must pass. Subclasses implement `make_provider`.

    Stores differ in which names they can hold: a subclass narrows `odd_names` to the ones its
    store keeps as written, and lists in `unholdable_names` names a write must refuse (rather
    than store under another name). `make_denied_provider` returns a provider whose store is
    reachable but refuses its credentials, where the store can be set up that way.
    """

    odd_names: tuple[str, ...] = ODD_NAMES
    unholdable_names: tuple[str, ...] = ()
    #: TRICKY cases the store cannot hold: writing one is refused with InvalidRequest, nothing written
    refused_values: tuple[str, ...] = ()

    def make_denied_provider(self, tmp_path: Path) -> SecretProvider | None:
        """A provider whose credentials the store refuses; None when that cannot be arranged."""
        return None

    @abc.abstractmethod
    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        """A provider whose store holds exactly `names_to_values`, configured writable or not."""

    @pytest.fixture
    def seeded(self, tmp_path: Path) -> SecretProvider:
        return self.make_provider(tmp_path, dict(SEED), False)

    def writable_provider(self, tmp_path: Path, names_to_values: dict[str, str]) -> SecretProvider:
        provider = self.make_provider(tmp_path, names_to_values, True)
        if not provider.supports_write():
            pytest.skip("provider does not support writes")
        return provider

    # --- reading --------------------------------------------------------------------------------

    def test_is_a_secret_provider(self, seeded: SecretProvider) -> None:
        assert isinstance(seeded, SecretProvider)
        assert isinstance(type(seeded).type_name, str)

    def test_list_names_sorted_and_complete(self, seeded: SecretProvider) -> None:
        names = seeded.list_names()
        assert names == sorted(names)
        assert set(names) == set(SEED)

    def test_list_names_never_contains_values(self, seeded: SecretProvider) -> None:
        listing = repr(seeded.list_names())
        assert not any(value in listing for value in SEED.values())

    def test_empty_store(self, tmp_path: Path) -> None:
        provider = self.make_provider(tmp_path, {}, False)
        assert provider.list_names() == []
        with pytest.raises(SecretNotFound):
            provider.get("ALPHA_TOKEN")

    def test_get_returns_hidden_secret_value(self, seeded: SecretProvider) -> None:
        for name, value in SEED.items():
            secret = seeded.get(name)
            assert isinstance(secret, SecretValue)
            assert secret.reveal() == value
            shown = f"{secret!r} {secret} {secret:>40}"
            assert value not in shown

    def test_missing_name_raises_not_found_without_values(self, seeded: SecretProvider) -> None:
        with pytest.raises(SecretNotFound) as caught:
            seeded.get("NO_SUCH_SECRET")
        message = str(caught.value)
        assert "NO_SUCH_SECRET" in message
        assert not any(value in message for value in SEED.values())

    # --- writing --------------------------------------------------------------------------------

    def test_read_only_vault_refuses_writes(self, tmp_path: Path) -> None:
        provider = self.make_provider(tmp_path, dict(SEED), False)
        with pytest.raises(ReadOnlyVault) as caught:
            provider.set_many({"ALPHA_TOKEN": SecretValue("fake-new-value-9999")})
        assert "fake-new-value-9999" not in str(caught.value)
        assert provider.get("ALPHA_TOKEN").reveal() == SEED["ALPHA_TOKEN"]

    def test_write_then_read_round_trip(self, tmp_path: Path) -> None:
        provider = self.writable_provider(tmp_path, dict(SEED))
        provider.set_many({"ALPHA_TOKEN": SecretValue("fake-rotated-5555"), "NEW_ONE": SecretValue("fake-new-6666")})
        assert provider.get("ALPHA_TOKEN").reveal() == "fake-rotated-5555"
        assert provider.get("NEW_ONE").reveal() == "fake-new-6666"
        assert provider.get("BETA_PASSWORD").reveal() == SEED["BETA_PASSWORD"]
        assert provider.list_names() == sorted({*SEED, "NEW_ONE"})

    def test_write_to_empty_store(self, tmp_path: Path) -> None:
        provider = self.writable_provider(tmp_path, {})
        provider.set_many({"FIRST": SecretValue("fake-first-7777")})
        assert provider.list_names() == ["FIRST"]
        assert provider.get("FIRST").reveal() == "fake-first-7777"

    @pytest.mark.parametrize("case", sorted(TRICKY))
    def test_tricky_values_round_trip(self, tmp_path: Path, case: str) -> None:
        provider = self.writable_provider(tmp_path, dict(SEED))
        if case in self.refused_values:
            with pytest.raises(InvalidRequest) as caught:
                provider.set_many({"TRICKY": SecretValue(TRICKY[case]), "ALPHA_TOKEN": SecretValue(TRICKY[case])})
            assert not TRICKY[case] or TRICKY[case] not in str(caught.value)
            assert provider.list_names() == sorted(SEED)
            assert provider.get("ALPHA_TOKEN").reveal() == SEED["ALPHA_TOKEN"]
            return
        provider.set_many({"TRICKY": SecretValue(TRICKY[case]), "ALPHA_TOKEN": SecretValue(TRICKY[case])})
        assert provider.get("TRICKY").reveal() == TRICKY[case]
        assert provider.get("ALPHA_TOKEN").reveal() == TRICKY[case]
        assert provider.list_names() == sorted({*SEED, "TRICKY"})

    def test_tricky_values_seeded(self, tmp_path: Path) -> None:
        seed = {f"K_{case}": value for case, value in TRICKY.items() if case not in self.refused_values}
        provider = self.make_provider(tmp_path, seed, False)
        assert provider.list_names() == sorted(seed)
        assert {name: provider.get(name).reveal() for name in seed} == seed

    # --- names --------------------------------------------------------------------------------

    def test_odd_names_seeded(self, tmp_path: Path) -> None:
        seed = {name: f"fake-odd-value-{i}" for i, name in enumerate(self.odd_names)}
        provider = self.make_provider(tmp_path, seed, False)
        assert provider.list_names() == sorted(seed)
        assert {name: provider.get(name).reveal() for name in seed} == seed

    def test_odd_names_written(self, tmp_path: Path) -> None:
        provider = self.writable_provider(tmp_path, {})
        values = {name: f"fake-odd-write-{i}" for i, name in enumerate(self.odd_names)}
        provider.set_many({name: SecretValue(value) for name, value in values.items()})
        assert provider.list_names() == sorted(values)
        assert {name: provider.get(name).reveal() for name in values} == values

    def test_unholdable_names_refused_and_nothing_written(self, tmp_path: Path) -> None:
        if not self.unholdable_names:
            pytest.skip("this store holds every valid secret name")
        provider = self.writable_provider(tmp_path, dict(SEED))
        for name in self.unholdable_names:
            with pytest.raises((InvalidRequest, ProviderError)) as caught:
                provider.set_many({name: SecretValue("fake-unholdable-8888")})
            assert "fake-unholdable-8888" not in str(caught.value)
        assert provider.list_names() == sorted(SEED)

    # --- permissions --------------------------------------------------------------------------

    def test_refused_credentials_raise_auth_error_without_values(self, tmp_path: Path) -> None:
        provider = self.make_denied_provider(tmp_path)
        if provider is None:
            pytest.skip("this store cannot be set up to refuse credentials here")
        for call in (provider.list_names, lambda: provider.get("ALPHA_TOKEN")):
            with pytest.raises(ProviderAuthError) as caught:
                call()
            message = str(caught.value)
            assert message
            assert not any(value in message for value in SEED.values())
