"""The checkpoint signing key: Ed25519, made on first need, kept in the state dir (0600, like every
state file). Only its public half is ever shown; the private half never appears in a message."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent_vault.domain.errors import AuditError, InvalidRequest
from agent_vault.home import StatePaths

KEY_FILE = "checkpoint-key.pem"
#: how a public key is written: `ed25519:` and the 32 raw bytes in base64
PUBLIC_PREFIX = "ed25519:"


class PublicKey:
    """The public half: verifies checkpoints; safe to print, copy and keep anywhere."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.raw = raw
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """`ed25519:<base64>`, as `agent-vault audit key` prints it."""
        body = text.strip()
        if not body.startswith(PUBLIC_PREFIX):
            raise ValueError(f"a public key looks like {PUBLIC_PREFIX}<base64> (from `agent-vault audit key`)")
        try:
            raw = base64.b64decode(body.removeprefix(PUBLIC_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError("the public key is not valid base64 after `ed25519:`") from None
        if len(raw) != 32:
            raise ValueError(f"the public key has {len(raw)} bytes; an Ed25519 key has 32")
        return cls(raw)

    @property
    def text(self) -> str:
        return PUBLIC_PREFIX + base64.b64encode(self.raw).decode()

    @property
    def key_id(self) -> str:
        """16 hex digits naming the key (each checkpoint carries the id of the key that signed it)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.text!r})"


class SigningKey:
    """The private half. Its repr names the key id only."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def __repr__(self) -> str:
        return f"SigningKey(key id {self.public.key_id})"


def key_path(paths: StatePaths) -> Path:
    return paths.root / KEY_FILE


def load_key(paths: StatePaths) -> SigningKey | None:
    """The state dir's signing key, or None when none was made yet. Refuses a file others could read."""
    path = key_path(paths)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(
            f"cannot read the checkpoint key {path}: {exc.strerror} (a symlink is refused). "
            "Fix: make it a regular file only you can read (chmod 600)"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise AuditError(
                f"the checkpoint key {path} is not a private file of yours (mode {stat.S_IMODE(st.st_mode):o}): "
                f"someone else may have read it. Fix: chown it to yourself and chmod 600 {path}, or remove it to "
                "make a new key (watchers then need the new public key)"
            )
        data = handle.read()
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise AuditError(
            f"the checkpoint key {path} is not an Ed25519 private key in PEM. Fix: remove it to make a new one"
        )
    return SigningKey(private)


def load_or_create_key(paths: StatePaths) -> tuple[SigningKey, bool]:
    """The signing key, made now if there is none (True when made here). Safe against a second process
    making one at the same moment: the file appears whole or not at all, and the first one wins."""
    existing = load_key(paths)
    if existing is not None:
        return existing, False
    key = SigningKey.generate()
    path = key_path(paths)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.pem())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(partial, path)  # fails if another process made the key first
        except FileExistsError:
            again = load_key(paths)
            if again is None:
                raise AuditError(f"the checkpoint key {path} vanished while it was made; try again") from None
            return again, False
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return key, True


def public_key_arg(text: str) -> PublicKey:
    """`--key`: the public key itself (`ed25519:...`) or a file holding it."""
    if text.strip().startswith(PUBLIC_PREFIX):
        try:
            return PublicKey.parse(text)
        except ValueError as exc:
            raise InvalidRequest(f"--key: {exc}") from None
    path = Path(text).expanduser()
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise InvalidRequest(
            f"--key {text}: not a public key (ed25519:...) and not a readable file ({why}). "
            "Fix: pass what `agent-vault audit key` printed, or a file holding it"
        ) from None
    lines = [line.strip() for line in content.splitlines() if line.strip().startswith(PUBLIC_PREFIX)]
    if len(lines) != 1:
        raise InvalidRequest(f"--key {path}: the file must hold exactly one line `ed25519:...` (it has {len(lines)})")
    try:
        return PublicKey.parse(lines[0])
    except ValueError as exc:
        raise InvalidRequest(f"--key {path}: {exc}") from None
