"""EnvFileProvider: the provider contract, plus files, paths, locking and crash safety on real files."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dotenv import dotenv_values

from agent_vault.domain.errors import ConfigError, InvalidRequest, ProviderError, ReadOnlyVault, SecretNotFound
from agent_vault.domain.secret import SecretValue
from agent_vault.providers import dotenv_format, envfile, files
from agent_vault.providers.base import ProviderContext, SecretProvider
from agent_vault.providers.envfile import EnvFileOptions, EnvFileProvider
from tests.providers.contract import SEED, ProviderContract

HOUR_AGO = time.time() - 3600


def make(base: Path, file: str = "secrets.env", writable: bool = True) -> EnvFileProvider:
    context = ProviderContext(vault="test", base_dir=base, writable=writable)
    return EnvFileProvider(EnvFileOptions(file=file), context)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_bytes(text.encode())
    path.chmod(mode)
    return path


def sv(value: str) -> dict[str, SecretValue]:
    return {"KEY": SecretValue(value)}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    return project


class TestEnvFileContract(ProviderContract):
    # dotenv keys are letters, digits, '_', '.' and '-' (docs/envfile.md)
    odd_names = ("dots.and-dashes", "UPPER_lower_9")
    unholdable_names = ("with space", "colon:at@plus+", "nested/path/KEY")

    def make_provider(self, tmp_path: Path, names_to_values: dict[str, str], writable: bool) -> SecretProvider:
        project = tmp_path / "contract"
        project.mkdir(exist_ok=True)
        if names_to_values:
            text = dotenv_format.update(dotenv_format.parse_document(""), names_to_values)
            write(project / "secrets.env", text)
        return make(project, writable=writable)


# --- reading ------------------------------------------------------------------------------------


def test_missing_file_is_an_empty_vault(base: Path) -> None:
    provider = make(base, "absent.env")
    assert provider.list_names() == []
    with pytest.raises(SecretNotFound) as caught:
        provider.get("ANY")
    message = str(caught.value)
    assert "'test'" in message and "absent.env" in message and "list_secrets" in message


def test_edits_are_seen_without_restart(base: Path) -> None:
    path = write(base / "secrets.env", "KEY=fake-aaaa\n")
    provider = make(base)
    assert provider.get("KEY").reveal() == "fake-aaaa"
    path.write_text("KEY=fake-bbbb\n")  # same size, same inode, same timestamp tick
    assert provider.get("KEY").reveal() == "fake-bbbb"
    path.write_text("KEY=fake-cccc\nOTHER=fake-dddd\n")
    assert provider.list_names() == ["KEY", "OTHER"]
    os.replace(write(base / "new.env", "ONLY=fake-eeee\n"), path)
    assert provider.list_names() == ["ONLY"]


def test_cached_parse_is_invalidated_even_if_mtime_is_reset(base: Path) -> None:
    path = write(base / "secrets.env", "KEY=fake-aaaa\n")
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    provider = make(base)
    assert provider.get("KEY").reveal() == "fake-aaaa"
    path.write_text("KEY=fake-bbbb\n")
    os.utime(path, (HOUR_AGO, HOUR_AGO))  # same size, inode and mtime; only ctime moved
    assert provider.get("KEY").reveal() == "fake-bbbb"


def test_large_file_is_parsed_once(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(base / "big.env", "".join(f"KEY_{i}=fake-value-{i}\n" for i in range(10_000)))
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    calls = []
    real_parse = dotenv_format.parse_document
    monkeypatch.setattr(dotenv_format, "parse_document", lambda text: calls.append(1) or real_parse(text))
    provider = make(base, "big.env")
    assert len(provider.list_names()) == 10_000
    for i in range(0, 10_000, 10):
        assert provider.get(f"KEY_{i}").reveal() == f"fake-value-{i}"
    assert len(calls) == 1
    path.write_text("KEY_0=fake-changed\n")
    assert provider.get("KEY_0").reveal() == "fake-changed"
    assert len(calls) == 2


def test_answers_from_memory_only_for_the_version_of_the_file_already_read(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """held_names/held_values (what the broker asks on its event loop) never serve a stale or unread file."""
    monkeypatch.setattr(files, "_RACY_NS", 0)  # trust a just-written file's stamp (each edit below moves mtime)
    path = write(base / "secrets.env", "KEY=fake-aaaa\nOTHER=fake-bbbb\n")
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    provider = make(base)
    assert provider.held_names() is None and provider.held_values(["KEY"]) is None  # nothing read yet
    assert provider.list_names() == ["KEY", "OTHER"]
    assert provider.held_names() == ["KEY", "OTHER"]
    held = provider.held_values(["KEY", "OTHER"])
    assert held is not None and {k: v.reveal() for k, v in held.items()} == {"KEY": "fake-aaaa", "OTHER": "fake-bbbb"}
    assert provider.held_values(["KEY", "ABSENT"]) is None  # an absent name: the real read gives the error

    path.write_text("KEY=fake-cccc\nOTHER=fake-bbbb\n")  # same size and inode
    os.utime(path, (HOUR_AGO + 1, HOUR_AGO + 1))
    assert provider.held_values(["KEY"]) is None and provider.held_names() is None
    assert provider.get("KEY").reveal() == "fake-cccc"

    os.replace(write(base / "new.env", "ONLY=fake-dddd\n"), path)
    assert provider.held_names() is None
    assert provider.list_names() == ["ONLY"]

    outside = write(base.parent / "outside.env", "KEY=fake-outside\n")
    os.utime(outside, (HOUR_AGO, HOUR_AGO))
    path.unlink()
    path.symlink_to(outside)  # a relative path may not lead out through a symlink
    assert provider.held_values(["KEY"]) is None and provider.held_names() is None
    with pytest.raises(ConfigError, match="outside the config directory"):
        provider.get("KEY")


def test_malformed_lines_are_skipped_and_reported_without_values(base: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = 'GOOD=fake-good-1\nfake-pasted-secret-2\nBROKEN="fake-unterminated-3\n1BAD=fake-bad-key-4\n'
    write(base / "secrets.env", text)
    provider = make(base)
    with caplog.at_level(logging.WARNING):
        assert provider.list_names() == ["GOOD"]
    problems = provider.problems()
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3 (BROKEN)", "line 4"]
    shown = "\n".join(problems) + caplog.text
    assert "line 3" in caplog.text
    for fake in ("fake-pasted-secret-2", "fake-unterminated-3", "fake-bad-key-4", "fake-good-1"):
        assert fake not in shown


def test_invalid_utf8_is_refused_without_bytes(base: Path) -> None:
    (base / "secrets.env").write_bytes(b"A=fake-a\nB=fake-\xff\xfe\n")
    with pytest.raises(ProviderError) as caught:
        make(base).list_names()
    assert "line 2" in str(caught.value) and "UTF-8" in str(caught.value)
    assert "fake" not in str(caught.value)


# --- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", ["../../.ssh/id_rsa", "../outside.env", "sub/../../outside.env", ".."])
def test_relative_path_leaving_base_dir_is_refused(base: Path, file: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(base, file)
    assert file in str(caught.value) and "Fix:" in str(caught.value)


def test_symlink_out_of_base_dir_is_refused(base: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "outside.env", "KEY=fake-outside\n")
    (base / "link.env").symlink_to(outside)
    with pytest.raises(ConfigError) as caught:
        make(base, "link.env")
    message = str(caught.value)
    assert "link.env" in message and "symlink" in message and "Fix:" in message
    assert "fake-outside" not in message


def test_symlinked_directory_out_of_base_dir_is_refused(base: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    write(tmp_path / "elsewhere" / "secrets.env", "KEY=fake-outside\n")
    (base / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError):
        make(base, "sub/secrets.env")


def test_symlink_planted_after_start_is_refused(base: Path, tmp_path: Path) -> None:
    path = write(base / "secrets.env", "KEY=fake-inside\n")
    provider = make(base)
    outside = write(tmp_path / "outside.env", "KEY=fake-outside\n")
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(ConfigError):
        provider.get("KEY")
    with pytest.raises(ConfigError):
        provider.set_many(sv("fake-new"))
    assert outside.read_text() == "KEY=fake-outside\n"


def test_symlink_inside_base_dir_is_followed_and_kept(base: Path) -> None:
    target = write(base / "real.env", "KEY=fake-old\n")
    (base / "link.env").symlink_to("real.env")
    provider = make(base, "link.env")
    provider.set_many(sv("fake-new"))
    assert (base / "link.env").is_symlink()
    assert target.read_text() == "KEY=fake-new\n"
    assert provider.get("KEY").reveal() == "fake-new"


def test_absolute_path_outside_base_dir_is_allowed(base: Path, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    path = write(tmp_path / "shared" / "abs.env", "KEY=fake-abs\n")
    provider = make(base, str(path))
    assert provider.get("KEY").reveal() == "fake-abs"


def test_directory_is_refused(base: Path) -> None:
    (base / "dir.env").mkdir()
    with pytest.raises(ConfigError) as caught:
        make(base, "dir.env")
    assert "directory" in str(caught.value)


def test_device_is_refused(base: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make(base, "/dev/null")
    assert "device" in str(caught.value)


def run_with_timeout(action: Callable[[], object], seconds: float = 10) -> BaseException | None:
    """Run `action` in a thread; fail the test if it hangs. Returns what it raised."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the provider blocked on the file"
    return outcome[0]


def test_fifo_is_refused_without_hanging(base: Path) -> None:
    os.mkfifo(base / "pipe.env")
    assert isinstance(run_with_timeout(lambda: make(base, "pipe.env")), ConfigError)


def test_fifo_swapped_in_after_start_is_refused(base: Path) -> None:
    path = write(base / "secrets.env", "KEY=fake-a\n")
    provider = make(base)
    path.unlink()
    os.mkfifo(path)
    for action in (provider.list_names, lambda: provider.get("KEY"), lambda: provider.set_many(sv("fake-b"))):
        assert isinstance(run_with_timeout(action), ConfigError)


# --- writing ------------------------------------------------------------------------------------


def test_read_only_message_says_how_to_fix(base: Path) -> None:
    provider = make(base, writable=False)
    with pytest.raises(ReadOnlyVault) as caught:
        provider.set_many(sv("fake-value"))
    message = str(caught.value)
    assert "writable" in message and "'test'" in message and str(base) in message
    assert not (base / "secrets.env").exists()


def test_new_file_is_created_0600(base: Path) -> None:
    old_umask = os.umask(0)
    try:
        make(base).set_many(sv("fake-value"))
    finally:
        os.umask(old_umask)
    path = base / "secrets.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "KEY=fake-value\n"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_existing_mode_is_kept(base: Path, mode: int) -> None:
    path = write(base / "secrets.env", "KEY=fake-old\n", mode)
    make(base).set_many(sv("fake-new"))
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "KEY=fake-new\n"


def test_comments_order_and_untouched_lines_are_preserved(base: Path) -> None:
    before = textwrap.dedent(
        """\
        # service credentials
        export API_KEY='fake-api-old'   # rotated monthly

        DB_URL = "postgres://fake:fake@localhost/db"
          # indented comment
        not a binding line
        EMPTY=
        LAST=fake-last"""
    )
    path = write(base / "secrets.env", before)
    make(base).set_many({"API_KEY": SecretValue("fake-api-new"), "ADDED": SecretValue("fake added")})
    after = before.replace("'fake-api-old'", "fake-api-new") + "\nADDED='fake added'\n"
    assert path.read_text() == after


def test_existing_key_is_updated_in_place_last_duplicate_wins(base: Path) -> None:
    path = write(base / "secrets.env", "A=fake-1\nKEY=fake-first\nB=fake-2\nKEY=fake-second\nC=fake-3\n")
    make(base).set_many(sv("fake-new"))
    assert path.read_text() == "A=fake-1\nKEY=fake-first\nB=fake-2\nKEY=fake-new\nC=fake-3\n"


def test_multiline_value_is_replaced_by_one_line(base: Path) -> None:
    path = write(base / "secrets.env", 'A=fake-1\nKEY="fake\nmulti\nline"\nB=fake-2\n')
    provider = make(base)
    assert provider.get("KEY").reveal() == "fake\nmulti\nline"
    provider.set_many(sv("fake\nother"))
    assert path.read_text() == 'A=fake-1\nKEY="fake\\nother"\nB=fake-2\n'


def test_crlf_file_stays_crlf(base: Path) -> None:
    path = write(base / "secrets.env", "# c\r\nKEY=fake-old\r\nB=fake-b\r\n")
    make(base).set_many({"KEY": SecretValue("fake\nnew"), "NEW": SecretValue("fake-n")})
    data = path.read_bytes()
    assert data == b'# c\r\nKEY="fake\\nnew"\r\nB=fake-b\r\nNEW=fake-n\r\n'
    assert data.count(b"\n") == data.count(b"\r\n")


def test_bom_is_kept(base: Path) -> None:
    path = write(base / "secrets.env", "\ufeffKEY=fake-old\n")
    provider = make(base)
    assert provider.list_names() == ["KEY"]
    provider.set_many(sv("fake-new"))
    assert path.read_text() == "\ufeffKEY=fake-new\n"


def test_unchanged_value_does_not_rewrite_the_file(base: Path) -> None:
    path = write(base / "secrets.env", "KEY = 'fake-same'  # note\n")
    inode = path.stat().st_ino
    make(base).set_many(sv("fake-same"))
    assert path.stat().st_ino == inode
    assert path.read_text() == "KEY = 'fake-same'  # note\n"


INJECTIONS = [
    "fake-x\nOTHER=fake-y",
    "fake-x\r\nOTHER=fake-y",
    "fake-x\rOTHER=fake-y",
    "'",
    '"',
    "#",
    "=",
    "\\",
    "$HOME",
    "${HOME}",
    "fake' \nOTHER='y",
    'fake" \nOTHER="y',
    "fake\\\nOTHER=y",
    "fake\\",
    "\\'",
    '\\"',
    " # comment",
    "fake\u2028OTHER=y",
    "export OTHER=y",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_attempts_create_no_extra_key(base: Path, value: str) -> None:
    path = write(base / "secrets.env", "FIRST=fake-1\nKEY=fake-old\n")
    provider = make(base)
    provider.set_many({"KEY": SecretValue(value), "NEWKEY": SecretValue(value)})
    assert provider.list_names() == ["FIRST", "KEY", "NEWKEY"]
    assert provider.get("KEY").reveal() == value
    assert provider.get("NEWKEY").reveal() == value
    assert dotenv_values(path, interpolate=False) == {"FIRST": "fake-1", "KEY": value, "NEWKEY": value}


@pytest.mark.parametrize("value", ["fake\0nul", "fake\x1b[31m", "fake\x85", "fake\ud800"])
def test_unrepresentable_value_is_refused_and_nothing_written(base: Path, value: str) -> None:
    path = write(base / "secrets.env", "KEY=fake-old\n")
    with pytest.raises(InvalidRequest) as caught:
        make(base).set_many({"OK": SecretValue("fake-ok"), "KEY": SecretValue(value)})
    assert "KEY" in str(caught.value) and "fake" not in str(caught.value)
    assert path.read_text() == "KEY=fake-old\n"


@pytest.mark.parametrize("name", ["1BAD", "BAD KEY", "BAD\nKEY", "", "-X", "X=Y", "'X'"])
def test_invalid_name_is_refused(base: Path, name: str) -> None:
    path = write(base / "secrets.env", "KEY=fake-old\n")
    with pytest.raises(InvalidRequest):
        make(base).set_many({name: SecretValue("fake-value")})
    assert path.read_text() == "KEY=fake-old\n"


def test_write_refused_when_a_malformed_line_would_change_meaning(base: Path) -> None:
    before = 'BROKEN="fake-unterminated\nGOOD=fake-good\n'
    path = write(base / "secrets.env", before)
    provider = make(base)
    with pytest.raises(ProviderError) as caught:
        provider.set_many({"NEW": SecretValue('fake "quoted"')})
    message = str(caught.value)
    assert "line 1" in message and "fake" not in message
    assert path.read_text() == before
    provider.set_many({"NEW": SecretValue("fake-plain")})  # harmless appends still work
    assert provider.get("NEW").reveal() == "fake-plain"


def test_missing_directory_is_a_clear_error(base: Path) -> None:
    with pytest.raises(ProviderError) as caught:
        make(base, "nodir/secrets.env").set_many(sv("fake-value"))
    assert "nodir" in str(caught.value) and "fake-value" not in str(caught.value)


# --- crash safety -------------------------------------------------------------------------------


def fail_with_eio(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EIO, "fake I/O error")


@pytest.mark.parametrize("step", ["replace", "fsync", "write"])
def test_failed_write_leaves_original_intact_and_no_temp_file(
    base: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    before = "# keep\nKEY=fake-original\n"
    path = write(base / "secrets.env", before, 0o640)
    listing = sorted(os.listdir(base))
    provider = make(base)
    monkeypatch.setattr(envfile.os, step, fail_with_eio)
    with pytest.raises(ProviderError) as caught:
        provider.set_many(sv("fake-replacement"))
    monkeypatch.undo()
    assert "unchanged" in str(caught.value) and "fake-replacement" not in str(caught.value)
    assert path.read_text() == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(os.listdir(base)) == listing
    assert provider.get("KEY").reveal() == "fake-original"


def test_failed_first_write_leaves_no_file(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envfile.os, "replace", fail_with_eio)
    with pytest.raises(ProviderError):
        make(base).set_many(sv("fake-value"))
    assert os.listdir(base) == []


# --- concurrency --------------------------------------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from agent_vault.providers.base import ProviderContext
from agent_vault.providers.envfile import EnvFileOptions, EnvFileProvider
from agent_vault.domain.secret import SecretValue

base, prefix, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
context = ProviderContext(vault="test", base_dir=base, writable=True)
provider = EnvFileProvider(EnvFileOptions(file="secrets.env"), context)
for i in range(count):
    provider.set_many({f"{prefix}_{i}": SecretValue(f"fake-{prefix}-{i}"), "SHARED": SecretValue(prefix)})
"""


def test_concurrent_writers_in_processes_lose_no_update(base: Path) -> None:
    write(base / "secrets.env", "# shared file\n")
    count, prefixes = 40, ["PA", "PB", "PC"]
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(base), prefix, str(count)], stderr=subprocess.PIPE)
        for prefix in prefixes
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    values = dotenv_format.parse((base / "secrets.env").read_text())
    expected = {f"{p}_{i}": f"fake-{p}-{i}" for p in prefixes for i in range(count)}
    assert {k: v for k, v in values.items() if k != "SHARED"} == expected
    assert values["SHARED"] in prefixes
    assert not [name for name in os.listdir(base) if name.endswith(".tmp")]


def test_concurrent_writers_in_threads_lose_no_update(base: Path) -> None:
    def writer(prefix: str) -> None:
        provider = make(base)
        for i in range(30):
            provider.set_many({f"{prefix}_{i}": SecretValue(f"fake-{i}")})

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("TA", "TB", "TC")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(make(base).list_names()) == 90


def test_contract_seed_is_fake() -> None:
    assert all(value.startswith("fake") for value in SEED.values())
