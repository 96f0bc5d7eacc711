"""Simulation benchmark: a digits network through Verilator, every sample checked against the golden model.

    python bench/sim.py [--model cnn] [--samples 1797] [--epochs 3] [--synth]

Writes bench/results/sim.json and docs/results/sim.md (``--model resnet``: sim-resnet.json and
sim-resnet.md).

The network is trained here (``hwq train --model cnn`` or ``resnet``, W2/A2, a few epochs: the speed and
the exactness of the simulation do not depend on the accuracy), exported and turned into Verilog for
``--board`` with the automatic folding. Then:

- ``samples`` / ``mismatches``: the whole network on ``--samples`` digits images (``--data all``: the
  360 test images first, then training images; the test split alone has 360), every output integer
  compared with the golden model.
- ``cycles_per_s``: simulated clock cycles per second of wall time of that run (the free-running
  harness, build excluded).
- ``rebuild_speedup``: the Verilator build of the network in an empty cache, against the same build
  again (found in the cache by the hash of the Verilog and the options).
- per layer: the cycles the hardware counters measured in the network, the estimate, and the layer
  simulated on its own (``hwq sim --layer``) on the first 200 samples (not a residual add: it has two
  inputs, so it is checked within the network only).
- with ``--synth``: yosys' LUTs, flip-flops and block RAMs per layer, for the top and in total, next to
  the estimate's (``hwq synth``; needs yosys).
"""

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import load_board  # noqa: E402
from hwq.fileio import write_json, write_text  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1797, help="samples through the network (default: all 1797)")
    parser.add_argument("--epochs", type=int, default=3, help="float and QAT epochs each (default: 3)")
    parser.add_argument("--board", default="xc7a35t", help="board the folding is chosen for (default: xc7a35t)")
    parser.add_argument("--model", choices=["cnn", "resnet"], default="cnn", help="network (default: cnn)")
    parser.add_argument("--synth", action="store_true", help="also synthesize with yosys and compare with the estimate")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hwq-bench-sim-") as work:
        os.environ["HWQ_CACHE"] = str(Path(work, "cache"))  # an empty build cache: the first build is fresh
        from hwq.export import export_run
        from hwq.ir import load_ir
        from hwq.train import TrainConfig, train
        from rtl_gen.emit import generate_rtl
        from sim.runner import simulate

        work = Path(work)
        cfg = TrainConfig(model=args.model, epochs_float=args.epochs, epochs_qat=args.epochs, seed=1, w_bits=2,
                          a_bits=2)
        print(f"training the digits {args.model} ...", flush=True)
        train(cfg, work / "run", show_progress=False)
        export_run(work / "run", work / "ir")
        ir = load_ir(work / "ir")
        board = load_board(args.board)
        info = generate_rtl(ir, board, work / "rtl")
        print(f"simulating {args.samples} samples (fresh Verilator build) ...", flush=True)
        fresh = simulate(ir, work / "rtl", samples=args.samples, data="all")  # the same build options as below
        cached = simulate(ir, work / "rtl", samples=args.samples, data="all")
        assert not fresh["timings_s"]["build_cached"] and cached["timings_s"]["build_cached"]
        layers = []
        ops = {la["name"]: la["op"] for la in info["layers"]}
        for entry in cached["layers"]:
            row = {"name": entry["name"], "cycles_sim": entry["cycles"], "cycles_estimate": entry["estimate_cycles"]}
            if entry["estimate_cycles"] and ops[entry["name"]] != "add":  # a layer with hardware: also on its own
                alone = simulate(ir, work / "rtl", samples=200, data="all", layer=entry["name"])
                row.update(alone_samples=alone["samples"], alone_mismatched=alone["mismatched_samples"],
                           alone_cycles=alone["layers"][0]["cycles"])
            layers.append(row)
        synth = _synth(ir, work / "rtl", board, info) if args.synth else None

    result = {
        "design": {"model": args.model, "bits": "W2/A2", "board": board.name, "folding": info["folding"],
                   "stages": info["stages"], "skips": info["skips"]},
        "samples": cached["samples"],
        "data": cached["data"],
        "mismatches": cached["mismatched_samples"],
        "bit_exact": cached["bit_exact"],
        "simulated_cycles": cached["simulated_cycles"],
        "run_s": cached["timings_s"]["run"],
        "cycles_per_s": cached["cycles_per_s"],
        "build_fresh_s": fresh["timings_s"]["build"],
        "build_cached_s": cached["timings_s"]["build"],
        "rebuild_speedup": round(fresh["timings_s"]["build"] / max(cached["timings_s"]["build"], 1e-3), 1),
        "latency_cycles": {"sim": cached["latency_cycles"], "estimate": cached["latency_cycles_estimate"]},
        "initiation_interval_cycles": {"sim": cached["initiation_interval_cycles"],
                                       "estimate": cached["initiation_interval_cycles_estimate"]},
        "layers": layers,
        "layer_cycles_equal_estimate": all(la["cycles_sim"] == la["cycles_estimate"] for la in layers),
        "synth": synth,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "command": " ".join(["python bench/sim.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    name = "sim" if args.model == "cnn" else f"sim-{args.model}"
    write_json(ROOT / "bench" / "results" / f"{name}.json", result)
    write_text(ROOT / "docs" / "results" / f"{name}.md", markdown(result))
    print(markdown(result))
    return 0 if result["bit_exact"] and result["layer_cycles_equal_estimate"] else 1


def _synth(ir, rtl, board, info):
    """yosys' counts next to the estimate's, per layer, for the top (its logic and memories) and in total."""
    from boards import RESOURCES
    from hwq.estimate import estimate
    from hwq.synth import synth_rtl

    print(f"synthesizing with yosys for {board.name} ...", flush=True)
    syn = synth_rtl(rtl, board, show_progress=False)
    est = estimate(ir, board, folding=info["folding"])
    pick = lambda d: {k: d[k] for k in RESOURCES if k != "dsp"}  # noqa: E731
    rows = [{"name": y["name"], "yosys": pick(y), "estimate": pick(e["estimate"])}
            for y, e in zip(syn["layers"], est["layers"], strict=True) if y["name"] in info["stages"]]
    rows.append({"name": "(top)", "yosys": pick(syn["top"]), "estimate": pick(est["top"])})
    rows.append({"name": "total", "yosys": pick(syn["total"]), "estimate": pick(est["totals"])})
    return {"command": syn["command"], "rows": rows}


def markdown(r):
    lines = [
        "# Simulation benchmark",
        "",
        f"`{r['command']}` (written by the script; numbers measured on this run).",
        "",
        f"Digits {r['design']['model']} ({r['design']['bits']}) on {r['design']['board']}, folding "
        f"{r['design']['folding']}"
        + "".join(f"; skip {s['from']} -> {s['to']} in a ring of {s['banks']} banks" for s in r["design"]["skips"])
        + ".",
        "",
        "| measure | value |",
        "|---|---|",
        f"| samples through the whole network (`--data {r['data']}`) | {r['samples']} |",
        f"| mismatching samples (every output integer compared) | {r['mismatches']} |",
        f"| simulated cycles | {r['simulated_cycles']:,} in {r['run_s']} s |",
        f"| **cycles_per_s** | **{r['cycles_per_s']:,}** |",
        f"| Verilator build, fresh / cached | {r['build_fresh_s']} s / {r['build_cached_s']} s |",
        f"| **rebuild_speedup** | **{r['rebuild_speedup']}** |",
        f"| latency, simulated / estimated | {r['latency_cycles']['sim']} / {r['latency_cycles']['estimate']} cycles |",
        (f"| initiation interval, simulated / estimated | {r['initiation_interval_cycles']['sim']} / "
        f"{r['initiation_interval_cycles']['estimate']} cycles |"),
        "",
        "| layer | cycles in the network | estimate | alone: cycles | alone: mismatching / samples |",
        "|---|---|---|---|---|",
    ]
    for la in r["layers"]:
        alone = (f"{la['alone_cycles']} | {la['alone_mismatched']} / {la['alone_samples']}" if "alone_samples" in la
                 else "two inputs: checked in the network | " if la["cycles_estimate"] else "no hardware | ")
        lines.append(f"| {la['name']} | {la['cycles_sim']} | {la['cycles_estimate']} | {alone} |")
    if r.get("synth"):
        lines += ["", f"yosys (`{r['synth']['command']}`) against the estimate:", "",
                  "| component | LUT yosys | LUT estimate | FF yosys | FF estimate | BRAM yosys | BRAM estimate |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["synth"]["rows"]:
            y, e = row["yosys"], row["estimate"]
            lines.append(f"| {row['name']} | {y['lut']} | {e['lut']} | {y['ff']} | {e['ff']} | {y['bram']} | {e['bram']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
