"""A small Bitwarden Secrets Manager stand-in on loopback HTTPS, for the real `bitwarden-sdk` to talk to.

No offline Secrets Manager exists, and the SDK talks https only. This server answers the few
endpoints the provider's calls reach, with Bitwarden's wire format and Bitwarden's cryptography, so the
real SDK (in the provider's worker process) signs in, decrypts and encrypts exactly as it does against
bitwarden.com:

- `POST /identity/connect/token` (client credentials) answers a JWT naming the organization and an
  `encrypted_payload`: the organization key, encrypted under the key derived from the access token's
  16-byte secret (HKDF-SHA256, salt `bitwarden-accesstoken`, info `sm-access-token`).
- `/api/...`: list secrets and projects, get secrets by IDs, create, update, delete. Keys, values,
  notes and project names travel as type-2 EncStrings (AES-256-CBC + HMAC-SHA256) under the
  organization key; the server decrypts what the SDK sends, so a test also checks the SDK encrypted it.

Only what the provider uses is here; anything else is a 404. The SDK must run in another process
(the provider's worker does): its calls hold the GIL, so this server's thread could not answer a
call made from the process it runs in. The certificate is self-signed for
127.0.0.1 and is trusted by the worker through SSL_CERT_FILE.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tests.certs import self_signed

# --- certificate ----------------------------------------------------------------------------------------


def make_certificate(directory: Path) -> Path:
    """cert.pem and key.pem in `directory`: a self-signed server certificate for 127.0.0.1."""
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    self_signed(directory, "agent-vault test server", names)
    return directory


# --- Bitwarden's symmetric cryptography -------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """An AES-256-CBC + HMAC-SHA256 key (Bitwarden's Aes256CbcHmacKey): 32 bytes each."""

    enc: bytes
    mac: bytes

    @classmethod
    def from_bytes(cls, raw: bytes) -> Key:
        assert len(raw) == 64
        return cls(raw[:32], raw[32:])

    def raw(self) -> bytes:
        return self.enc + self.mac


def access_token_key(secret: bytes) -> Key:
    """bitwarden-crypto's derive_shareable_key(secret, "accesstoken", Some("sm-access-token"))."""
    prk = hmac.new(b"bitwarden-accesstoken", secret, hashlib.sha256).digest()
    return Key.from_bytes(HKDFExpand(algorithm=hashes.SHA256(), length=64, info=b"sm-access-token").derive(prk))


def encrypt(key: Key, text: str | bytes) -> str:
    """A type-2 EncString: 2.<iv>|<ciphertext>|<mac>, each in base64."""
    data = text.encode() if isinstance(text, str) else text
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key.enc), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    mac = hmac.new(key.mac, iv + ciphertext, hashlib.sha256).digest()
    return "2." + "|".join(base64.b64encode(part).decode() for part in (iv, ciphertext, mac))


def decrypt(key: Key, enc_string: str) -> str:
    kind, _, rest = enc_string.partition(".")
    iv, ciphertext, mac = (base64.b64decode(part) for part in rest.split("|"))
    if kind != "2" or not hmac.compare_digest(mac, hmac.new(key.mac, iv + ciphertext, hashlib.sha256).digest()):
        raise ValueError("not an EncString under this key")
    decryptor = Cipher(algorithms.AES(key.enc), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(padded) + unpadder.finalize()).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- the organization -----------------------------------------------------------------------------------


@dataclass
class Stored:
    id: str
    key: str
    value: str
    note: str
    project_ids: list[str]
    created: str
    revised: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Organization:
    """One organization and one machine account that can read and write all of its projects."""

    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=lambda: base64.b64encode(os.urandom(22)).decode().rstrip("="))
    secret: bytes = field(default_factory=lambda: os.urandom(16))
    key: Key = field(default_factory=lambda: Key.from_bytes(os.urandom(64)))
    projects: dict[str, str] = field(default_factory=dict)  # id -> name
    secrets: dict[str, Stored] = field(default_factory=dict)
    #: every sign-in is answered 400 invalid_client
    refuse_logins: bool = False
    #: (method, path) of every request, in order
    requests: list[tuple[str, str]] = field(default_factory=list)
    bearer: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def token(self) -> str:
        return f"0.{self.client_id}.{self.client_secret}:{base64.b64encode(self.secret).decode()}"

    def reset(self) -> None:
        with self.lock:
            self.projects.clear()
            self.secrets.clear()
            self.requests.clear()

    def add_project(self, name: str) -> str:
        project_id = str(uuid.uuid4())
        self.projects[project_id] = name
        return project_id

    def add_secret(self, key: str, value: str, project_id: str | None, note: str = "") -> str:
        secret_id = str(uuid.uuid4())
        now = _now()
        self.secrets[secret_id] = Stored(secret_id, key, value, note, [project_id] if project_id else [], now, now)
        return secret_id

    def value(self, key: str) -> str:
        (found,) = [s.value for s in self.secrets.values() if s.key == key]
        return found

    # --- wire models ---

    def _projects_of(self, secret: Stored) -> list[dict[str, Any]]:
        return [{"id": p, "name": encrypt(self.key, self.projects[p])} for p in secret.project_ids]

    def base_secret(self, secret: Stored, kind: str = "baseSecret") -> dict[str, Any]:
        return {
            "object": kind,
            "id": secret.id,
            "organizationId": self.organization_id,
            "key": encrypt(self.key, secret.key),
            "value": encrypt(self.key, secret.value),
            "note": encrypt(self.key, secret.note),
            "creationDate": secret.created,
            "revisionDate": secret.revised,
            "projects": self._projects_of(secret),
        }

    def full_secret(self, secret: Stored) -> dict[str, Any]:
        return {**self.base_secret(secret, "secret"), "read": True, "write": True}


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def _answer(self, method: str) -> None:
        org = self.server.org
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        with org.lock:
            org.requests.append((method, self.path))
        try:
            status, out = self._route(method, self.path.split("?")[0], body)
        except (KeyError, ValueError):
            status, out = 400, {"message": "The request is malformed."}
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        org = self.server.org
        if (method, path) == ("POST", "/identity/connect/token"):
            return self._token(parse_qs(body.decode()))
        auth = self.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in org.bearer:
            return 401, {}
        parts = path.strip("/").split("/")
        not_found = (404, {"message": "Resource not found."})
        with org.lock:
            if parts[:2] == ["api", "organizations"] and len(parts) == 4:
                if parts[2] != org.organization_id:
                    return not_found
                if (method, parts[3]) == ("GET", "secrets"):
                    return 200, self._list_secrets()
                if (method, parts[3]) == ("GET", "projects"):
                    return 200, self._list_projects()
                if (method, parts[3]) == ("POST", "secrets"):
                    return self._write(None, json.loads(body))
            if (method, parts) == ("POST", ["api", "secrets", "get-by-ids"]):
                ids = json.loads(body)["ids"]
                if any(i not in org.secrets for i in ids):
                    return not_found
                return 200, {"object": "list", "data": [org.base_secret(org.secrets[i]) for i in ids]}
            if (method, parts) == ("POST", ["api", "secrets", "delete"]):
                ids = json.loads(body)
                data = []
                for i in ids:
                    error = None if org.secrets.pop(i, None) else "Secret not found"
                    data.append({"object": "bulkDelete", "id": i, "error": error})
                return 200, {"object": "list", "data": data}
            if parts[:2] == ["api", "secrets"] and len(parts) == 3 and parts[2] in org.secrets:
                if method == "GET":
                    return 200, org.full_secret(org.secrets[parts[2]])
                if method == "PUT":
                    return self._write(parts[2], json.loads(body))
        return not_found

    def _token(self, form: dict[str, list[str]]) -> tuple[int, Any]:
        org = self.server.org
        given = (form.get("grant_type"), form.get("client_id"), form.get("client_secret"), form.get("scope"))
        wanted = (["client_credentials"], [org.client_id], [org.client_secret], ["api.secrets"])
        if org.refuse_logins or given != wanted:
            return 400, {"error": "invalid_client", "error_description": "invalid_client"}
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {
            "nbf": now,
            "exp": now + 3600,
            "iss": self.server.base,
            "client_id": org.client_id,
            "sub": org.client_id,
            "organization": org.organization_id,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "scope": ["api.secrets"],
        }
        header = {"alg": "RS256", "typ": "at+jwt"}
        jwt = ".".join(
            [_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()), _b64url(os.urandom(64))]
        )
        with org.lock:
            org.bearer.add(jwt)
        payload = json.dumps({"encryptionKey": base64.b64encode(org.key.raw()).decode()})
        return 200, {
            "access_token": jwt,
            "expires_in": 3600,
            "refresh_token": None,
            "token_type": "Bearer",
            "scope": "api.secrets",
            "encrypted_payload": encrypt(access_token_key(org.secret), payload),
        }

    def _list_secrets(self) -> dict[str, Any]:
        org = self.server.org
        secrets = [
            {
                "id": s.id,
                "organizationId": org.organization_id,
                "key": encrypt(org.key, s.key),
                "creationDate": s.created,
                "revisionDate": s.revised,
                "projects": [{"id": p, "name": encrypt(org.key, org.projects[p])} for p in s.project_ids],
                "read": True,
                "write": True,
            }
            for s in org.secrets.values()
        ]
        used = sorted({p for s in org.secrets.values() for p in s.project_ids})
        projects = [{"id": p, "name": encrypt(org.key, org.projects[p])} for p in used]
        return {"object": "SecretsWithProjectsList", "secrets": secrets, "projects": projects}

    def _list_projects(self) -> dict[str, Any]:
        org = self.server.org
        now = _now()
        data = [
            {
                "object": "project",
                "id": p,
                "organizationId": org.organization_id,
                "name": encrypt(org.key, name),
                "creationDate": now,
                "revisionDate": now,
                "read": True,
                "write": True,
            }
            for p, name in org.projects.items()
        ]
        return {"object": "list", "data": data, "continuationToken": None}

    def _write(self, secret_id: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        """Create (secret_id None) or replace a secret; what the SDK sent must open under the org key."""
        org = self.server.org
        key, value, note = (decrypt(org.key, body[k]) for k in ("key", "value", "note"))
        project_ids = [str(uuid.UUID(p)) for p in body.get("projectIds") or []]
        if any(p not in org.projects for p in project_ids):
            return 404, {"message": "Resource not found."}
        now = _now()
        if secret_id is None:
            secret_id = str(uuid.uuid4())
            stored = Stored(secret_id, key, value, note, project_ids, now, now)
        else:
            old = org.secrets[secret_id]
            stored = Stored(secret_id, key, value, note, project_ids, old.created, now)
        org.secrets[secret_id] = stored
        return 200, org.full_secret(stored)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, org: Organization) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.org = org
        self.base = f"https://127.0.0.1:{self.server_address[1]}"


@dataclass
class Running:
    """What a test sees of the running server: its address and its organization."""

    base: str
    org: Organization

    def __getattr__(self, name: str) -> Any:
        return getattr(self.org, name)


@contextlib.contextmanager
def serving(tls: Path, *, refuse_logins: bool = False) -> Iterator[Running]:
    """A stand-in server on a free loopback port, for the length of the block."""
    org = Organization(refuse_logins=refuse_logins)
    server = Server(org)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="bitwarden-stand-in", daemon=True)
    thread.start()
    try:
        yield Running(server.base, org)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
