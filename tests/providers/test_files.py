"""The path helpers of the file-backed providers (providers/files.py) that every read goes through."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from agent_vault.providers.files import inside


@pytest.mark.parametrize(
    ("path", "root"),
    [
        ("/home/fake/project/.env", "/home/fake/project"),
        ("/home/fake/project", "/home/fake/project"),
        ("/home/fake/project/deep/er/.env", "/home/fake/project"),
        ("/home/fake/project-other/.env", "/home/fake/project"),
        ("/home/fake/proj", "/home/fake/project"),
        ("/home/fake", "/home/fake/project"),
        ("/etc/passwd", "/"),
        ("/", "/"),
        ("/", "/home"),
        ("/home/fake/project/..hidden/.env", "/home/fake/project"),
    ],
)
def test_inside_answers_as_pathlib_does_for_resolved_paths(path: str, root: str) -> None:
    """A sibling whose name starts like the root ("project-other") is outside it; the root itself is inside."""
    assert inside(Path(path), Path(root)) is PurePosixPath(path).is_relative_to(PurePosixPath(root))


def test_inside_on_real_directories(tmp_path: Path) -> None:
    project = (tmp_path / "project").resolve()
    (project / "sub").mkdir(parents=True)
    (tmp_path / "project-evil").mkdir()
    assert inside((project / "sub" / ".env"), project)
    assert not inside((tmp_path / "project-evil" / ".env").resolve(), project)
    assert not inside(tmp_path.resolve(), project)
