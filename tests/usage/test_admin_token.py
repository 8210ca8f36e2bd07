"""The admin token file of the `keys` API: created private, refused when others could
read or change it, and a state directory that cannot hold it does not stop the start."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sidecar.admin_keys import TokenUnavailable, read_admin_token
from sidecar.settings import SettingsError


def test_created_once_private_and_random(tmp_path: Path):
    path = tmp_path / "state" / "admin-token"
    token = read_admin_token(path, create=True)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_admin_token(path, create=True) == token  # kept, not replaced
    assert read_admin_token(path, create=False) == token


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620, 0o602])
def test_token_others_could_read_or_change_is_refused(tmp_path: Path, mode: int):
    path = tmp_path / "admin-token"
    path.write_text("t" * 40)
    path.chmod(mode)
    with pytest.raises(SettingsError, match=r"readable or writable by other users.*chmod 600"):
        read_admin_token(path, create=False)


def test_group_readable_token_from_a_secret_volume_is_accepted(tmp_path: Path):
    """fsGroup makes a Secret's files group-readable (0440): the gateway's container
    does not mount the volume, so that is not a way in."""
    path = tmp_path / "admin-token"
    path.write_text("t" * 40)
    path.chmod(0o440)
    assert read_admin_token(path, create=False) == "t" * 40


def test_short_token_is_refused(tmp_path: Path):
    path = tmp_path / "admin-token"
    path.write_text("guessable\n")
    path.chmod(0o600)
    with pytest.raises(SettingsError, match="at least 32 characters"):
        read_admin_token(path, create=False)


def test_unusable_state_directory_is_reported_not_fatal(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TokenUnavailable, match="cannot create"):
        read_admin_token(blocker / "state" / "admin-token", create=True)
    with pytest.raises(SettingsError, match="cannot read"):  # the CLI: a clear error
        read_admin_token(tmp_path / "missing", create=False)
