"""The local CA: private key file, leaf certificates with the right names, short-lived, renewed."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509

from agent_vault.domain.errors import ConfigError
from agent_vault.proxy import LocalCA
from agent_vault.proxy.leaves import LeafCache


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_files_and_modes(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "ca")
    assert _mode(tmp_path / "ca") == 0o700
    assert _mode(tmp_path / "ca" / "ca-key.pem") == 0o600
    assert _mode(ca.cert_path) == 0o644
    bundle = ca.bundle_path.read_bytes()
    assert bundle.startswith(ca.cert_path.read_bytes()) and bundle.count(b"BEGIN CERTIFICATE") > 1
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0


def test_ca_is_kept_across_loads_and_renewed_near_its_end(tmp_path: Path) -> None:
    first = LocalCA.load_or_create(tmp_path)
    again = LocalCA.load_or_create(tmp_path)
    assert again.certificate == first.certificate
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
    renewed = LocalCA.load_or_create(tmp_path, now=later)
    assert renewed.certificate != first.certificate


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    LocalCA.load_or_create(tmp_path)
    os.chmod(tmp_path / "ca-key.pem", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalCA.load_or_create(tmp_path)


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("api.example.test", x509.DNSName("api.example.test")),
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("::1", x509.IPAddress(ipaddress.ip_address("::1"))),
    ],
)
def test_leaf_names_and_lifetime(tmp_path: Path, host: str, name: x509.GeneralName) -> None:
    ca = LocalCA.load_or_create(tmp_path)
    now = dt.datetime.now(dt.UTC)
    leaf = x509.load_pem_x509_certificate(ca.issue(host, now=now, lifetime=dt.timedelta(days=1)).pem)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == x509.SubjectAlternativeName(
        [name]
    )
    assert leaf.not_valid_after_utc - now <= dt.timedelta(days=1, seconds=1)
    assert leaf.issuer == ca.certificate.subject
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_leaves_are_cached_then_renewed_before_they_expire(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path)
    now = [dt.datetime.now(dt.UTC)]
    cache = LeafCache(ca, clock=lambda: now[0])
    first = cache.context_for("a.test")
    assert cache.context_for("a.test") is first
    now[0] += dt.timedelta(hours=22)
    assert cache.context_for("a.test") is first
    now[0] += dt.timedelta(hours=1, minutes=30)  # within the last hour of its day
    assert cache.context_for("a.test") is not first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".leaf-")]  # no leaf key left on disk


def test_published_certificates_are_readable_and_the_key_stays_private(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "private")
    cert, bundle = ca.publish(tmp_path / "public" / "proxy-ca")
    assert cert.read_bytes() == ca.cert_path.read_bytes() and bundle.read_bytes() == ca.bundle_path.read_bytes()
    assert stat.S_IMODE(os.stat(cert).st_mode) == 0o644 and stat.S_IMODE(os.stat(bundle).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(cert.parent).st_mode) == 0o755
    assert sorted(p.name for p in cert.parent.iterdir()) == ["bundle.pem", "ca.pem"]  # no key
    assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o700
