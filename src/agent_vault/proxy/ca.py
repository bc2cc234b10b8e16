"""The proxy's local certificate authority: made once, kept in a private directory.

`ca-key.pem` is 0600 in a 0700 directory (in system mode the broker's user owns it and the agent
cannot read it). `ca.pem` is the certificate a child trusts; `bundle.pem` is that certificate
followed by the system's roots, for runtimes whose CA variable replaces their store rather than
adding to it (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, GIT_SSL_CAINFO).
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent_vault.domain.errors import ConfigError
from agent_vault.home import write_whole

CA_LIFETIME = dt.timedelta(days=365)
#: a CA this close to its end is replaced (children started before must get the new ca.pem)
CA_RENEW_BEFORE = dt.timedelta(days=30)
KEY_FILE, CERT_FILE, BUNDLE_FILE = "ca-key.pem", "ca.pem", "bundle.pem"


@dataclass(frozen=True)
class Leaf:
    """A host's certificate and its key, PEM, and when it stops being valid."""

    pem: bytes
    not_after: dt.datetime


class LocalCA:
    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.directory = directory
        self._key = key
        self.certificate = cert
        #: one key for every leaf (like mitmproxy): a leaf is a fresh certificate, not a fresh key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def bundle_path(self) -> Path:
        return self.directory / BUNDLE_FILE

    @classmethod
    def load_or_create(cls, directory: Path, *, now: dt.datetime | None = None) -> LocalCA:
        """The CA in `directory`, made (or remade when near its end) as needed."""
        now = now or dt.datetime.now(dt.UTC)
        _private_dir(directory)
        loaded = _load(directory)
        if loaded is None or loaded[1].not_valid_after_utc - now < CA_RENEW_BEFORE:
            loaded = _create(directory, now)
        ca = cls(directory, *loaded)
        write_whole(ca.bundle_path, ca.certificate.public_bytes(serialization.Encoding.PEM) + _system_roots(), 0o644)
        return ca

    def publish(self, directory: Path) -> tuple[Path, Path]:
        """Copies of `ca.pem` and `bundle.pem` in `directory` (made 0755, files 0644) for children of
        other users, who cannot enter the CA's own private directory; returns (cert, bundle)."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)  # noqa: S103 (certificates only: the key never leaves the private dir)
        cert, bundle = directory / CERT_FILE, directory / BUNDLE_FILE
        write_whole(cert, self.cert_path.read_bytes(), 0o644)
        write_whole(bundle, self.bundle_path.read_bytes(), 0o644)
        return cert, bundle

    def issue(self, host: str, *, now: dt.datetime, lifetime: dt.timedelta) -> Leaf:
        """A leaf certificate for `host` (a DNS name or an IP address), signed by this CA."""
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([_general_name(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_usage(), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Leaf(cert.public_bytes(serialization.Encoding.PEM) + key_pem, not_after)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def _load(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    if not key_path.exists() or not cert_path.exists():
        return None
    if stat.S_IMODE(key_path.stat().st_mode) & 0o077:
        raise ConfigError(f"{key_path} can be read by other users; make it private (chmod 600) or delete it")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not a key this proxy made; delete {directory} to make a new CA")
    return key, x509.load_pem_x509_certificate(cert_path.read_bytes())


def _create(directory: Path, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agent-vault"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"agent-vault proxy CA ({getpass.getuser()}@{socket.gethostname()})"[:64]
            ),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_whole(directory / KEY_FILE, key_pem)
    write_whole(directory / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key, cert


def _system_roots() -> bytes:
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and os.path.isfile(cafile):
        return b"\n" + Path(cafile).read_bytes()
    return b""
