"""Sweep benchmark: a calibration-style sweep (random networks synthesized with yosys, packed with nextpnr)
run with 1 worker (in this process) and with 2 Ray workers on this machine; then re-run to show reuse.

    python bench/sweep.py [--points 12] [--family ice40] [--seed 5]

Writes bench/results/sweep.json and docs/results/sweep.md:

- ``points``: the sweep's designs (:func:`boards.calibrate.calibration_point` tasks, run by
  :func:`hwq.sweep.run_tasks`, the machinery of ``hwq sweep`` and of the calibration sweep);
- ``same_results``: every point's yosys counts (per component and in total) and packed cells are equal
  between the two runs;
- ``speedup``: the 1-worker wall time over the 2-worker wall time (Ray's start included);
- ``rerun_fraction``: a second 2-worker run with the results folder of the first, over the first's time
  (every point reused: no synthesis).
Each run gets an empty synthesis cache (``HWQ_CACHE``), so every point is synthesized.
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _figures(result):
    """What must be equal between runs: every component's counts and the totals (not the seconds)."""
    return {"points": [{k: v for k, v in p.items() if k not in ("seconds",)} for p in result["points"]],
            "total": result["total"]}


def timed_run(tasks, workers, cache=None):
    from boards.calibrate import calibration_point
    from hwq.sweep import run_tasks

    with tempfile.TemporaryDirectory(prefix="hwq-sweep-cache-") as synth_cache:
        os.environ["HWQ_CACHE"] = synth_cache  # an empty synthesis cache: every point is synthesized
        t0 = time.perf_counter()
        results = run_tasks(calibration_point, tasks, workers=workers, cache=cache,
                            log=lambda m: print(f"  {workers} worker(s): {m}", file=sys.stderr, flush=True))
        wall = time.perf_counter() - t0
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} points failed; first: {failed[0]['error']}")
    return results, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, default=12)
    p.add_argument("--family", default="ice40")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep.json"))
    p.add_argument("--md", default=str(ROOT / "docs" / "results" / "sweep.md"))
    args = p.parse_args(argv)
    from hwq.fileio import write_json, write_text

    tasks = [{"family": args.family, "seed": args.seed, "index": k} for k in range(args.points)]
    one, t_one = timed_run(tasks, 1)
    with tempfile.TemporaryDirectory(prefix="hwq-sweep-results-") as results_dir:
        two, t_two = timed_run(tasks, 2, cache=results_dir)
        again, t_again = timed_run(tasks, 2, cache=results_dir)
    same = all(_figures(a["result"]) == _figures(b["result"]) for a, b in zip(one, two, strict=True))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    s = {"points": args.points, "family": args.family, "seed": args.seed,
         "same_results": same, "speedup": round(t_one / t_two, 3),
         "wall_seconds": {"workers_1": round(t_one, 2), "workers_2": round(t_two, 2), "rerun": round(t_again, 2)},
         "rerun_reused": sum(r["reused"] for r in again), "rerun_fraction": round(t_again / t_two, 4),
         "point_seconds_workers_1": [r["seconds"] for r in one],
         "point_seconds_workers_2": [r["seconds"] for r in two],
         "workers_2_pids": len({r["pid"] for r in two}),
         "lut_totals": [r["result"]["total"]["lut"] for r in one],
         "command": " ".join(["python", "bench/sweep.py", *sys.argv[1:]]), "commit": commit or None,
         "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    write_json(Path(args.out), s)
    md = (f"# Sweep benchmark\n\nMade by `{s['command']}` at commit {s['commit']}; raw numbers in "
          f"`bench/results/sweep.json`.\n\nA calibration-style sweep: {s['points']} random {s['family']} networks "
          f"(seed {s['seed']}), each synthesized with yosys and packed with nextpnr, as tasks of "
          f"`hwq.sweep.run_tasks`, each run with an empty synthesis cache.\n\n"
          f"| run | wall time |\n|---|---|\n| 1 worker (in this process) | {t_one:.1f} s |\n"
          f"| 2 Ray workers (Ray's start included) | {t_two:.1f} s |\n"
          f"| 2 Ray workers again, same results folder | {t_again:.2f} s ({s['rerun_reused']} of {s['points']} reused) |\n\n"
          f"Speedup {s['speedup']}x; every point's counts equal between the runs: {same}. The re-run takes "
          f"{100 * s['rerun_fraction']:.2f}% of the first 2-worker run. Points took "
          f"{min(s['point_seconds_workers_1']):.0f}-{max(s['point_seconds_workers_1']):.0f} s each; "
          f"{s['machine']['cpus']} cores.\n")
    write_text(Path(args.md), md)
    print(md)


if __name__ == "__main__":
    main()
