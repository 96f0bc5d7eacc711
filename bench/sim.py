"""Simulation benchmark: the digits CNN through Verilator, every sample checked against the golden model.

    python bench/sim.py [--samples 1797] [--epochs 3]

Writes bench/results/sim.json and docs/results/sim.md.

The CNN is trained here (``hwq train --model cnn``, W2/A2, a few epochs: the speed and the exactness of
the simulation do not depend on the accuracy), exported and turned into Verilog for the default board
with the default folding. Then:

- ``samples`` / ``mismatches``: the whole network on ``--samples`` digits images (``--data all``: the
  360 test images first, then training images; the test split alone has 360), every output integer
  compared with the golden model.
- ``cycles_per_s``: simulated clock cycles per second of wall time of that run (the free-running
  harness, build excluded).
- ``rebuild_speedup``: the Verilator build of the network in an empty cache, against the same build
  again (found in the cache by the hash of the Verilog and the options).
- per layer: the cycles the hardware counters measured in the network, the estimate, and the layer
  simulated on its own (``hwq sim --layer``) on the first 200 samples.
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
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hwq-bench-sim-") as work:
        os.environ["HWQ_CACHE"] = str(Path(work, "cache"))  # an empty build cache: the first build is fresh
        from hwq.export import export_run
        from hwq.ir import load_ir
        from hwq.train import TrainConfig, train
        from rtl_gen.emit import generate_rtl
        from sim.runner import simulate

        work = Path(work)
        cfg = TrainConfig(model="cnn", epochs_float=args.epochs, epochs_qat=args.epochs, seed=1, w_bits=2, a_bits=2)
        print("training the digits CNN ...", flush=True)
        train(cfg, work / "run", show_progress=False)
        export_run(work / "run", work / "ir")
        ir = load_ir(work / "ir")
        board = load_board(args.board)
        info = generate_rtl(ir, board, work / "rtl")
        print(f"simulating {args.samples} samples (fresh Verilator build) ...", flush=True)
        fresh = simulate(ir, work / "rtl", samples=min(args.samples, 2), data="all")
        cached = simulate(ir, work / "rtl", samples=args.samples, data="all")
        assert not fresh["timings_s"]["build_cached"] and cached["timings_s"]["build_cached"]
        layers = []
        for entry in cached["layers"]:
            row = {"name": entry["name"], "cycles_sim": entry["cycles"], "cycles_estimate": entry["estimate_cycles"]}
            if entry["estimate_cycles"]:  # a layer with hardware: also on its own
                alone = simulate(ir, work / "rtl", samples=200, data="all", layer=entry["name"])
                row.update(alone_samples=alone["samples"], alone_mismatched=alone["mismatched_samples"],
                           alone_cycles=alone["layers"][0]["cycles"])
            layers.append(row)

    result = {
        "design": {"model": "cnn", "bits": "W2/A2", "board": board.name, "folding": info["folding"],
                   "stages": info["stages"]},
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
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "command": " ".join(["python bench/sim.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    write_json(ROOT / "bench" / "results" / "sim.json", result)
    write_text(ROOT / "docs" / "results" / "sim.md", markdown(result))
    print(markdown(result))
    return 0 if result["bit_exact"] and result["layer_cycles_equal_estimate"] else 1


def markdown(r):
    lines = [
        "# Simulation benchmark",
        "",
        f"`{r['command']}` (written by the script; numbers measured on this run).",
        "",
        f"Digits CNN ({r['design']['bits']}) on {r['design']['board']}, folding {r['design']['folding']}.",
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
                 else "no hardware | ")
        lines.append(f"| {la['name']} | {la['cycles_sim']} | {la['cycles_estimate']} | {alone} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
