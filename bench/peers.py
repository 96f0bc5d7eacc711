"""Real-size networks: the shapes FINN and MLPerf Tiny publish, with random weights, folded, estimated,
simulated and synthesized on the peers' parts, beside the peers' published figures.

    python bench/peers.py [--networks tfc-w1a1 cnv-w1a1 ...] [--sim N] [--synth] [--jobs 2]
                          [--synth-speedup cnv-w1a1]

Writes bench/results/peers.json and docs/results/peers.md (the networks run replace their rows; the others
are kept, each row with the command that made it).

Each network is an IR of the peer's shape and bit widths with random integer weights and thresholds
(accuracy is not the point: random weights have none; the hardware's size and speed do not depend on the
weights' values, except that yosys removes constant ROM bits). The folding is the automatic one
(``choose_folding``: the smallest initiation interval within the default LUT budget, 80% of the board's),
timed as ``folding_s``. ``--sim N`` runs N random inputs through the Verilator harness and compares every
output with the golden model (``bit_exact``, and the cycles with the estimate). ``--synth`` runs ``hwq
synth`` (one yosys run per layer, ``--jobs`` at a time). Throughput is at the board's clock, one
inference per initiation interval (the layers form a pipeline); latency from an input's first word to its
logits.

The peers' LUTs: FINN's CNV-w1a1, CNV-w2a2 and LFC-w1a1 as BNN-PYNQ publishes them (Vivado's utilization of
the whole overlay on the xc7z020, its AXI and DMA logic included, beside the rate measured on the board):
vendor synthesis and placement against yosys's LUT count, a host-driven batch against our clock-cycle
figure, trained weights against random ones. hls4ml's AD08 and RN08 as their MLPerf Tiny submissions publish
them: the rate the harness measured on the board, one inference at a time (data moved by the Zynq's processor
included; their logic at 100 MHz, ours at the xc7z020's 125 MHz), and the LUTs in the submitted hardware
export (Vivado's post-synthesis utilization of the whole design, its AXI logic included). Per LUT leaves the
DSPs out: AD08 uses 205 of them and ours 220, RN08 41 and ours 214. hls4ml's RN08 has no shortcut and no pooling (its training configuration turns
them off), so it is built to its own shape (``rn08``) beside the MLPerf Tiny ResNet-8 (``resnet8``). FINN's W1A1 MLPs binarize the image and compute every
layer by XNOR (BNN-PYNQ's lfcW1A1/hw/top.cpp), so their inputs here are bipolar. yosys does not run on
every network (the 1024-wide MLP's first layer did not finish within its 1,800 s limit; a run that meets
the limit records it in the row's ``synth_note``; ResNet-8 ran with ``--yosys-timeout 6000``); where it
ran, the estimate is beside it.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import load_board  # noqa: E402
from hwq.fileio import write_json, write_text  # noqa: E402

# What the peers publish. ``peer``: the figure a ratio is taken against; for FINN's CNV and LFC, BNN-PYNQ's
# overlays (FINN's HLS library on the Pynq-Z1/Z2's xc7z020: Vivado 2018.2 utilization of the whole overlay,
# and the rate its notebook measured on the board over 10,000 test images), the one design whose LUTs and
# throughput are both published. ``others``: the peers' further figures (throughput or latency only).
_BNN_PYNQ = "Xilinx/BNN-PYNQ"
_TINY_07 = "mlcommons/tiny_results_v0.7 (commit 64623f4)"
_TINY_10 = "mlcommons/tiny_results_v1.0 (commit c7761cf)"
# an SDK hardware export (.hdf, a zip) holds sysdef.xml, whose USEDRESOURCES element is Vivado's utilization
_SYSDEF = ("sysdef.xml's USEDRESOURCES: Vivado 2019.1 post-synthesis utilization of the whole block design, the Zynq "
           "PS wrapper and AXI SmartConnect included; PL clock 100 MHz in design_1.hwh")
PEERS = {
    "cnv-w1a1": {"lut": 26072, "bram": 124, "dsp": 24, "fps": 9150, "board": "Pynq-Z1/Z2", "tool": "FINN (BNN-PYNQ)",
                 "source": f"{_BNN_PYNQ} bnn/src/network/cnvW1A1/README.md (utilization, commit d84f6e8) and "
                           "notebooks/CNV-QNN_Cifar10_Testset.ipynb (9,149.98 images/s, commit 10b2ab5)",
                 "others": ["FINN on Pynq-Z2 through the MLPerf Tiny v0.7 harness, one image at a time: 661/s",
                            "FINN on AUP-ZU3 (FINN pull request 1499, finn-examples): 5,311/s"]},
    "cnv-w2a2": {"lut": 37302, "bram": 140, "dsp": 32, "fps": 2580, "board": "Pynq-Z1/Z2", "tool": "FINN (BNN-PYNQ)",
                 "source": f"{_BNN_PYNQ} bnn/src/network/cnvW2A2/README.md (utilization, commit d84f6e8) and "
                           "notebooks/CNV-QNN_Cifar10_Testset.ipynb (2,580.30 images/s, commit 10b2ab5)"},
    "lfc-w1a1": {"lut": 28360, "bram": 110, "dsp": 4, "fps": 356633, "board": "Pynq-Z1/Z2", "tool": "FINN (BNN-PYNQ)",
                 "source": f"{_BNN_PYNQ} bnn/src/network/lfcW1A1/README.md (utilization, commit d84f6e8) and "
                           "notebooks/LFC-QNN_MNIST.ipynb (356,633 images/s, commit 10b2ab5; its W1A2 overlay "
                           "measures the same rate, so the figure may be bound by the host's data movement)"},
    "ad08": {"lut": 42895, "bram": 14, "dsp": 205, "fps": 53365, "latency_us": 18.7, "clock_mhz": 100,
             "board": "Pynq-Z2", "tool": "hls4ml",
             "source": f"{_TINY_07} open/hls4ml-finn/results/pynq-z2/ad/AD08/performance/results.txt (median "
                       "53,365.4 inferences/s, one at a time through the harness) and the hardware export "
                       f"code/ad/AD08/inference/pynq-z2/vivado_project/hdf/design_1_wrapper.hdf ({_SYSDEF}); its "
                       "shape and widths from the submission's training/ad08.yml"},
    "resnet8": {"latency_us": 7643, "fps": 130.834, "clock_mhz": 100, "board": "Pynq-Z2", "tool": "hls4ml",
                "source": f"{_TINY_10} open/hls4ml/results/pynq-z2/ic/RN08/performance/results.txt (130.834 "
                          "inferences/s, one at a time through the harness)",
                "others": [("hls4ml's RN08 is not this network: its training/RN08.yml sets skip 0 and avg_pooling 0 "
                           "(no shortcut, no pooling) with 4x4 kernels, so its LUTs are compared in the rn08 row, "
                           "built to its shape")]},
    "rn08": {"lut": 29512, "bram": 36, "dsp": 41, "fps": 130.834, "latency_us": 7643, "clock_mhz": 100,
             "board": "Pynq-Z2", "tool": "hls4ml",
             "source": f"{_TINY_10} open/hls4ml/results/pynq-z2/ic/RN08/performance/results.txt (130.834 "
                       "inferences/s, one at a time through the harness) and the hardware export "
                       f"code/ic/RN08/inference/pynq-z2/vivado_project/hdf/design_1_wrapper.hdf ({_SYSDEF}); its "
                       "shape from training/RN08.yml and resnet_v1_eembc.py; reuse factor 16,384 (512 and 4,096 "
                       "on some layers): hls4ml built it small and slow on purpose"},
    "tfc-w1a1": {"fps": 1.09e6, "board": "AUP-ZU3", "tool": "FINN",
                 "source": "FINN pull request 1499 (finn-examples on AUP-ZU3), tfc-w1a1"},
}


# every peer row has these fields; null where the peer publishes no figure (FINN's TFC-w1a1 on AUP-ZU3: its
# rate only)
PEER_FIELDS = {"lut": None, "bram": None, "dsp": None, "clock_mhz": None, "latency_us": None, "fps": None,
               "others": []}


def _mlp(rng, sizes, w_bits, a_bits, input_bits, binary):
    """An MLP of ``sizes``; ``binary``: bipolar activations, the input's too (FINN's W1A1 MLPs binarize the
    image and compute every layer, the first included, by XNOR: BNN-PYNQ's lfcW1A1/hw/top.cpp)."""
    from boards.calibrate import network_ir, random_layer

    layers, tensors = [], {}
    input_signed = binary and input_bits == 1
    bits, signed = input_bits, input_signed
    for i in range(len(sizes) - 1):
        out = None if i == len(sizes) - 2 else a_bits
        layer, t = random_layer(rng, f"fc{i + 1}", sizes[i], sizes[i + 1], w_bits, bits, out, in_signed=signed,
                                out_signed=binary and out is not None,
                                requant="multiply_shift" if (out or 0) > 4 else "thresholds")
        layers.append(layer)
        tensors.update(t)
        bits, signed = layer.out_bits, layer.out_signed
    return network_ir(layers, tensors, input_bits=input_bits, dataset="random", input_signed=input_signed)


def _resnet8(rng):
    from boards.calibrate import resnet8_ir

    return resnet8_ir(rng)


def _cnv(rng, w_bits, a_bits):
    """FINN's CNV: 3x3 convolutions without padding 64, 64, pool, 128, 128, pool, 256, 256, then 512, 512, 10
    fully connected, on 3x32x32 8-bit inputs; binary activations are bipolar (XNOR layers)."""
    from boards.calibrate import _flatten, _pool2, network_ir, random_layer

    binary = a_bits == 1
    layers, tensors = [], {}
    side, c_in, bits, signed = 32, 3, 8, False
    for item in ("conv1", 64), ("conv2", 64), "pool1", ("conv3", 128), ("conv4", 128), "pool2", \
            ("conv5", 256), ("conv6", 256):
        if isinstance(item, str):
            layers.append(_pool2(item, c_in, side, bits, signed))
            side //= 2
            continue
        name, c = item
        layer, t = random_layer(rng, name, c_in, c, w_bits, bits, a_bits, op="conv2d", in_shape=[c_in, side, side],
                                padding=0, in_signed=signed, out_signed=binary,
                                requant="multiply_shift" if a_bits > 4 else "thresholds")
        layers.append(layer)
        tensors.update(t)
        side, c_in, bits, signed = side - 2, c, a_bits, binary
    layers.append(_flatten(c_in, side, bits, signed))
    n = c_in * side * side
    for i, c in enumerate((512, 512, 10)):
        out = None if c == 10 else a_bits
        layer, t = random_layer(rng, f"fc{i + 1}", n, c, w_bits, bits, out, in_signed=signed,
                                out_signed=binary and out is not None)
        layers.append(layer)
        tensors.update(t)
        n, bits, signed = c, layer.out_bits, layer.out_signed
    return network_ir(layers, tensors, input_bits=8, dataset="random", input_shape=[3, 32, 32])


def _rn08(rng):
    """hls4ml's RN08 as submitted to MLPerf Tiny v1.0 (training/RN08.yml with resnet_v1_eembc.py): no skip
    connections and no pooling, so a plain CNN on 3x32x32 8-bit inputs: conv 1x1 32, conv 4x4 4, conv 4x4 32,
    conv 4x4 32 with stride 4, conv 4x4 32, then 10 fully connected, at 8-bit weights and activations. Keras's
    'same' padding of a 4x4 kernel is one row and column before and two after; the IR pads both sides alike, so
    these pad 1, 2, 0 and 2 (sides 31, 32, 8, 9 against hls4ml's 32, 32, 8, 8): about 5% more multiplies."""
    from boards.calibrate import _flatten, network_ir, random_layer

    layers, tensors = [], {}
    side, c_in, bits = 32, 3, 8
    for name, c, kernel, stride, pad in (("conv0", 32, 1, 1, 0), ("conv1", 4, 4, 1, 1), ("conv2", 32, 4, 1, 2),
                                         ("conv3", 32, 4, 4, 0), ("conv4", 32, 4, 1, 2)):
        layer, t = random_layer(rng, name, c_in, c, 8, bits, 8, op="conv2d", in_shape=[c_in, side, side],
                                kernel=kernel, padding=pad, stride=stride, requant="multiply_shift")
        layers.append(layer)
        tensors.update(t)
        side, c_in, bits = (side + 2 * pad - kernel) // stride + 1, c, 8
    layers.append(_flatten(c_in, side, bits, False))
    layer, t = random_layer(rng, "fc", c_in * side * side, 10, 8, bits, None)
    layers.append(layer)
    tensors.update(t)
    return network_ir(layers, tensors, input_bits=8, dataset="random", input_shape=[3, 32, 32])


NETWORKS = {
    # name: (builder, board)
    "tfc-w1a1": (lambda r: _mlp(r, [784, 64, 64, 64, 10], 1, 1, 1, True), "xc7z020"),
    "sfc-w1a1": (lambda r: _mlp(r, [784, 256, 256, 256, 10], 1, 1, 1, True), "xc7z020"),
    "lfc-w1a1": (lambda r: _mlp(r, [784, 1024, 1024, 1024, 10], 1, 1, 1, True), "xc7z020"),
    "cnv-w1a1": (lambda r: _cnv(r, 1, 1), "xc7z020"),
    "cnv-w2a2": (lambda r: _cnv(r, 2, 2), "xc7z020"),
    # hls4ml's AD08 (training/ad08.yml of the v0.7 submission): 64 inputs, dense 72, 72, 8, 72, 72, 64 with
    # batch norm folded, 12-bit weights, 6-bit ReLU activations; 8-bit inputs here (hls4ml's input type is not
    # in that file)
    "ad08": (lambda r: _mlp(r, [64, 72, 72, 8, 72, 72, 64], 12, 6, 8, False), "xc7z020"),
    # the MLPerf Tiny reference autoencoder's shape (640-128x4-8-128x4-640 with 4 hidden layers a side in the
    # reference; 3 a side as the issue tried it), at W6/A6
    "ad-ref-w6a6": (lambda r: _mlp(r, [640, 128, 128, 128, 8, 128, 128, 128, 640], 6, 6, 8, False), "xc7z020"),
    "mlp-1024-w2a2": (lambda r: _mlp(r, [784, 1024, 1024, 1024, 10], 2, 2, 8, False), "xc7z020"),
    # the MLPerf Tiny ResNet-8 (boards.calibrate.resnet8_ir: 1x1 stride-2 shortcut convolutions, global average
    # pooling) at W8/A8 (hls4ml's widths for RN08 were not in the sources at hand)
    "resnet8": (_resnet8, "xc7z020"),
    "rn08": (_rn08, "xc7z020"),
}


def network(name):
    """(the IR, with seed 0's random integers, and the board) of network ``name``."""
    build, board_name = NETWORKS[name]
    return build(np.random.default_rng(0)), load_board(board_name)


def run_network(name, *, sim, synth, jobs, work, log, yosys_timeout=None):
    from hwq.estimate import estimate
    from rtl_gen.emit import generate_rtl
    from rtl_gen.folding import choose_folding
    from rtl_gen.plan import network_plan

    ir, board = network(name)
    t = time.perf_counter()
    folding = choose_folding(ir, board)
    folding_s = time.perf_counter() - t
    est = estimate(ir, board, folding=folding)
    interval = est["initiation_interval_cycles"]
    latency = network_plan(ir, folding).load_cycles + est["latency_cycles"]
    row = {"name": name, "board": board.name, "clock_mhz": board.clock_mhz, "folding_s": round(folding_s, 2),
           "widths": list(folding.widths), "dsp_layers": sorted(folding.dsp), "est_lut": est["totals"]["lut"],
           "est_ff": est["totals"]["ff"],
           "bram": est["totals"]["bram"], "dsp": est["totals"]["dsp"], "interval_cycles": interval,
           "fps": round(board.clock_mhz * 1e6 / interval, 1), "latency_us": round(latency / board.clock_mhz, 2),
           "synth_lut": None, "bit_exact": None,
           "peer": {**PEER_FIELDS, **PEERS[name]} if name in PEERS else None}
    log(f"{name} on {board.name}: folding {folding_s:.1f} s, widths {list(folding.widths)}, {row['fps']:,.0f}/s, "
        f"est {row['est_lut']} LUT, {row['bram']} BRAM, {row['dsp']} DSP")
    if sim or synth:
        rtl = Path(work) / name / "rtl"
        generate_rtl(ir, board, rtl, folding=folding)
        if sim:
            from hwq.intrange import code_range
            from sim.runner import simulate

            lo, hi = code_range(ir.input_bits, ir.input_signed)  # (bipolar: -1 and +1)
            rng = np.random.default_rng(1)
            shape = (sim, ir.in_features)
            inputs = rng.choice([lo, hi], size=shape) if ir.input_bits == 1 else rng.integers(lo, hi + 1, size=shape)
            res = simulate(ir, rtl, inputs=inputs)
            row.update(bit_exact=res["bit_exact"], sim_samples=res["samples"],
                       cycles_equal=res["initiation_interval_cycles"] == res["initiation_interval_cycles_estimate"])
            log(f"  simulated {res['samples']} random inputs: bit-exact {res['bit_exact']}")
        if synth:
            from boards.synth import YosysTimeout
            from hwq.synth import synth_rtl

            try:
                syn = synth_rtl(rtl, board, jobs=jobs, show_progress=False, timeout=yosys_timeout)
            except YosysTimeout as exc:  # a module over yosys's time limit: the row says which, the run goes on
                row["synth_note"] = f"yosys did not finish {exc.module} within {exc.timeout:,} s"
                log(f"  {row['synth_note']}")
            else:
                row.update(synth_lut=syn["total"]["lut"], synth=syn["total"], synth_s=syn["seconds"], synth_jobs=jobs)
                log(f"  yosys: {syn['total']['lut']} LUT in {syn['seconds']:.0f} s ({jobs} at a time)")
    return row


def synth_speedup(name, *, work, log):
    """Time ``hwq synth`` on ``name``'s design with 1 and then 2 yosys runs at a time, each with an empty
    cache; the totals must be equal."""
    import os

    from hwq.synth import synth_rtl
    from rtl_gen.emit import generate_rtl
    from rtl_gen.folding import choose_folding

    ir, board = network(name)
    rtl = Path(work) / f"{name}-speedup" / "rtl"
    generate_rtl(ir, board, rtl, folding=choose_folding(ir, board))
    seconds, totals = {}, {}
    old = os.environ.get("HWQ_CACHE")
    try:
        for jobs in (1, 2):
            os.environ["HWQ_CACHE"] = str(Path(work) / f"cache-{jobs}")
            t = time.perf_counter()
            syn = synth_rtl(rtl, board, jobs=jobs, show_progress=False)
            seconds[jobs] = round(time.perf_counter() - t, 1)
            totals[jobs] = syn["total"]
            log(f"  {name}: yosys with {jobs} at a time: {seconds[jobs]} s, {syn['total']['lut']} LUT")
    finally:
        if old is None:
            os.environ.pop("HWQ_CACHE", None)
        else:
            os.environ["HWQ_CACHE"] = old
    return {"network": name, "board": board.name, "seconds_1": seconds[1], "seconds_2": seconds[2],
            "speedup": round(seconds[1] / seconds[2], 2), "totals_equal": totals[1] == totals[2],
            "lut": totals[1]["lut"], "cpu_count": os.cpu_count()}


def markdown(res):
    lines = ["# Real-size networks beside their peers", "",
             (f"Made one network or a few at a time (each row of `bench/results/peers.json`, the raw numbers, "
              f"names the command that made it; the last: `{res['command']}`)."), "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             ("| network | board | folding (s) | est LUT | yosys LUT | BRAM | DSP | inferences/s | latency (us) | "
              "bit-exact | peer | ours / peer |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["networks"]:
        p = r["peer"]
        figures = ", ".join(f"{label} {p[k]:,g}" for k, label in (("fps", "inferences/s"), ("latency_us", "latency us"),
                                                                 ("lut", "LUT"), ("bram", "BRAM"), ("dsp", "DSP"))
                            if p.get(k) is not None) if p else ""
        peer = f"{p['tool']} on {p['board']}: {figures} ({p['source']})" if p else "-"
        if p and p["others"]:
            peer += "; also " + "; ".join(p["others"])
        syn = f"- ({r['synth_note']})" if r.get("synth_note") else "-" if r["synth_lut"] is None else f"{r['synth_lut']:,}"
        exact = "-" if r["bit_exact"] is None else r["bit_exact"]
        lines.append(f"| {r['name']} | {r['board']} | {r['folding_s']} | {r['est_lut']:,} | {syn} | {r['bram']} | "
                     f"{r['dsp']} | {r['fps']:,.0f} | {r['latency_us']} | {exact} | {peer} | {ratio(r)} |")
    sp = res.get("synth_speedup")
    if sp:
        lines += ["", (f"`hwq synth` on the {sp['network']} design ({sp['board']}, {sp['lut']:,} LUTs by yosys): "
                      f"{sp['seconds_1']} s with 1 yosys run at a time, {sp['seconds_2']} s with 2, "
                      f"{sp['speedup']}x; totals equal: {sp['totals_equal']} ({sp['cpu_count']} cores)."
                      + (f" Note: {sp['note']}." if sp.get("note") else ""))]
    return "\n".join(lines) + "\n"


def ratio(row):
    """Our throughput over the peer's (their inferences/s, or one over their latency where they publish only
    that: one inference at a time through the MLPerf Tiny harness), our latency over theirs, and, where the
    peer publishes its LUTs, our inferences/s per LUT over theirs (ours by yosys where it ran, else the
    estimate); '-' without a figure."""
    p = row["peer"] or {}
    parts = []
    if p.get("fps") is not None:
        parts.append(f"throughput {row['fps'] / p['fps']:.2g}x")
    if p.get("latency_us") is not None:
        parts.append(f"latency {row['latency_us'] / p['latency_us']:.2g}x")
    per_lut = per_lut_ratio(row)
    if per_lut is not None:
        parts.append(f"per LUT {per_lut:.2g}x ({'yosys' if row['synth_lut'] else 'estimated'} LUTs)")
    return ", ".join(parts) or "-"


def per_lut_ratio(row):
    """(our inferences/s per LUT) / (the peer's), or None without the peer's LUTs and rate."""
    p = row["peer"] or {}
    if p.get("lut") is None or p.get("fps") is None:
        return None
    ours = row["synth_lut"] or row["est_lut"]
    return (row["fps"] / ours) / (p["fps"] / p["lut"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", nargs="+", choices=list(NETWORKS),
                    help="default: all of them (none with --synth-speedup)")
    ap.add_argument("--sim", type=int, default=0, metavar="N", help="simulate N random inputs (0: no simulation)")
    ap.add_argument("--synth", action="store_true", help="synthesize with yosys (minutes per network)")
    ap.add_argument("--jobs", type=int, default=2, help="yosys runs at a time (default: 2)")
    ap.add_argument("--yosys-timeout", type=int, metavar="S", help="seconds one yosys run may take (default: 1,800)")
    ap.add_argument("--synth-speedup", metavar="NETWORK", choices=list(NETWORKS),
                    help="also time hwq synth on NETWORK's design with 1 and with 2 yosys runs at a time")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "peers.json"))
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "results" / "peers.md"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    command = ("python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    # rows of networks not run now are kept from the results file (each row names the command that made it)
    old = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    # the peers' figures are quoted, not measured: kept rows take the current ones
    rows = {r["name"]: {**r, "peer": {**PEER_FIELDS, **PEERS[r["name"]]} if r["name"] in PEERS else None}
            for r in old.get("networks", [])}
    speedup = old.get("synth_speedup")

    def save():  # after every network: a long run keeps what it finished
        ordered = [rows[n] for n in NETWORKS if n in rows]
        per_lut = {r["name"]: per_lut_ratio(r) for r in ordered}
        res = {"command": command, "networks": ordered, "synth_speedup": speedup,
               "max_folding_s": max(r["folding_s"] for r in ordered),
               "per_lut_vs_peer": {n: round(v, 2) for n, v in per_lut.items() if v is not None}}
        write_json(args.out, res)
        write_text(args.markdown, markdown(res))
        return ordered

    with tempfile.TemporaryDirectory(prefix="hwq-peers-") as work:
        for name in args.networks or ([] if args.synth_speedup else list(NETWORKS)):
            rows[name] = {**run_network(name, sim=args.sim, synth=args.synth, jobs=args.jobs, work=work, log=log,
                                        yosys_timeout=args.yosys_timeout),
                          "command": command}
            save()
        if args.synth_speedup:
            speedup = {**synth_speedup(args.synth_speedup, work=work, log=log), "command": command}
    rows = save()
    print(json.dumps({r["name"]: {k: r[k] for k in ("folding_s", "fps", "est_lut", "bit_exact")} for r in rows},
                     indent=1))


if __name__ == "__main__":
    main()
