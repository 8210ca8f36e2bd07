"""The start-up check of the interception CA (`runner.ensure_interception_ca`): created
when missing, never rewritten, and a file that cannot serve refused with what and how."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

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
