"""The shared dotenv corpus, run through our parser and python-dotenv; known differences are listed.

Each case is in corpus/cases.json; one marked `dotenv_differs` names the reason and python-dotenv's result.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from agent_vault.providers.dotenv_format import parse, parse_document

CORPUS = json.loads((Path(__file__).parent / "corpus" / "cases.json").read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = CORPUS["cases"]
KNOWN_DIFFERENCES = {case["name"]: case["dotenv_differs"] for case in CASES if "dotenv_differs" in case}


def by_name(cases: list[dict[str, Any]]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[case["name"] for case in cases])


def python_dotenv(text: str) -> dict[str, str | None]:
    logging.getLogger("dotenv.main").setLevel(logging.ERROR)  # it warns about the malformed cases
    return dict(dotenv_values(stream=io.StringIO(text), interpolate=False))


def test_corpus_is_large_and_names_are_unique() -> None:
    names = [case["name"] for case in CASES]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


def test_every_known_difference_has_a_reason() -> None:
    assert KNOWN_DIFFERENCES, "the list of known differences is empty"
    for name, difference in KNOWN_DIFFERENCES.items():
        assert len(difference["reason"]) > 20, name


@by_name(CASES)
def test_our_parser_gives_the_expected_values(case: dict[str, Any]) -> None:
    assert parse(case["text"]) == case["expected"]


@by_name(CASES)
def test_our_parser_reports_the_skipped_lines(case: dict[str, Any]) -> None:
    document = parse_document(case["text"])
    assert [line.lineno for line in document.lines if line.kind == "invalid"] == case["problem_lines"]
    assert len(document.problems) == len(case["problem_lines"])


@by_name(CASES)
def test_document_keeps_every_byte(case: dict[str, Any]) -> None:
    assert parse_document(case["text"]).text() == case["text"]


@by_name([case for case in CASES if case["name"] not in KNOWN_DIFFERENCES])
def test_python_dotenv_agrees(case: dict[str, Any]) -> None:
    assert python_dotenv(case["text"]) == case["expected"]


@by_name([case for case in CASES if case["name"] in KNOWN_DIFFERENCES])
def test_known_difference_is_real(case: dict[str, Any]) -> None:
    """A listed difference must still exist, with python-dotenv giving the recorded result."""
    theirs = python_dotenv(case["text"])
    assert theirs != case["expected"]
    assert theirs == case["dotenv_differs"]["dotenv"]
