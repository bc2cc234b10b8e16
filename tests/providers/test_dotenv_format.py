"""dotenv_format on its own: quoting choices, in-place updates, and seeded random round-trip checks."""

from __future__ import annotations

import io
import logging
import random

import pytest
from dotenv import dotenv_values

from agent_vault.domain.errors import InvalidRequest, ProviderError
from agent_vault.providers.dotenv_format import format_value, is_valid_key, parse, parse_document, update

#: characters that have a meaning somewhere in the format, plus unicode and controls we can escape
ALPHABET = [
    *"aZ09 _-=#'\"\\$\n\r\t\a\b\f\v.:/@%+,`!{}()[]~^&*;<>?|",
    *["é", "☃", "😀", "日", "\u2028", "\u00a0", "\ufeff", "\u202e"],
]
#: atoms for random documents: pieces of real syntax, so the parser sees plausible and broken files
ATOMS = ["A", "B", "KEY", "export ", "=", " ", "\t", "'", '"', "\\", "#", "\n", "\r\n", "\r", "x", "é", "$"]


def random_value(rng: random.Random, size: int = 16) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, size)))


def python_dotenv(text: str) -> dict[str, str | None]:
    logging.getLogger("dotenv.main").setLevel(logging.ERROR)
    return dict(dotenv_values(stream=io.StringIO(text), interpolate=False))


# --- quoting --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("", ""),
        ("fake-token_1.2:3/4@5%6+7,8=", "fake-token_1.2:3/4@5%6+7,8="),
        ("fake value", "'fake value'"),
        ("$HOME", "'$HOME'"),
        ("fake#1", "'fake#1'"),
        ("clé", "'clé'"),
        ("it's", '"it\'s"'),
        ("a\\b", '"a\\\\b"'),
        ('say "hi"', "'say \"hi\"'"),
        ('it\'s "x"', '"it\'s \\"x\\""'),
        ("l1\nl2", '"l1\\nl2"'),
        ("\t\r\a\b\f\v", '"\\t\\r\\a\\b\\f\\v"'),
    ],
)
def test_format_value_picks_the_simplest_quoting(value: str, written: str) -> None:
    assert format_value("KEY", value) == written
    assert parse(f"KEY={written}\n") == {"KEY": value}


@pytest.mark.parametrize("value", ["fake\0", "fake\x1b[0m", "fake\x7f", "fake\x85", "fake\x9b", "fake\ud83d"])
def test_unrepresentable_values_are_refused_naming_only_the_key(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        format_value("MY_KEY", value)
    assert "MY_KEY" in str(caught.value)
    assert "fake" not in str(caught.value)


@pytest.mark.parametrize("name", ["A", "_", "a.b-c", "A1", "export"])
def test_valid_keys(name: str) -> None:
    assert is_valid_key(name)


@pytest.mark.parametrize("name", ["", "1A", ".A", "-A", "A B", "A=B", "A\n", "CLÉ", "A:B", "'A'", "A#"])
def test_invalid_keys_are_refused(name: str) -> None:
    assert not is_valid_key(name)
    with pytest.raises(InvalidRequest):
        format_value(name, "fake")


# --- update ---------------------------------------------------------------------------------------


def apply(text: str, values: dict[str, str]) -> str:
    return update(parse_document(text), values)


def test_update_keeps_untouched_lines_byte_for_byte() -> None:
    text = "# top\r\n\r\n  export A = 'fake-a'  # note\r\nbroken line\r\nB=\"fake\r\nmulti\"\r\nC=fake-c"
    result = apply(text, {"A": "fake new", "D": "fake-d"})
    assert result == (
        "# top\r\n\r\n  export A = 'fake new'  # note\r\nbroken line\r\nB=\"fake\r\nmulti\"\r\nC=fake-c\r\nD=fake-d\r\n"
    )


@pytest.mark.parametrize(
    ("line", "value", "rewritten"),
    [
        ("KEY= # note\n", "fake", "KEY= fake # note\n"),
        ('KEY="x"#note\n', "fake", "KEY=fake #note\n"),
        ("KEY=old # note\n", "", "KEY= # note\n"),
        ("KEY=old # note\n", "#fake", "KEY='#fake' # note\n"),
        ("\texport KEY\t=\told\n", "fake", "\texport KEY\t=\tfake\n"),
        ("KEY='a\nb'   \n", "fake", "KEY=fake\n"),
        ("KEY=old", "fake", "KEY=fake"),
    ],
)
def test_update_rewrites_only_the_value(line: str, value: str, rewritten: str) -> None:
    assert apply(line, {"KEY": value}) == rewritten
    assert parse(rewritten) == {"KEY": value}


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("", "NEW=fake\n"),
        ("A=1", "A=1\nNEW=fake\n"),
        ("A=1\rB=2", "A=1\rB=2\rNEW=fake\r"),
        ("# only a comment", "# only a comment\nNEW=fake\n"),
        ("\ufeffA=1\r\n", "\ufeffA=1\r\nNEW=fake\r\n"),
    ],
)
def test_update_appends_new_keys_in_the_file_style(text: str, result: str) -> None:
    assert apply(text, {"NEW": "fake"}) == result


def test_update_changes_the_last_duplicate_only() -> None:
    assert apply("K=fake-1\nK=fake-2\n", {"K": "fake-3"}) == "K=fake-1\nK=fake-3\n"


def test_update_with_nothing_returns_the_same_text() -> None:
    text = "A='x'  # c\nbroken\n"
    assert apply(text, {}) == text
    assert apply(text, {"A": "x"}) == text


def test_update_refuses_when_a_broken_line_would_swallow_new_text() -> None:
    text = 'BROKEN="fake-open\nGOOD=fake-good\n'
    with pytest.raises(ProviderError) as caught:
        apply(text, {"NEW": 'fake"quote'})
    assert "line 1 (BROKEN)" in str(caught.value)
    assert "fake-open" not in str(caught.value) and "fake-good" not in str(caught.value)


def test_update_refuses_a_bad_value_before_anything_else() -> None:
    with pytest.raises(InvalidRequest):
        apply("A=1\n", {"B": "fake-ok", "C": "fake\0"})


# --- document -------------------------------------------------------------------------------------


def test_line_numbers_count_multiline_entries() -> None:
    document = parse_document("A='x\ny'\n\n# c\nbad\r\nB=\"1\r\n2\"\rC=3\n")
    assert [(ln.kind, ln.lineno) for ln in document.lines] == [
        ("binding", 1),
        ("blank", 3),
        ("comment", 4),
        ("invalid", 5),
        ("binding", 6),
        ("binding", 8),
    ]


def test_repr_and_problems_never_show_values() -> None:
    text = 'A=fake-secret-1\nfake-secret-2\nB=\'fake-secret-3\nC="fake-secret-4" junk\n'
    document = parse_document(text)
    shown = repr(document) + "\n".join(document.problems)
    assert "fake-secret" not in shown
    assert document.problems == [
        "line 2: no '=' in the line; the line was skipped",
        "line 3 (B): unterminated single quote; the line was skipped",
        "line 4 (C): text after the closing quote; the line was skipped",
    ]


# --- seeded random properties ---------------------------------------------------------------------


def test_random_values_round_trip_and_agree_with_python_dotenv() -> None:
    rng = random.Random(20240601)
    base = "# head\r\nexport OLD='fake' # c\r\nDUP=1\r\nDUP=2\r\n"
    for _ in range(3000):
        value = random_value(rng)
        text = apply(base, {"DUP": value, "NEW": value, "OLD": value})
        expected = {"OLD": value, "DUP": value, "NEW": value}
        assert parse(text) == expected, repr(value)
        assert python_dotenv(text) == expected, repr(value)
        assert text.startswith("# head\r\n") and text.count("\n") == 5


def test_values_full_of_syntax_never_add_keys() -> None:
    rng = random.Random(7)
    syntax = ["\n", "\r\n", "\r", "OTHER=", "export ", "'", '"', "\\", "#", " ", "=", "$", "${X}"]
    for _ in range(2000):
        value = "".join(rng.choice(syntax) for _ in range(rng.randint(1, 10)))
        text = apply("A=1\n", {"KEY": value})
        assert parse(text) == {"A": "1", "KEY": value}, repr(value)


def test_random_documents_are_kept_exactly_and_updates_never_corrupt_them() -> None:
    rng = random.Random(99)
    for _ in range(3000):
        text = "".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 20)))
        document = parse_document(text)
        assert document.text() == text
        assert update(document, {}) == text
        value = random_value(rng, 6)
        try:
            result = update(document, {"KEY": value})
        except ProviderError:
            assert document.problems, repr(text)
            continue
        assert parse(result) == {**document.values, "KEY": value}, (repr(text), repr(value))
