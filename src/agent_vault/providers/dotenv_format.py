"""Read and write dotenv text with no I/O: `parse` gives values, `parse_document` keeps every line.

`update` changes values in place and leaves every other byte alone. docs/envfile.md describes the format.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from agent_vault.domain.errors import InvalidRequest, ProviderError

Kind = Literal["blank", "comment", "binding", "invalid"]

KEY_PATTERN = r"[A-Za-z_][A-Za-z0-9_.-]*"

_WS = r"[^\S\r\n]"  # whitespace that does not end a line
_KEY = re.compile(KEY_PATTERN)
_NEWLINE = re.compile(r"\r\n|\n|\r")
_PHYSICAL_LINE = re.compile(r"([^\r\n]*)(\r\n|\n|\r|)")
_BLANK = re.compile(rf"{_WS}*")
_COMMENT = re.compile(rf"{_WS}*#")
# `export ` is atomic: once seen, a key must follow (as in python-dotenv, `export =1` is invalid)
_HEAD = re.compile(rf"({_WS}*(?>(?:export{_WS}+)?))({KEY_PATTERN})({_WS}*={_WS}*)")
_DOUBLE_QUOTED = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_TAIL = re.compile(rf"({_WS}*#[^\r\n]*)?{_WS}*(\r\n|\n|\r|\Z)")
_INLINE_COMMENT = re.compile(r"\s+#")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_LINE_END = re.compile(r"(\r\n|\n|\r)\Z")
_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+,=-]+")

#: escapes decoded inside double quotes; any other backslash pair is kept as written
_UNESCAPE = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    '"': '"',
    "'": "'",
    "\\": "\\",
    "$": "$",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}
#: escapes the writer uses inside double quotes (python-dotenv decodes all of them too)
_ESCAPE_FOR_WRITE = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}


@dataclass(frozen=True)
class Line:
    """One entry of a document: a physical line, or several for a multi-line quoted value."""

    kind: Kind
    #: the exact text, line ending(s) included
    raw: str = field(repr=False)
    #: 1-based number of its first physical line
    lineno: int
    key: str | None = None
    value: str | None = field(default=None, repr=False)
    #: indentation, `export `, key and `=` with the spaces around it (bindings only)
    head: str = field(default="", repr=False)
    #: whitespace and `# ...` after the value (bindings only)
    comment: str = field(default="", repr=False)
    #: why an invalid line was skipped; never contains a value
    problem: str = ""


@dataclass(frozen=True)
class Document:
    """A whole file as a list of lines, enough to write it back byte for byte."""

    lines: tuple[Line, ...]
    bom: str = ""
    #: the file's line ending, used for lines the writer adds
    newline: str = "\n"

    @property
    def values(self) -> dict[str, str]:
        """Key to value; for a duplicated key the last one wins."""
        return {ln.key: ln.value for ln in self.lines if ln.kind == "binding" and ln.key and ln.value is not None}

    @property
    def problems(self) -> list[str]:
        """One message per skipped line: line number, key if known, and the reason."""
        return [_problem_message(ln) for ln in self.lines if ln.kind == "invalid"]

    def text(self) -> str:
        """The document as text, identical to what was parsed."""
        return self.bom + "".join(ln.raw for ln in self.lines)


# --- reading ----------------------------------------------------------------------------------


def parse(text: str) -> dict[str, str]:
    """The values of a dotenv text; malformed lines are skipped (see `parse_document` for them)."""
    return parse_document(text).values


def parse_document(text: str) -> Document:
    """Every line of `text`, classified; bindings carry key and value, invalid lines a problem."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    lines: list[Line] = []
    pos, lineno = 0, 1
    while pos < len(body):
        line, pos = _read_entry(body, pos, lineno)
        lines.append(line)
        lineno += len(_NEWLINE.findall(line.raw))
    first_newline = _NEWLINE.search(body)
    return Document(tuple(lines), bom, first_newline.group() if first_newline else "\n")


def is_valid_key(name: str) -> bool:
    """Whether `name` can be a key in a file we write."""
    return _KEY.fullmatch(name) is not None


def _read_entry(body: str, pos: int, lineno: int) -> tuple[Line, int]:
    physical = _PHYSICAL_LINE.match(body, pos)
    assert physical is not None  # the pattern matches the empty string
    content, end = physical.group(1), physical.end()
    if _BLANK.fullmatch(content):
        return Line("blank", physical.group(), lineno), end
    if _COMMENT.match(content):
        return Line("comment", physical.group(), lineno), end
    head = _HEAD.match(body, pos, pos + len(content))
    if head is None:
        reason = "invalid key name" if "=" in content else "no '=' in the line"
        return Line("invalid", physical.group(), lineno, problem=reason), end
    return _read_binding(body, pos, head, lineno)


def _read_binding(body: str, pos: int, head: re.Match[str], lineno: int) -> tuple[Line, int]:
    start, key = head.end(), head.group(2)
    quote = body[start : start + 1]
    if quote not in ("'", '"'):
        return _unquoted(body, pos, head, lineno)
    quoted = _quoted_value(body, start)
    if quoted is None:
        problem = "unterminated single quote" if quote == "'" else "unterminated double quote"
        return _invalid_to_line_end(body, pos, start, lineno, key, problem)
    value, after = quoted
    tail = _TAIL.match(body, after)
    if tail is None:
        return _invalid_to_line_end(body, pos, after, lineno, key, "text after the closing quote")
    line = Line("binding", body[pos : tail.end()], lineno, key, value, head=head.group(), comment=tail.group(1) or "")
    return line, tail.end()


def _quoted_value(body: str, start: int) -> tuple[str, int] | None:
    """The value of the quoted string at `start` and the index after it; None if unterminated."""
    if body[start] == "'":
        close = body.find("'", start + 1)
        return None if close < 0 else (body[start + 1 : close], close + 1)
    match = _DOUBLE_QUOTED.match(body, start)
    return None if match is None else (_unescape(match.group(1)), match.end())


def _unquoted(body: str, pos: int, head: re.Match[str], lineno: int) -> tuple[Line, int]:
    physical = _PHYSICAL_LINE.match(body, head.end())
    assert physical is not None
    rest, separator = physical.group(1), head.group(3)
    if rest.startswith("#") and separator[-1] != "=":  # `KEY= # note`: empty value, then a comment
        value, comment = "", rest
    else:
        cut = _INLINE_COMMENT.search(rest)
        value = (rest[: cut.start()] if cut else rest).rstrip()
        comment = rest[cut.start() :].rstrip() if cut else ""
    line = Line("binding", body[pos : physical.end()], lineno, head.group(2), value, head=head.group(), comment=comment)
    return line, physical.end()


def _invalid_to_line_end(body: str, pos: int, error_at: int, lineno: int, key: str, problem: str) -> tuple[Line, int]:
    physical = _PHYSICAL_LINE.match(body, error_at)
    assert physical is not None
    return Line("invalid", body[pos : physical.end()], lineno, key, problem=problem), physical.end()


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPE.get(m.group(1), m.group()), text)


def _problem_message(line: Line) -> str:
    where = f"line {line.lineno}" + (f" ({line.key})" if line.key else "")
    return f"{where}: {line.problem}; the line was skipped"


# --- writing ----------------------------------------------------------------------------------


def format_value(key: str, value: str) -> str:
    """The text to write after `KEY=` so that `value` reads back exactly; refuses what cannot.

    Plain when only safe characters, else single quotes, else double quotes with escapes.
    """
    _check(key, value)
    if value == "" or _PLAIN.fullmatch(value):
        return value
    if "'" not in value and "\\" not in value and not any(_is_control(c) for c in value):
        return f"'{value}'"
    return '"' + "".join(_ESCAPE_FOR_WRITE.get(c, c) for c in value) + '"'


def update(document: Document, values: Mapping[str, str]) -> str:
    """The document's text with `values` set: existing keys changed in place, new ones appended.

    Raises InvalidRequest for a name or value that cannot be written, and ProviderError when
    malformed lines already in the file would change meaning; nothing is half-applied.
    """
    rendered = {key: format_value(key, value) for key, value in values.items()}
    last = {ln.key: i for i, ln in enumerate(document.lines) if ln.kind == "binding" and ln.key}
    texts = [ln.raw for ln in document.lines]
    added: list[str] = []
    for key, value in values.items():
        index = last.get(key)
        if index is None:
            added.append(f"{key}={rendered[key]}{document.newline}")
        elif document.lines[index].value != value:
            texts[index] = _rewrite(document.lines[index], rendered[key])
    if added and texts and not _LINE_END.search(texts[-1]):
        texts[-1] += document.newline
    text = document.bom + "".join(texts + added)
    _verify(document, values, text)
    return text


def _check(key: str, value: str) -> None:
    if not is_valid_key(key):
        raise InvalidRequest(
            f"cannot write secret name {key[:80]!r}: names are letters, digits, '_', '.' and '-', "
            "not starting with a digit or '.'/'-'. Fix: choose a name like MY_API_KEY."
        )
    bad = next((c for c in value if _is_control(c) and c not in _ESCAPE_FOR_WRITE), None)
    if bad is not None or _has_lone_surrogate(value):
        what = "a NUL byte" if bad == "\0" else "a character that cannot be stored in a text file"
        raise InvalidRequest(
            f"cannot write secret {key!r}: its value contains {what}. "
            "Fix: store it encoded (for example base64) instead."
        )


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


def _has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _rewrite(line: Line, rendered: str) -> str:
    comment = line.comment
    if comment and not comment[0].isspace():
        comment = " " + comment
    ending = _LINE_END.search(line.raw)
    return f"{line.head}{rendered}{comment}{ending.group() if ending else ''}"


def _verify(document: Document, values: Mapping[str, str], text: str) -> None:
    """Refuse a result that does not read back as exactly the old values plus the new ones."""
    expected = {**document.values, **values}
    got = parse(text)
    if got == expected:
        return
    changed = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    problems = "; ".join(document.problems) or "no malformed lines were found"
    raise ProviderError(
        f"refusing to write: the result would not read back as intended for {', '.join(changed)} "
        f"({problems}). Nothing was written. Fix: correct the malformed lines in the file, then retry."
    )
