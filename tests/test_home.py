"""The one way a file is written whole, private unless told (`home.write_whole`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent_vault.home import write_whole


def test_a_file_is_private_from_its_first_byte_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    target.write_text("old\n")
    target.chmod(0o644)
    write_whole(target, '{"new": true}\n')
    assert target.read_text() == '{"new": true}\n'
    assert target.stat().st_mode & 0o777 == 0o600
    write_whole(target, b"bytes too\n")
    assert target.read_bytes() == b"bytes too\n"
    assert sorted(os.listdir(tmp_path)) == ["status.json"]


def test_a_file_others_must_read_gets_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "ca.pem"
    write_whole(target, b"-----BEGIN CERTIFICATE-----\n", 0o644)
    assert target.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["ca.pem"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_written_for_another_user_is_theirs_from_its_first_byte(tmp_path: Path) -> None:
    target = tmp_path / "agent-vault.service"
    write_whole(target, "[Unit]\n", 0o640, owner=(65534, 65534))  # what `system install` does for its files
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o640)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    write_whole(target, "the last good one\n")
    with pytest.raises(TypeError):
        write_whole(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "the last good one\n"
    assert os.listdir(tmp_path) == ["checkpoint"]


def test_readers_never_see_it_empty_or_half_written_while_writers_race(tmp_path: Path) -> None:
    target = tmp_path / "broker.json"
    texts = [("x" * 200_000 + f"{n}\n") for n in range(4)]
    write_whole(target, texts[0])
    seen: set[int] = set()
    done = threading.Event()

    def write(text: str) -> None:
        for _ in range(30):
            write_whole(target, text)

    def read() -> None:
        while not done.is_set():
            seen.add(len(target.read_text()))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(text,)) for text in texts]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    done.set()
    reader.join()
    assert seen == {len(texts[0])}  # every read was one whole file
    assert target.read_text() in texts
    assert os.listdir(tmp_path) == ["broker.json"]
