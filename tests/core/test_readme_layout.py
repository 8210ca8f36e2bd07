"""README's Layout section is the newcomer's map: it must name every module of sidecar/,
and name nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "sidecar"
ENTRY = re.compile(r"^  (\S+?)(/|\.py)\s")  # "  engine.py   ..." or "  policy/   ..."


def layout() -> dict[str, str]:
    """sidecar/ entry ("engine.py", "policy/") -> its text, continuation lines included."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = ENTRY.match(line)
        if match:
            current = match[1] + match[2]
            entries[current] = line
        elif current is not None and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def modules(package: Path) -> set[str]:
    return {p.stem for p in package.glob("*.py") if p.stem != "__init__"}


def test_every_sidecar_module_and_package_has_a_line():
    listed = set(layout())
    present = {f"{m}.py" for m in modules(SIDECAR)}
    present |= {f"{p.name}/" for p in SIDECAR.iterdir() if (p / "__init__.py").is_file()}
    assert listed == present


def test_every_module_of_a_package_is_named_in_its_entry():
    for entry, text in layout().items():
        if not entry.endswith("/"):
            continue
        words = set(re.findall(r"[a-z_0-9]+", text))
        missing = modules(SIDECAR / entry.rstrip("/")) - words
        assert not missing, f"README Layout, {entry}: name {sorted(missing)}"
