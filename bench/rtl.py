"""RTL benchmark: array efficiency of a conv layer and the cost of one MAC lane per bitwidth.

    python bench/rtl.py [--families ice40 xilinx7 ecp5]

Writes bench/results/rtl.json and docs/results/rtl.md.

- ``array_efficiency``: the digits CNN's second convolution (16 -> 32 channels, 3x3, padding 1, on
  the 4x4 map after the first pooling) on an 8 x 8 systolic array, run in Amaranth's simulator
  inside a network top. Measured: the cycles in which a tile entered the array (the engine's
  ``issue`` signal) and the cycles from start to done. Steady-state MACs per cycle = the layer's
  MACs / issue cycles; efficiency = that / (rows x cols). The output is checked against the golden
  model, so the cycles counted are cycles of a correct computation.
- ``lut_per_mac``: yosys (the boards' synthesis commands) on an 8 x 8 systolic array of processing
  elements at W/A = 8/8, 4/4, 2/2 (accumulator ``w + a + 6`` bits), multipliers in logic, and again with
  them on DSP blocks where the family's DSP takes the product; and on an XNOR-popcount core of 8 lanes x
  64 inputs at 1/1; LUTs, flip-flops and DSPs divided by the number of MAC lanes (``dsp_per_mac``).
  ``dsp_8bit_lut_per_mac``: the 8-bit lanes on DSPs (the script fails if above 20).
"""

import argparse
import itertools
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import load_board  # noqa: E402
from boards.calibrate import FAMILY_BOARDS, network_ir, random_layer  # noqa: E402
from hwq import golden  # noqa: E402
from hwq.fileio import write_json, write_text  # noqa: E402
from hwq.ir import Layer, validate  # noqa: E402

ARRAY = (8, 8)
PE_BITS = [(8, 8), (4, 4), (2, 2)]
XNOR_SHAPE = (8, 64)  # lanes x simd


def conv_layer_ir(seed=0):
    """The digits CNN's conv2 geometry (random integers; the geometry is what is measured), then a
    flatten and a small logits layer so it runs as a network."""
    rng = np.random.default_rng(seed)
    conv, t1 = random_layer(rng, "conv2", 16, 32, 2, 2, 2, op="conv2d", in_shape=[16, 4, 4])
    flat = Layer(name="flatten", op="flatten", in_shape=[32, 4, 4], out_shape=[512], a_bits=2, a_signed=False,
                 out_bits=2, out_signed=False)
    fc, t2 = random_layer(rng, "fc", 512, 10, 2, 2, None)
    ir = network_ir([conv, flat, fc], {**t1, **t2}, input_bits=2, input_shape=[16, 4, 4])
    validate(ir, "bench")
    return ir


def measure_array_efficiency(samples=2):
    from amaranth.sim import Simulator

    from rtl_gen.plan import input_word_indices, network_plan
    from rtl_gen.top import NetworkTop

    rows, cols = ARRAY
    ir = conv_layer_ir()
    plan = network_plan(ir, [cols, rows, 5])
    top = NetworkTop(plan)
    engine = top.stages[0]
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(samples, ir.in_features))
    counts = {"issue": 0, "run": 0}
    outs = []

    words = input_word_indices(ir.layers[0].in_shape, plan.buffers[0].lanes)

    async def bench(ctx):
        ctx.set(top.o.ready, 1)
        for sample in x:
            for idx in words:  # the input arrives word by word (word-serial)
                ctx.set(top.i.payload, [int(sample[i]) for i in idx])
                ctx.set(top.i.valid, 1)
                while not ctx.get(top.i.ready):
                    await ctx.tick()
                await ctx.tick()
            ctx.set(top.i.valid, 0)
            while not ctx.get(top.o.valid):
                counts["issue"] += ctx.get(engine.issue)
                counts["run"] += ctx.get(engine.busy)
                await ctx.tick()
            outs.append([int(v) for v in ctx.get(top.o.payload)])
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    exact = bool(np.array_equal(np.array(outs), golden.run(ir, x)))
    p = plan.stages[0].plan
    macs = p.macs * samples
    steady = macs / counts["issue"]
    return {
        "layer": "digits CNN conv2: 16 -> 32 channels, 3x3, padding 1, 4x4 map",
        "array": [rows, cols],
        "samples": samples,
        "bit_exact": exact,
        "macs": macs,
        "issue_cycles": counts["issue"],
        "run_cycles": counts["run"],
        "steady_state_macs_per_cycle": round(steady, 3),
        "array_efficiency": round(steady / (rows * cols), 4),
        "whole_run_efficiency": round(macs / counts["run"] / (rows * cols), 4),
        "analytic_latency": p.latency,
    }


def _synth(component, name, board):
    from amaranth.back import verilog

    from boards.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="hwq-bench-") as work:
        path = Path(work, "c.v")
        path.write_text(verilog.convert(component, name=name, emit_src=False))
        return synthesize(path, name, board)


def measure_lut_per_mac(families):
    from boards.model import dsp_eligible
    from rtl_gen.systolic import SystolicArray
    from rtl_gen.xnor import XnorPopcount

    def row(unit, w, a, lanes, syn):
        t = syn["total"]
        return {"unit": unit, "w_bits": w, "a_bits": a, "lanes": lanes, "lut": t["lut"], "ff": t["ff"], "dsp": t["dsp"],
                "lut_per_mac": round(t["lut"] / lanes, 2), "ff_per_mac": round(t["ff"] / lanes, 2),
                "dsp_per_mac": round(t["dsp"] / lanes, 3)}

    out = {}
    lanes = ARRAY[0] * ARRAY[1]
    for family in families:
        board = load_board(FAMILY_BOARDS[family])
        rows = []
        for w, a in PE_BITS:
            arr = SystolicArray(rows=ARRAY[0], cols=ARRAY[1], w_bits=w, a_bits=a, acc_bits=w + a + 6)
            rows.append(row("systolic PE", w, a, lanes, _synth(arr, "pe_array", board)))
        for w, a in PE_BITS:
            if board.dsp and dsp_eligible(family, w, a):
                arr = SystolicArray(rows=ARRAY[0], cols=ARRAY[1], w_bits=w, a_bits=a, acc_bits=w + a + 6, dsp=True)
                rows.append(row("systolic PE on DSP", w, a, lanes, _synth(arr, "pe_array", board)))
        lanes_x, simd = XNOR_SHAPE
        rows.append(row("XNOR lane", 1, 1, lanes_x * simd, _synth(XnorPopcount(lanes=lanes_x, simd=simd), "xnor_core",
                                                                   board)))
        logic = [r for r in rows if r["unit"] != "systolic PE on DSP"]
        on_dsp = [r for r in rows if r["unit"] == "systolic PE on DSP" and r["w_bits"] == 8 and r["a_bits"] == 8]
        out[family] = {"board": board.name, "command": board.yosys_synth, "units": rows,
                       "cost_falls_with_bits": all(r1["lut_per_mac"] > r2["lut_per_mac"]
                                                   for r1, r2 in itertools.pairwise(logic)),
                       "dsp_8bit_lut_per_mac": on_dsp[0]["lut_per_mac"] if on_dsp else None}
    return out


def markdown(res):
    eff = res["array_efficiency"]
    lines = [
        "# RTL benchmark", "",
        f"Made by `python bench/rtl.py`; raw numbers in `bench/results/rtl.json` ({res['machine']}).", "",
        "## Array efficiency (conv layer on the systolic array)", "",
        (f"{eff['layer']}, on a {eff['array'][0]} x {eff['array'][1]} array, {eff['samples']} samples "
         f"(bit-exact against the golden model: {eff['bit_exact']})."), "",
        "| MACs | issue cycles | run cycles | steady-state MACs/cycle | array efficiency | whole-run efficiency |",
        "|---|---|---|---|---|---|",
        (f"| {eff['macs']} | {eff['issue_cycles']} | {eff['run_cycles']} | {eff['steady_state_macs_per_cycle']} | "
         f"{eff['array_efficiency']} | {eff['whole_run_efficiency']} |"), "",
        ("Steady state: one tile of rows x cols MACs enters the array every cycle from the first to the last "
         "(the window generator and the weight ROMs keep up). Whole run adds the pipeline fill and drain "
         "(buffer read, the array's row chain, accumulate, requantize)."), "",
        "## Cost of one MAC lane (yosys)", "",
        "| family | unit | W/A bits | lanes | LUT | FF | DSP | LUT per MAC | FF per MAC | DSP per MAC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, r in res["lut_per_mac"].items():
        for u in r["units"]:
            lines.append(f"| {family} | {u['unit']} | {u['w_bits']}/{u['a_bits']} | {u['lanes']} | {u['lut']} | "
                         f"{u['ff']} | {u['dsp']} | {u['lut_per_mac']} | {u['ff_per_mac']} | {u['dsp_per_mac']} |")
    lines += ["", ("Systolic PE: an 8 x 8 array (multiplier, the row's adder and its partial-sum register per PE), "
                   "the multipliers in logic (shift-and-add) or, where the family's DSP mapping takes the product "
                   "(`boards.model.dsp_eligible`), on DSP blocks (one per lane: iCE40 SB_MAC16, ECP5 MULT18X18D, "
                   "7-series DSP48E1; the row's adder and register stay in logic on iCE40 and ECP5, and go into the "
                   "DSP48E1 cascade on 7-series). The folding search chooses per layer, within the board's DSPs. "
                   "XNOR lane: an XNOR-popcount core of 8 lanes x 64 inputs, per input (one XNOR and its share of the "
                   "popcount tree and the registered sum).")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["ice40", "xilinx7", "ecp5"], choices=sorted(FAMILY_BOARDS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = {"machine": f"{platform.machine()}, {platform.python_version()}"}
    res["array_efficiency"] = measure_array_efficiency()
    print(f"array efficiency {res['array_efficiency']['array_efficiency']} "
          f"(bit-exact {res['array_efficiency']['bit_exact']})", file=sys.stderr)
    res["lut_per_mac"] = measure_lut_per_mac(args.families)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(ROOT / "bench" / "results" / "rtl.json", res)
    write_text(ROOT / "docs" / "results" / "rtl.md", markdown(res))
    for family, r in res["lut_per_mac"].items():
        print(family, [(u["unit"], f"{u['w_bits']}/{u['a_bits']}", u["lut_per_mac"]) for u in r["units"]], file=sys.stderr)
    print("wrote bench/results/rtl.json and docs/results/rtl.md", file=sys.stderr)
    ok = res["array_efficiency"]["bit_exact"] and res["array_efficiency"]["array_efficiency"] >= 0.9
    ok = ok and all(r["dsp_8bit_lut_per_mac"] is None or r["dsp_8bit_lut_per_mac"] <= 20
                    for r in res["lut_per_mac"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
