"""``cocoon-netsim run SCENARIO.toml [--seed N] [--out DIR]``: run a scenario, write report JSON + PNG.

Exit status: 0 when every invariant is PASS or SKIP, 1 when one FAILs, 2 for a bad scenario.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from netsim.report import build_report, summary_lines
from netsim.runner import Simulation
from netsim.scenario import ScenarioError, load_scenario


def run_scenario(path: Path, *, seed: int | None = None, out: Path | None = None,
                 base_dir: Path | None = None, plots: bool = True) -> dict[str, Any]:
    """Run one scenario to completion and return its report (also written to ``out``)."""
    scenario = load_scenario(path)
    seed = scenario.seed if seed is None else seed
    out = out or Path("netsim-out") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if scenario.topology is not None:  # network namespaces: root, iproute2 and nftables, else a clear SKIP
        from netsim.natsim import skipped_report

        skipped = skipped_report(scenario, seed)
        if skipped is not None:
            (out / "report.json").write_text(json.dumps(skipped, indent=2))
            return skipped
    with tempfile.TemporaryDirectory(prefix=f"netsim-{scenario.name}-", dir=base_dir) as tmp:
        try:
            sim = Simulation(scenario, seed=seed, base_dir=Path(tmp))
            data = trio.run(sim.run)
            report = build_report(data, png=out / "report.png" if plots else None)
            report["node_logs"] = "deleted with the temporary base dir; pass --keep-logs to copy them"
            report["requests_detail"] = [r.as_dict() for r in sorted(data.results, key=lambda r: r.index)]
            (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        finally:  # keep the logs of a run that crashed too: those are the ones worth reading
            if getattr(run_scenario, "_keep_logs", False):
                import shutil

                for log in Path(tmp).rglob("*.log"):
                    dest = out / "logs" / log.relative_to(tmp)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, dest)
        if getattr(run_scenario, "_keep_logs", False):
            report["node_logs"] = str(out / "logs")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cocoon-netsim", description="scripted scenarios against a local cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario")
    run.add_argument("scenario", type=Path)
    run.add_argument("--seed", type=int, default=None, help="overrides the scenario's seed")
    run.add_argument("--out", type=Path, default=None, help="directory for report.json and report.png")
    run.add_argument("--keep-logs", action="store_true", help="copy node logs into the output directory")
    run.add_argument("-v", "--verbose", action="store_true")
    sub.add_parser("clean", help="delete network namespaces (and processes in them) left by crashed netsim runs")
    args = parser.parse_args(argv)
    if args.command == "clean":
        from netsim.netns import sweep_stale

        for name in sweep_stale():
            print(f"deleted {name}")
        return
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("libp2p", "hypercorn", "httpx", "multiaddr", "cocoon_node"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Progress through the timeline (cluster up, converged, each fault, workload done) even without -v.
    logging.getLogger("netsim.runner").setLevel(logging.INFO)
    setattr(run_scenario, "_keep_logs", args.keep_logs)  # noqa: B010
    try:
        report = run_scenario(args.scenario, seed=args.seed, out=args.out)
    except ScenarioError as exc:
        print(f"cocoon-netsim: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for line in summary_lines(report) if "skipped" not in report else [f"SKIP  {report['skipped']}"]:
        print(line)
    print(f"report: {Path(report['plots']).parent / 'report.json' if report.get('plots') else '(no plots)'}")
    failed = any(inv["verdict"] == "FAIL" for inv in report["invariants"])
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
