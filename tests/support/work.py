"""Count the work a piece of our code does, not the time it takes (issue 10).

`WorkCounter` uses `sys.monitoring` (PEP 669) to count the Python-level steps executed
in the `sidecar` package while it is active: lines, branches and backward jumps (each
loop iteration), function starts and generator resumptions. Deterministic, so a test
can bound it per input byte on a busy machine. What it cannot see is work inside C
(regex engines, `Counter`, `bytes` methods): the scanners only hand C primitives that
are linear in their input (see each scanner's notes), and `bench.scanners` measures
the throughput that results.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import CodeType, TracebackType
from typing import Any

SIDECAR = str(Path(__file__).resolve().parents[2] / "sidecar")
_TOOL = 4  # a free sys.monitoring tool id (0-5; debugger, coverage, profiler, optimizer = 0-2, 5)


class WorkCounter:
    def __init__(self) -> None:
        self.steps = 0
        self._mine: dict[CodeType, bool] = {}

    def _count(self, code: CodeType, *_: Any) -> Any:
        mine = self._mine.get(code)
        if mine is None:
            mine = self._mine[code] = code.co_filename.startswith(SIDECAR)
        if mine:
            self.steps += 1
            return None
        return sys.monitoring.DISABLE

    def __enter__(self) -> WorkCounter:
        mon = sys.monitoring
        mon.use_tool_id(_TOOL, "scanner-work")
        ev = mon.events
        for event in (ev.LINE, ev.BRANCH, ev.JUMP, ev.PY_START, ev.PY_RESUME):
            mon.register_callback(_TOOL, event, self._count)
        mon.set_events(_TOOL, ev.LINE | ev.BRANCH | ev.JUMP | ev.PY_START | ev.PY_RESUME)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        mon = sys.monitoring
        mon.set_events(_TOOL, 0)
        ev = mon.events
        for event in (ev.LINE, ev.BRANCH, ev.JUMP, ev.PY_START, ev.PY_RESUME):
            mon.register_callback(_TOOL, event, None)
        mon.free_tool_id(_TOOL)
        mon.restart_events()
