"""`python -m bench.refused_flood`: the refused-request flood alone, for sidecar versions
side by side, with an optional py-spy profile of the sidecar during the flood.

    python -m bench.refused_flood --rounds 5 --tree before=/tmp/old --tree after=.

Each `--tree NAME=DIR` is a source tree (e.g. `git archive <commit> | tar -x -C DIR`)
whose `egress-sidecar run` is started; rounds alternate between them, so machine noise
hits all alike. Each round: allowed requests (8 keep-alive connections, a new one every
5 requests) without, then during, a wrk flood of refused absolute-form requests (16
connections). Prints the medians and the during/without ratio per tree (the issue 10
target: at least 0.70). `--profile` samples each sidecar with py-spy during one extra
flood (no allowed traffic) and prints where the refusal path spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import contenders as C
from bench.procs import Procs
from bench.run import FLOOD_LUA, flood_round, wrk


async def profile_flood(
    sidecar: C.Contender, tmp: Path, script: Path, seconds: int, keep: Path | None = None
) -> str:
    from bench.pyspy import sample_during, summarize

    out = tmp / f"{sidecar.name}.flood.pyspy.txt"
    assert sidecar.target.proxy is not None
    proxy = "http://{}:{}".format(*sidecar.target.proxy)
    sampled = await sample_during(sidecar, out, seconds, lambda: wrk(proxy, script, seconds, 16))
    if isinstance(sampled, str):
        return sampled
    flood, samples = sampled
    if keep is not None:
        shutil.copy(out, keep / out.name)
    result = summarize(samples, top=30)
    lines = [
        f"{result['samples']} samples during a refused flood alone ({flood.get('rps')} refused/s)",
        "by area:",
    ]
    lines += [f"  {p:5.1f}%  {f}" for f, p in result["areas"]]
    lines += ["self time:"] + [f"  {p:5.1f}%  {f}" for f, p in result["self"]]
    lines += ["inclusive time:"] + [f"  {p:5.1f}%  {f}" for f, p in result["inclusive"]]
    return "\n".join(lines)


async def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    world = C.start_world(procs, tmp)
    script = tmp / "flood.lua"
    script.write_text(FLOOD_LUA)
    sidecars: list[C.Contender] = []
    for name, tree in args.tree:
        C.SIDECAR_TREE = str(Path(tree).resolve())
        sidecars.append(C.start_sidecar(procs, world, label=f"sidecar-{name}"))
        sidecars[-1].name = name
    rounds: dict[str, list[dict[str, Any]]] = {s.name: [] for s in sidecars}
    for r in range(args.rounds):
        for sidecar in sidecars[r % len(sidecars) :] + sidecars[: r % len(sidecars)]:
            rounds[sidecar.name].append(await flood_round(sidecar, args.seconds, script))
            print(f"round {r + 1} {sidecar.name}: {rounds[sidecar.name][-1]}", file=sys.stderr)
    out: dict[str, Any] = {}
    for name, rs in rounds.items():
        quiet = statistics.median(x["quiet_rps"] for x in rs)
        loud = statistics.median(x["flood_rps"] for x in rs)
        ratios = [round(x["flood_rps"] / x["quiet_rps"], 2) for x in rs if x["quiet_rps"]]
        out[name] = {
            "allowed_rps_without": round(quiet, 1),
            "allowed_rps_during": round(loud, 1),
            "during_over_without": round(loud / quiet, 2) if quiet else None,
            "ratio_per_round": ratios,
            "refused_per_s": round(statistics.median(x["refused_per_s"] or 0 for x in rs), 1),
            "flood_all_refused": all(x["flood_non2xx"] == x["flood_requests"] for x in rs),
        }
    if args.profile:
        for sidecar in sidecars:
            out[sidecar.name]["profile"] = await profile_flood(
                sidecar, tmp, script, int(args.seconds) + 2, args.profile_raw
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.refused_flood", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--tree",
        action="append",
        type=lambda s: tuple(s.split("=", 1)),
        default=[],
        metavar="NAME=DIR",
        help="a sidecar source tree; repeatable",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--profile-raw", type=Path, metavar="DIR", help="keep py-spy's raw collapsed stacks here"
    )
    args = parser.parse_args(argv)
    if not args.tree:
        args.tree = [("current", str(C.REPO))]
    if shutil.which("wrk") is None:
        print("wrk not installed (apt-get install -y wrk)", file=sys.stderr)
        return 3
    tmp = Path(tempfile.mkdtemp(prefix="egress-bench-flood-"))
    procs = Procs(tmp)
    started = time.monotonic()
    try:
        result = asyncio.run(run(args, procs, tmp))
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"# refused flood, {args.rounds} rounds of {args.seconds} s per tree, "
        f"{time.monotonic() - started:.0f} s"
    )
    print(
        "| tree | allowed req/s without | during flood | during/without | per round | "
        "refused/s | all refused |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, e in result.items():
        print(
            f"| {name} | {e['allowed_rps_without']} | {e['allowed_rps_during']} | "
            f"{e['during_over_without']} | {e['ratio_per_round']} | {e['refused_per_s']} | "
            f"{e['flood_all_refused']} |"
        )
    for name, e in result.items():
        if "profile" in e:
            print(f"\n## profile: {name}\n{e['profile']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
