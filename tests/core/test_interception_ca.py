"""The start-up check of the interception CA (`runner.ensure_interception_ca`): created
when missing, never rewritten, and a file that cannot serve refused with what and how."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from mitmproxy import certs

from sidecar.runner import ensure_interception_ca
from sidecar.settings import SettingsError


def test_an_empty_directory_gets_a_ca_that_only_its_owner_reads(tmp_path):
    ensure_interception_ca(str(tmp_path / "ca"))
    ca_file = tmp_path / "ca" / "mitmproxy-ca.pem"
    assert b"PRIVATE KEY" in ca_file.read_bytes() and b"CERTIFICATE" in ca_file.read_bytes()
    assert ca_file.stat().st_mode & 0o077 == 0


def test_a_ca_present_is_left_byte_for_byte(tmp_path):
    ensure_interception_ca(str(tmp_path))
    raw = (tmp_path / "mitmproxy-ca.pem").read_bytes()
    ensure_interception_ca(str(tmp_path))
    assert (tmp_path / "mitmproxy-ca.pem").read_bytes() == raw


def test_a_ca_key_with_a_passphrase_is_refused_saying_so_without_the_key(tmp_path):
    ensure_interception_ca(str(tmp_path))
    ca_file = tmp_path / "mitmproxy-ca.pem"
    raw = ca_file.read_bytes()
    key = load_pem_private_key(raw, None)
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    ca_file.write_bytes(locked + raw[raw.index(b"-----BEGIN CERTIFICATE") :])
    with pytest.raises(SettingsError, match="has a passphrase") as caught:
        ensure_interception_ca(str(tmp_path))
    assert "ENCRYPTED" not in str(caught.value) and "secret" not in str(caught.value)


def test_a_ca_directory_that_is_a_file_is_refused_as_not_a_directory(tmp_path):
    (tmp_path / "ca").write_text("")
    with pytest.raises(SettingsError, match="not a directory; point --ca-dir at a directory"):
        ensure_interception_ca(str(tmp_path / "ca"))


def _self_signed_ca(key, algorithm) -> bytes:
    """A CA file (key, then certificate) mitmproxy's loader reads without complaint."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mitmproxy")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, algorithm)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem + certificate.public_bytes(serialization.Encoding.PEM)


def test_an_ed25519_ca_that_mitmproxy_loads_but_cannot_sign_with_is_refused(tmp_path):
    """It parses and its key matches its certificate, and mitmproxy loads it; then every
    leaf certificate fails (mitmproxy signs with SHA-256), so every handshake would."""
    ca_file = tmp_path / "mitmproxy-ca.pem"
    ca_file.write_bytes(_self_signed_ca(ed25519.Ed25519PrivateKey.generate(), None))
    with pytest.raises(ValueError, match="ed25519"):  # what the sidecar would meet per flow
        certs.CertStore.from_store(tmp_path, "mitmproxy", 2048).get_cert("example.com", [])
    with pytest.raises(SettingsError, match="not RSA or EC") as caught:
        ensure_interception_ca(str(tmp_path))
    assert "PRIVATE" not in str(caught.value)


def test_an_ec_ca_mitmproxy_signs_with_passes(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "mitmproxy-ca.pem").write_bytes(_self_signed_ca(key, hashes.SHA256()))
    ensure_interception_ca(str(tmp_path))


# A throwaway key on secp112r1, a curve OpenSSL knows and cryptography will not load.
_SECP112R1_TEST_KEY = (
    b"-----BEGIN EC PRIVATE KEY-----\n"
    b"MD4CAQEEDr8TuyyqG6YrRGWoSUjQoAcGBSuBBAAGoSADHgAEa3v/VTjO4H7Xka/W\n"
    b"j/CfXC731YCiB+10AqDpYQ==\n"
    b"-----END EC PRIVATE KEY-----\n"
)


def test_a_ca_key_on_a_curve_that_cannot_be_loaded_is_a_config_error_not_a_traceback(tmp_path):
    ensure_interception_ca(str(tmp_path))
    ca_file = tmp_path / "mitmproxy-ca.pem"
    raw = ca_file.read_bytes()
    ca_file.write_bytes(_SECP112R1_TEST_KEY + raw[raw.index(b"-----BEGIN CERTIFICATE") :])
    with pytest.raises(SettingsError, match="algorithm or curve that cannot be loaded") as caught:
        ensure_interception_ca(str(tmp_path))
    assert "MD4CAQ" not in str(caught.value)
