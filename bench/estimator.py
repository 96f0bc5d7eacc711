"""Estimator vs synthesis on held-out designs -> bench/results/estimator.json, docs/results/estimator.md.

    python bench/estimator.py [--designs 30] [--seed 3] [--families ice40 xilinx7 ecp5]

The held-out designs are random networks from a seed the calibration did not use
(boards/calibration/*.json were made with seed 1; seed 2's designs served as the validation set while the
model's features were chosen, so the report uses seed 3, which no choice saw). Each is generated, synthesized with the family's
yosys command (results cached), and estimated by ``hwq.estimate.estimate``, the same code path as
``hwq estimate``; the errors are relative to yosys, per whole design.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import RESOURCES  # noqa: E402
from boards.calibrate import EXTRA_WIDE_KINDS, FAMILY_BOARDS, WIDE_KINDS, sweep_cases, sweep_designs  # noqa: E402
from hwq.estimate import estimate  # noqa: E402
from hwq.fileio import write_json, write_text  # noqa: E402
from rtl_gen.plan import as_folding  # noqa: E402

EARLIER = "python bench/estimator.py (an earlier run)"  # results from before runs were named


def measure(family, designs, seed, jobs, kinds=None, stored=None):
    """Estimate and synthesize the held-out designs; with ``stored`` (the rows of an earlier run of the same
    designs), estimate only, against the yosys counts stored there (after a refit: same designs, same yosys)."""
    wide = tuple(kinds) if kinds else False
    if stored is None:
        board, results = sweep_cases(family, designs, seed, jobs=jobs, wide=wide)
    else:
        board, cases = sweep_designs(family, designs, seed, wide)
        if len(stored) != designs:
            sys.exit(f"--reuse: the stored {family} results hold {len(stored)} designs, not {designs}")
        results = []
        for k, (case, row) in enumerate(zip(cases, stored, strict=True)):
            if as_folding(case[1]).to_json() != row["folding"]:
                sys.exit(f"--reuse: {family} design {k} is not the stored one (its folding differs): run without --reuse")
            results.append((case, {"folding": row["folding"], "total": row["synth"]}))
    rows = []
    for (ir, folding), rec in results:
        t0 = time.perf_counter()
        est = estimate(ir, board, folding=folding)
        ms = (time.perf_counter() - t0) * 1e3
        keys = [*RESOURCES, "cells"] if "cells" in rec["total"] else RESOURCES
        rows.append({"model": ir.model, "layers": len(ir.layers), "folding": rec["folding"],
                     "estimate": {k: est["totals"][k] for k in keys}, "synth": rec["total"], "estimate_ms": ms})
    return board, rows


def summarize(rows):
    def rel(kind):
        return np.array([(r["estimate"][kind] - r["synth"][kind]) / max(r["synth"][kind], 1) for r in rows])

    lut, ff = rel("lut"), rel("ff")
    cells = {}
    if all("cells" in r["synth"] for r in rows):
        c = rel("cells")
        cells = {"mean_abs_cell_err": round(float(np.abs(c).mean()), 4), "max_cell_err": round(float(np.abs(c).max()), 4)}
    return {
        "n_heldout": len(rows),
        "mean_abs_lut_err": round(float(np.abs(lut).mean()), 4),
        "max_lut_err": round(float(np.abs(lut).max()), 4),
        "mean_lut_err": round(float(lut.mean()), 4),
        "mean_abs_ff_err": round(float(np.abs(ff).mean()), 4),
        "max_ff_err": round(float(np.abs(ff).max()), 4),
        "bram_exact": all(r["estimate"]["bram"] == r["synth"]["bram"] for r in rows),
        "dsp_exact": all(r["estimate"]["dsp"] == r["synth"]["dsp"] for r in rows),
        **cells,
        "estimate_ms_max": round(max(r["estimate_ms"] for r in rows), 3),
        "synth_lut_range": [min(r["synth"]["lut"] for r in rows), max(r["synth"]["lut"] for r in rows)],
    }


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, kind in zip(axes, ("lut", "ff"), strict=True):
        values = []
        for family, res in results.items():
            x = [r["synth"][kind] for r in res["designs"]]
            y = [r["estimate"][kind] for r in res["designs"]]
            ax.scatter(x, y, s=14, label=f"{family} ({res['board']})")
            values += x + y
        lo, hi = 0.8 * max(min(values), 1), 1.2 * max(values)
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="estimate = yosys")
        ax.plot([lo, hi], [0.9 * lo, 0.9 * hi], "k:", lw=0.8, label="±10%")
        ax.plot([lo, hi], [1.1 * lo, 1.1 * hi], "k:", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"yosys {kind.upper()}")
        ax.set_ylabel(f"estimated {kind.upper()}")
        ax.set_title(f"{kind.upper()}: held-out designs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--families", nargs="+", default=["ice40", "xilinx7", "ecp5"], choices=sorted(FAMILY_BOARDS))
    ap.add_argument("--reuse", action="store_true",
                    help="estimate the stored designs again against their stored yosys counts (after a refit; "
                         "checks that the seed regenerates the same designs) instead of synthesizing them")
    ap.add_argument("--kinds", nargs="+", choices=WIDE_KINDS + EXTRA_WIDE_KINDS,
                    help="held-out wide networks of these kinds (boards.calibrate.random_wide), kept apart as "
                         "<family>-wide-<kinds> (amlp: activations of 9..16 bits)")
    args = ap.parse_args()
    out = ROOT / "bench" / "results" / "estimator.json"
    made = (f"python bench/estimator.py --designs {args.designs} --seed {args.seed} --families "
            f"{' '.join(args.families)}" + (f" --kinds {' '.join(args.kinds)}" if args.kinds else ""))
    suffix = "".join(f"-wide-{k}" for k in args.kinds or ())
    # the families not run now keep their results (each family's entry names the run that made it)
    old = json.loads(out.read_text()) if out.is_file() else {}
    results = old.get("families", {}) if old.get("seed") == args.seed else {}
    for family in args.families:
        key = family + suffix
        if args.reuse and key not in results:
            sys.exit(f"--reuse: no stored results for {key} with seed {args.seed} in {out}")
        stored = results[key]["designs"] if args.reuse else None
        board, rows = measure(family, args.designs, args.seed, args.jobs, args.kinds, stored)
        # with --reuse the yosys counts are the stored run's: synth_by names the run that measured them
        synth_by = (results[key].get("synth_by") or results[key].get("made_by") or EARLIER) if args.reuse else made
        results[key] = {"board": board.name, "command": board.yosys_synth, **summarize(rows),
                        "made_by": made + (" --reuse" if args.reuse else ""), "synth_by": synth_by, "designs": rows}
    results = {f: results[f] for f in sorted(results)}
    write_json(out, {"seed": args.seed, "families": results})
    png = ROOT / "docs" / "results" / "estimator.png"
    plot(results, png)
    by_run = {}
    for fam, r in results.items():
        by_run.setdefault(r.get("made_by") or EARLIER, []).append(fam)
    by_synth = {}
    for fam, r in results.items():
        if r.get("synth_by") and r["synth_by"] != r.get("made_by"):
            by_synth.setdefault(r["synth_by"], []).append(fam)
    reused = [f"`{m}` ({', '.join(fams)})" for m, fams in sorted(by_synth.items())]
    made_by = ("Made by " + "; ".join(f"`{m}` ({', '.join(fams)})" for m, fams in sorted(by_run.items()))
               + (f"; yosys counts measured by {'; '.join(reused)}" if reused else "")
               + "; raw numbers in `bench/results/estimator.json`.")
    about = ("Each design is a random network from `boards.calibrate.random_network` (an MLP, a small CNN or a "
             "small resnet, multi-bit or binary, bits 1..8, thresholds or multiply-shift requantization) with a random "
             "valid folding (`random_folding`: up to 16 channels per cycle, DSP multipliers on some eligible layers, "
             "some memories in block RAM, within the board's DSPs and block RAMs), from a seed the calibration sweep "
             "did not use (and, from seed 3 on, that no choice of the model's features saw: seed 2 was the "
             "validation set while they were chosen). Errors are (estimate - measured) / measured on the whole design; LUTs and flip-flops "
             "from yosys, iCE40 logic cells from nextpnr's packer (`--pack-only` on the design in the two-pin "
             "place-and-route harness). Rows `<family>-wide-<kinds>` (`--kinds`) hold held-out networks of "
             "`boards.calibrate.random_wide` instead, folded wide (words of up to 64 codes); `amlp`: MLPs whose "
             "activations have 9..16 bits (multiply-shift requantizations, 12- and 16-bit weights among others).")
    from boards.model import coefficients

    sweeps = ", ".join(f"{fam}: {c.get('designs', '?')} designs ({c['points']} data points)"
                       for fam, c in coefficients().items())
    header = ("| family | board | designs | mean abs LUT err | max LUT err | mean abs FF err | max FF err | "
              "mean abs cell err | max cell err | BRAM exact | DSP exact | estimate time |")
    method = ("The model: each component's cost features (`rtl_gen/engine.py` `EnginePlan`, `rtl_gen/pool.py` "
              "`PoolPlan`, `rtl_gen/add.py` `AddPlan`, `rtl_gen/plan.py` `BufferPlan` and `TopPlan`: `cost_features` "
              "and `register_bits`) times coefficients per family, fitted by non-negative least squares "
              "(`boards/model.py`; each component's error relative to its design's total) on the calibration sweeps "
              f"in `boards/calibration/` (seed 1; {sweeps}; `python -m boards.calibrate sweep --family F --designs N`, "
              "then `fit`), with boosted correction trees on the layer engines' LUTs. Multipliers in logic are priced "
              "by a measured table (`boards/calibration/multipliers.json`: one processing element per pair of widths "
              "and family, `python -m boards.calibrate multipliers`); multipliers by constants by the fraction of "
              "their bits that are set. iCE40 logic cells: a linear "
              "function of the design's LUTs and flip-flops fitted on the same sweep (`boards.model.cells`). Block "
              "RAMs: each memory the folding puts in block RAM, its words tiled over the family's block shapes "
              "(`boards.model.BRAM_SHAPES`); a ROM counts only its columns that vary between words (yosys turns a "
              "column with one value everywhere into a constant; `rtl_gen.top.stage_bram_blocks`). DSPs: one per multiplier the folding puts on a DSP "
              "(`boards.model.dsp_eligible`).")
    lines = ["# Estimator vs synthesis (held-out designs)", "", made_by, "", about, "", method, "", header,
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fam, r in results.items():
        cell = (f"{r['mean_abs_cell_err']:.1%} | {r['max_cell_err']:.1%}" if "mean_abs_cell_err" in r
                else "- | -")
        lines.append(f"| {fam} | {r['board']} | {r['n_heldout']} | {r['mean_abs_lut_err']:.1%} | {r['max_lut_err']:.1%} "
                     f"| {r['mean_abs_ff_err']:.1%} | {r['max_ff_err']:.1%} | {cell} | {r['bram_exact']} | "
                     f"{r['dsp_exact']} | {r['estimate_ms_max']:.1f} ms max |")
    lines += ["", "![estimate vs yosys](estimator.png)", ""]
    write_text(ROOT / "docs" / "results" / "estimator.md", "\n".join(lines))
    print(json.dumps({f: {k: v for k, v in r.items() if k != "designs"} for f, r in results.items()}, indent=1))
    print(f"wrote {out}, {png}, docs/results/estimator.md")


if __name__ == "__main__":
    main()
