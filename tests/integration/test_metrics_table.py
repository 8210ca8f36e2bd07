"""README's metrics table is the one index of every metric: what a running sidecar
exposes on /metrics must be exactly what the table lists (issue 12: one table per fact).
A metric added without a row, or a row left behind by a removed metric, fails here."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
# Series only the supervisor of `run --workers N` (N > 1) registers.
SUPERVISOR_ONLY = {"egress_sidecar_workers", "egress_sidecar_worker_restarts"}


def _family(name: str) -> str:
    """A counter's family, with or without its `_total` suffix."""
    return name.removesuffix("_total")


def readme_metrics() -> set[str]:
    text = README.read_text()
    start = text.index("| metric | labels |")
    rows = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    names: set[str] = set()
    for row in rows:
        first_cell = row.split("|")[1]
        names.update(_family(n) for n in re.findall(r"`(egress_sidecar_[a-z0-9_*]+)`", first_cell))
    return names


def exposed_metrics(text: str) -> set[str]:
    found = re.findall(r"^# TYPE (egress_sidecar_[a-z0-9_]+) ", text, flags=re.M)
    return {_family(n) for n in found}


def test_every_metric_the_sidecar_exposes_has_a_readme_row_and_every_row_a_metric(sidecar):
    exposed = exposed_metrics(sidecar.metrics())
    listed = readme_metrics()
    assert len(exposed) > 15, sorted(exposed)  # the scrape really listed the families
    patterns = {n for n in listed if "*" in n}
    exact = listed - patterns
    unlisted = {
        m for m in exposed if m not in exact and not any(fnmatchcase(m, p) for p in patterns)
    }
    assert not unlisted, f"metrics without a README row: {sorted(unlisted)}"
    stale = exact - exposed - SUPERVISOR_ONLY
    assert not stale, f"README rows for metrics the sidecar does not expose: {sorted(stale)}"
    for pattern in patterns:
        assert any(fnmatchcase(m, pattern) for m in exposed), f"README {pattern}: none exposed"
