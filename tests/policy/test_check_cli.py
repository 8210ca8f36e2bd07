"""`egress-sidecar policy check`, run as the real console command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from policy_helpers import REPO

from sidecar.policy.loader import load_policy
from tests.support.policy_lines import line_of

CLI = Path(sys.executable).parent / "egress-sidecar"
DEFAULT = REPO / "policies" / "default.yaml"


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "policy", "check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_default_policy_passes() -> None:
    result = run(DEFAULT)
    digest = load_policy([DEFAULT]).digest[:12]
    assert result.returncode == 0, result.stderr
    ok, mode, *entries = result.stdout.splitlines()
    assert ok == f"OK: 1 files, 14 endpoints (mode=enforce), digest {digest}"
    assert mode == f"mode enforce (set at {DEFAULT}:{line_of(DEFAULT, 'mode: enforce')})"
    assert len(entries) == 14
    assert entries[0].startswith("  providers.openai: api.openai.com; ports 443; paths /v1/*;")
    assert entries[0].endswith(
        f"; credential 'openai' as authorization  ({DEFAULT}:{line_of(DEFAULT, 'openai:')})"
    )
    assert result.stderr == ""


def test_directory_and_several_paths(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "extra.yaml").write_text(
        "version: 1\nallow:\n  - {name: otel, host: otel.example.org, ports: [4318]}\n"
    )
    result = run("--quiet", DEFAULT, tmp_path / "d")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"OK: 2 files, 15 endpoints \(mode=enforce\), digest [0-9a-f]{12}\n", result.stdout
    )


def test_broken_file_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nproviders:\n  openai:\n    hosts: ['*', api.openai.com]\n"
        "    ports: [0443]\n    hostz: []\n"
    )
    result = run(bad)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:4: providers.openai.hosts[0]: unsupported wildcard '*': only a leading '*.' "
        "is allowed (e.g. '*.example.com')",
        f"{bad}:5: providers.openai.ports[0]: write the port as a plain decimal number, not "
        "'0443' (YAML reads 0443 as octal and 0x1bb as hex)",
        f"{bad}:6: providers.openai.hostz: unknown key 'hostz': did you mean 'hosts'?",
        "FAILED: 3 problems",
    ]


def test_overlay_cannot_flip_the_default_to_audit(tmp_path: Path) -> None:
    extra = tmp_path / "audit.yaml"
    extra.write_text("version: 1\nmode: audit\n")
    result = run(DEFAULT, extra)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"{extra}:2: mode: mode 'audit' conflicts with mode 'enforce' at "
        f"{DEFAULT}:{line_of(DEFAULT, 'mode: enforce')}; "
        "all files must agree (or leave 'mode' out)"
    )


def test_conflict_with_default_names_both_files(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("version: 1\nallow:\n  - {host: api.openai.com, ports: [443]}\n")
    result = run(DEFAULT, extra)
    assert result.returncode == 1
    first, summary = result.stderr.splitlines()
    assert first.startswith(f"{extra}:3: allow[0].host: host 'api.openai.com' is also listed by ")
    assert f"providers.openai at {DEFAULT}:" in first
    assert summary == "FAILED: 1 problem"


def test_nonexistent_path(tmp_path: Path) -> None:
    result = run(tmp_path / "nope.yaml")
    assert result.returncode == 1
    assert (
        result.stderr == f"{tmp_path / 'nope.yaml'}: no such file or directory\nFAILED: 1 problem\n"
    )


def test_no_path_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert "PATH" in result.stderr


def test_policy_modules_do_not_import_mitmproxy() -> None:
    code = (
        "import sys, sidecar.policy.loader, sidecar.policy.check, sidecar.cli;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mitmproxy', 'socket_x'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
