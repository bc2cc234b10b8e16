"""A change to a SQLite file committed by another process, as the sqlite3 shell, another command or an agent
would make it: what a store that remembers reads (store/sqlite.py `remembered`) must see at its next read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def commit_elsewhere(path: Path, statement: str) -> None:
    """`statement`, committed to the database at `path` by another process."""
    program = "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute(sys.argv[2]); db.commit()"
    subprocess.run([sys.executable, "-c", program, str(path), statement], check=True, timeout=60)
