"""Density benchmark: the zoo's digits networks on three boards, synthesized, placed and simulated.

    python bench/density.py [--models mlp cnn resnet] [--boards ice40-up5k ecp5-25f xc7a35t] [--epochs 4]

Writes bench/results/density.json and docs/results/density.md.

Designs: the digits MLP of the demo (``hwq flow``'s defaults: W2/A2, LSQ, the demo's epochs), the digits CNN
at W2/A2 with the first and last layers at 8 bits (``--first-last 8``) and the digits resnet at W2/A2, each
trained here (``--epochs`` float and QAT epochs for the CNN and the resnet; hardware cost does not depend
on accuracy). Each is exported and generated for each board with the automatic folding (the default LUT
budget), then:

- ``lut``, ``ff``, ``bram``, ``dsp``: yosys (the board's synthesis command) on the whole design;
- ``cells``: packed logic cells reported by nextpnr (iCE40 logic cells; ECP5 slices' LUT4s, which nextpnr
  reports as TRELLIS_COMB), ``fmax_mhz`` and ``placed`` from place and route (nextpnr, iCE40 and ECP5; 7-series
  boards have no open place and route, so null);
- ``lut_per_mac_per_cycle``: LUTs divided by the MACs of one inference over the initiation interval
  (the MACs the design completes per cycle in steady state): lower is denser;
- ``bit_exact`` and ``cycles_equal``: all 360 digits test images through Verilator, every output integer
  compared with the golden model, and every layer's measured cycles equal to the estimate.

A design for which no folding fits the board is recorded with ``fits: false`` and the reason.
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

from boards import load_board  # noqa: E402
from hwq.errors import UserError  # noqa: E402
from hwq.fileio import write_json, write_text  # noqa: E402

MODELS = {
    "mlp": {"label": "digits MLP (demo, W2/A2)", "cfg": {}},
    "cnn": {"label": "digits CNN (W2/A2, first/last 8)", "cfg": {"model": "cnn", "first_last": "8"}},
    "resnet": {"label": "digits resnet (W2/A2)", "cfg": {"model": "resnet"}},
}
BOARDS = ["ice40-up5k", "ecp5-25f", "xc7a35t"]
CELL_KEYS = {"ice40": "ICESTORM_LC", "ecp5": "TRELLIS_COMB"}


def _train(model, epochs, work):
    from hwq.export import export_run
    from hwq.ir import load_ir
    from hwq.train import TrainConfig, train

    cfg = dict(MODELS[model]["cfg"])
    if model != "mlp":  # the demo MLP keeps the flow's own epochs
        cfg.update(epochs_float=epochs, epochs_qat=epochs)
    run, ir_dir = work / f"{model}-run", work / f"{model}-ir"
    t0 = time.perf_counter()
    metrics = train(TrainConfig(**cfg), run, show_progress=False)
    export_run(run, ir_dir)
    return load_ir(ir_dir), metrics, time.perf_counter() - t0


def measure(model, ir, board, work, lut_fraction=None):
    from hwq.synth import synth_rtl
    from rtl_gen.emit import generate_rtl
    from sim.runner import simulate

    rtl = work / f"{model}-{board.name}"
    row = {"model": model, "board": board.name}
    budget = lut_fraction * board.lut if lut_fraction else None
    try:
        info = generate_rtl(ir, board, rtl, lut_budget=budget)
    except UserError as exc:
        return {**row, "fits": False, "error": str(exc)}
    macs = sum(la.get("macs", 0) for la in info["layers"])
    interval = info["initiation_interval_cycles"]
    sim = simulate(ir, rtl, samples=360, data="test")
    syn = synth_rtl(rtl, board, pnr=board.pnr is not None, show_progress=False)
    pnr = syn["pnr"] or {}
    util = pnr.get("utilization", {})
    cell_key = CELL_KEYS.get(board.family)
    total = syn["total"]
    row.update({
        "fits": True,
        "folding": info["folding"],
        "lut": total["lut"], "ff": total["ff"], "bram": total["bram"], "dsp": total["dsp"],
        "cells": util.get(cell_key, {}).get("used") if cell_key else None,
        "fmax_mhz": pnr.get("fmax_mhz"),
        "placed": (pnr.get("fmax_mhz") is not None) if board.pnr else None,
        "pnr_error": pnr.get("error"),
        "macs_per_inference": macs,
        "interval_cycles": interval,
        "latency_cycles": info["latency_cycles"],
        "lut_per_mac_per_cycle": round(total["lut"] / (macs / interval), 2),
        "samples": sim["samples"],
        "bit_exact": sim["bit_exact"],
        "cycles_equal": all(la["cycles"] == la["estimate_cycles"] for la in sim["layers"])
        and sim["latency_cycles"] == sim["latency_cycles_estimate"]
        and sim["initiation_interval_cycles"] == sim["initiation_interval_cycles_estimate"],
    })
    return row


def _commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def markdown(res):
    lines = ["# Density benchmark", "",
             f"Made by `{res['command']}` at commit {res['commit']}; raw numbers in `bench/results/density.json`.", "",
             __doc__[__doc__.index("Designs:"):].strip(), "",
             ("| model | board | folding | LUT | FF | BRAM | DSP | cells | Fmax MHz | placed | interval | "
              "LUT per MAC/cycle | bit-exact (360) | cycles = estimate |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in res["designs"]:
        if not d["fits"]:
            lines.append(f"| {d['model']} | {d['board']} | no folding fits: {d['error']} |" + " |" * 11)
            continue
        lines.append(f"| {d['model']} | {d['board']} | {d['folding']} | {d['lut']} | {d['ff']} | {d['bram']} | "
                     f"{d['dsp']} | {d['cells'] if d['cells'] is not None else '-'} | "
                     f"{d['fmax_mhz'] if d['fmax_mhz'] is not None else '-'} | "
                     f"{d['placed'] if d['placed'] is not None else 'no open tool'} | {d['interval_cycles']} | "
                     f"{d['lut_per_mac_per_cycle']} | {d['bit_exact']} | {d['cycles_equal']} |")
    base = res.get("baseline")
    if base:
        lines += ["", (f"Before the hard-block work (commit {base['commit']}, `baseline` in the JSON; "
                      f"{base['command']}):"), "",
                  "| model | board | folding | LUT | FF | BRAM | cells | Fmax MHz | interval | LUT per MAC/cycle |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for d in [*base["designs"], base.get("cnn_ice40_fixed_folding")]:
            if d is None:
                continue
            if not d.get("fits", True):
                lines.append(f"| {d['model']} | {d['board']} | no folding fits | | | | | | | |")
                continue
            fmax = d.get("fmax_mhz") or ("did not place" if d.get("pnr_error") else "-")
            lines.append(f"| {d['model']} | {d['board']} | {d['folding']} | {d['lut']} | {d['ff']} | {d['bram']} | "
                         f"{d.get('cells') or '-'} | {fmax} | {d['interval_cycles']} | {d['lut_per_mac_per_cycle']} |")
        lines += ["", "Density gain (baseline LUT per MAC/cycle over now's, same model and board):", ""]
        now = {(d["model"], d["board"]): d for d in res["designs"] if d["fits"]}
        for d in [*base["designs"], base.get("cnn_ice40_fixed_folding")]:
            key = d and (d["model"], d["board"])
            if d and d.get("fits", True) and key in now:
                gain = d["lut_per_mac_per_cycle"] / now[key]["lut_per_mac_per_cycle"]
                lines.append(f"- {key[0]} on {key[1]}: {d['lut_per_mac_per_cycle']} -> "
                             f"{now[key]['lut_per_mac_per_cycle']} ({gain:.2f}x)")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--boards", nargs="+", default=BOARDS)
    ap.add_argument("--epochs", type=int, default=4, help="float and QAT epochs of the CNN and the resnet (default: 4)")
    ap.add_argument("--lut-fraction", type=float, default=None,
                    help="LUT budget as a fraction of the board's (default: the tool's default budget)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "density.json"))
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "results" / "density.md"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    designs = []
    with tempfile.TemporaryDirectory(prefix="hwq-density-") as work:
        work = Path(work)
        for model in args.models:
            print(f"training {MODELS[model]['label']} ...", file=sys.stderr, flush=True)
            ir, metrics, _ = _train(model, args.epochs, work)
            for name in args.boards:
                board = load_board(name)
                print(f"  {model} on {board.name}: rtl, sim (360 images), yosys, nextpnr ...", file=sys.stderr, flush=True)
                row = measure(model, ir, board, work, args.lut_fraction)
                row["fake_quant_accuracy"] = metrics.get("accuracy", {}).get("fake_quant")
                designs.append(row)
                print(f"    {row}", file=sys.stderr, flush=True)
    res = {"command": " ".join(["python bench/density.py", *(argv if argv is not None else sys.argv[1:])]),
           "commit": _commit(), "machine": f"{platform.machine()}, Python {platform.python_version()}, "
                                          f"{os.cpu_count()} cores",
           "seconds": round(time.perf_counter() - t0, 1), "designs": designs}
    out = Path(args.out)
    if out.is_file():  # keep a recorded baseline (the design before the hard-block work) across re-runs
        import json

        old = json.loads(out.read_text())
        if "baseline" in old:
            res["baseline"] = old["baseline"]
    write_json(out, res)
    write_text(args.markdown, markdown(res))
    print(markdown(res))
    ok = all(d["bit_exact"] and d["cycles_equal"] for d in designs if d["fits"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
