"""The team listener's TLS certificate: the administrator's own (`certFile`/`keyFile`), or one made here.

A made certificate is self-signed, for the names front doors reach this host by (`[team] hostNames`, the
host's own names, the listen address, loopback), kept in `team-tls/` in the state dir (the key 0600 in a
0700 directory) and reused at every start, so front doors that trust it (`AGENT_VAULT_CA`) keep working. It
is made again only when it is missing, near its end, or lacks a name asked for since; its SHA-256 fingerprint
is printed at every start so whoever copies it can check the copy.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent_vault.domain.errors import ConfigError
from agent_vault.home import ensure_private_dir, write_whole

LIFETIME = dt.timedelta(days=5 * 365)
RENEW_BEFORE = dt.timedelta(days=30)
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"


@dataclass(frozen=True)
class Certificate:
    """Where the listener's certificate and key are, and the certificate's SHA-256 fingerprint."""

    cert: Path
    key: Path
    fingerprint: str
    #: made by this start (front doors that trusted an older one must get this one)
    made: bool = False

    def context(self) -> ssl.SSLContext:
        """The server's TLS context: TLS 1.2 at least, this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot use the team listener's certificate {self.cert} with the key {self.key} ({exc}). "
                "Fix: point [team] certFile and keyFile at a PEM certificate (chain) and its private key."
            ) from None
        return context


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as `openssl x509 -fingerprint -sha256` prints it."""
    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def given(cert: Path, key: Path) -> Certificate:
    """The administrator's own certificate and key."""
    try:
        pem = cert.read_bytes()
        print_of = fingerprint(pem)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the team listener's certificate {cert} ({exc}). Fix: team.certFile.") from None
    return Certificate(cert, key, print_of)


def wanted_names(extra: Iterable[str], listen_host: str) -> list[str]:
    """What a made certificate is for: the configured names, this host's, the listen address, loopback."""
    names = [*extra, socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    if listen_host not in ("0.0.0.0", "::", ""):  # noqa: S104 (compared, not bound)
        names.append(listen_host)
    return list(dict.fromkeys(n for n in names if n))


def self_signed(directory: Path, names: list[str], now: dt.datetime | None = None) -> Certificate:
    """The certificate in `directory`, made (or made again) when missing, near its end, or short of a name."""
    ensure_private_dir(directory)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    now = now or dt.datetime.now(dt.UTC)
    if cert_path.exists() and key_path.exists():
        pem = cert_path.read_bytes()
        try:
            current = x509.load_pem_x509_certificate(pem)
        except ValueError:
            current = None
        if current is not None and _fits(current, names, now):
            return Certificate(cert_path, key_path, fingerprint(pem))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"agent-vault team broker {names[0]}"[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )  # digitalSignature only
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_whole(key_path, key_pem)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    write_whole(cert_path, pem, 0o644)
    return Certificate(cert_path, key_path, fingerprint(pem), made=True)


def _fits(cert: x509.Certificate, names: list[str], now: dt.datetime) -> bool:
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return False
    try:
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in present.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in present.get_values_for_type(x509.IPAddress)}
    return all(str(_normal(n)) in have for n in names)


def _normal(name: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return name.lower()


def _general_name(name: str) -> x509.GeneralName:
    normal = _normal(name)
    return x509.DNSName(normal) if isinstance(normal, str) else x509.IPAddress(normal)
