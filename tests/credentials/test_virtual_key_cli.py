"""`egress-sidecar virtual-key new | hash`, run as the real console command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sidecar.credentials.virtual_keys import hash_virtual_key

CLI = Path(sys.executable).parent / "egress-sidecar"


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "virtual-key", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_new_prints_a_key_and_the_hash_the_keys_file_needs() -> None:
    result = run("new")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines()[:2])
    key, digest = lines["key"].strip(), lines["hash"].strip()
    assert digest == hash_virtual_key(key)
    assert key not in digest


def test_two_new_keys_differ() -> None:
    assert run("new").stdout != run("new").stdout


def test_hash_reads_the_key_from_stdin() -> None:
    key = run("new").stdout.splitlines()[0].split(":", 1)[1].strip()
    result = run("hash", stdin=key + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hash_virtual_key(key)


def test_hash_of_a_guessable_key_is_refused_without_echoing_it() -> None:
    result = run("hash", stdin="vk-password123\n")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "password123" not in result.stderr


def test_hash_takes_no_key_as_an_argument() -> None:
    # Keys on the command line end up in shell history and `ps`.
    result = run("hash", "vk-" + "a" * 43)
    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr
    assert "a" * 43 not in result.stdout
