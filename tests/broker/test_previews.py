"""The masked preview of a value to be written shows its kind, never its own characters or length."""

from __future__ import annotations

import pytest

from agent_vault.broker.previews import mask_preview
from agent_vault.domain.secret import SecretValue


@pytest.mark.parametrize(
    ("value", "head"),
    [
        ("sk_live_fake0000000000000000", "sk_live_"),
        ("sk-fake-0000000000000000000", "sk-"),
        ("ghp_fake000000000000000000000", "ghp_"),
        ("xoxb-fake-000000000000000000", "xoxb-"),
        ("AKIAFAKE0000000000000", "AKIA"),
    ],
)
def test_known_key_kinds_show_their_public_prefix(value: str, head: str) -> None:
    assert mask_preview(SecretValue(value)) == head + "••••••••••"


@pytest.mark.parametrize("value", ["Summer-2026-fake-password", "hunter_fake_password_0000", "abc-" + "x" * 20])
def test_other_values_show_none_of_their_characters(value: str) -> None:
    preview = mask_preview(SecretValue(value))
    assert preview == "••••••••••"
    assert mask_preview(SecretValue(value * 3)) == preview  # the length is not given away


def test_newlines_controls_and_whitespace_are_named() -> None:
    assert mask_preview(SecretValue("line one\nline two")) == "••••••••••  (2 lines)"
    assert "control or invisible" in mask_preview(SecretValue("fake\u202evalue"))
    assert "whitespace" in mask_preview(SecretValue(" fake "))
    assert mask_preview(SecretValue("")) == "(empty value)"
