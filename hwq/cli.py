"""The ``hwq`` command line. Every command prints what it wrote; bad input exits 2 with one line."""

import argparse
import signal
import sys
import textwrap
from pathlib import Path

from sim import DATA_SPLITS, SIMULATORS, TESTBENCHES

from . import __version__
from .errors import UserError
from .requant import REQUANT_POLICIES

__all__ = ["main"]



class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (plus a pointer to --help), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _fold(text):
    name, _, size = text.partition("=")
    parts = size.lower().split("x")
    if not name or len(parts) != 2 or not all(p.isdigit() and 1 <= int(p) <= 256 for p in parts):
        raise argparse.ArgumentTypeError(f"expected LAYER=ROWSxCOLS with each in 1..256 (e.g. conv2=8x16), not {text!r}")
    return name, (int(parts[0]), int(parts[1]))


def _folding(args):
    """{"fold": {layer: (rows, cols)}, "lut_budget": n} from the command line."""
    return {"fold": dict(args.fold or []), "lut_budget": args.lut_budget}


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return int(text)


def _non_negative(text):
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}")
    return int(text)


def _bits(text):
    from .config import parse_bits

    try:
        return parse_bits(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_choice(text):
    from .config import MODELS
    from .custom import is_builder_ref

    if text in MODELS or is_builder_ref(text):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(MODELS)} or FILE.py:FUNCTION, not {text!r}")


def _add_train_args(p):
    from .config import FIRST_LAST, METHODS, MODELS, NBN_VARIANTS, TrainConfig
    from .data import DATASETS

    d = TrainConfig()
    p.add_argument("--model", default=d.model, type=_model_choice, metavar="{" + ",".join(MODELS) + ",FILE.py:FUNC}",
                   help="network: mlp (64-32-16-10), cnn (conv-BN-ReLU-pool x2, fc), resnet (cnn with a "
                        "residual block), cnn1d (MNIST-1D's CNN for 1-D signals), or your own: FILE.py:FUNC, a "
                        f"function that builds it from hwq's layers (see hwq/custom.py) (default: {d.model})")
    p.add_argument("--dataset", default=d.dataset, choices=DATASETS,
                   help="dataset (default: digits, bundled with scikit-learn; mnist and cifar10 read local "
                        "files, see README)")
    p.add_argument("--method", default=d.method, choices=METHODS,
                   help=f"quantization method (default: {d.method}; see docs/methods.md)")
    p.add_argument("--bits", type=_bits, default=(d.w_bits, d.a_bits), metavar="W/A",
                   help=f"weight/activation bits of every layer, 1..8 each (default: {d.w_bits}/{d.a_bits}); "
                        "the first layer's inputs are the dataset's codes")
    p.add_argument("--bits-file", metavar="BITS.yaml", default=None,
                   help="per-layer bits (format hwq-bits/1, as `hwq train` writes to RUN/bits.yaml); "
                        "overrides --bits for the layers it names")
    p.add_argument("--first-last", default=d.first_last, choices=FIRST_LAST,
                   help="first/last-layer policy: 'same' bits everywhere, or '8': the first and last layers' "
                        f"weights and the last layer's input at 8 bits (default: {d.first_last})")
    p.add_argument("--epochs-float", type=_non_negative, default=d.epochs_float, metavar="N",
                   help=f"float warm-up epochs (default: {d.epochs_float})")
    p.add_argument("--epochs-qat", type=_non_negative, default=d.epochs_qat, metavar="N",
                   help=f"quantization-aware epochs (default: {d.epochs_qat})")
    p.add_argument("--nbn-variant", default=d.nbn_variant, choices=NBN_VARIANTS,
                   help="with --method nbn: neuron-by-neuron, direct or layer-by-layer (default: nbn)")
    p.add_argument("--learn-bits", action="store_true",
                   help="with --method sinareq: learn each layer's weight bits (written to RUN/bits.yaml)")
    p.add_argument("--seed", type=_non_negative, default=d.seed, metavar="N", help=f"random seed (default: {d.seed})")


def _train_config(args):
    from .config import TrainConfig

    return TrainConfig(model=args.model, dataset=args.dataset, method=args.method, w_bits=args.bits[0],
                       a_bits=args.bits[1], bits_file=args.bits_file, first_last=args.first_last,
                       epochs_float=args.epochs_float, epochs_qat=args.epochs_qat, seed=args.seed,
                       nbn_variant=args.nbn_variant, sinareq_learn_bits=args.learn_bits)


def _add_board(p, *, folding=True):
    from boards import DEFAULT_BOARD
    from rtl_gen.folding import CELL_FRACTION, DEFAULT_LUT_FRACTION

    p.add_argument("--board", default=DEFAULT_BOARD,
                   help=f"board name (see `hwq boards`) or a board .yaml file (default: {DEFAULT_BOARD})")
    if not folding:
        return
    p.add_argument("--fold", type=_fold, action="append", metavar="LAYER=RxC",
                   help="fix a conv2d/linear layer's folding: RxC = output channels x input channels per cycle "
                        "(repeatable; the others are chosen automatically; a layer's cols must equal the "
                        "previous layer's rows, and a residual add's two inputs need equal rows)")
    p.add_argument("--lut-budget", type=_positive, metavar="N",
                   help=f"LUTs the automatic folding may use (default: {round(DEFAULT_LUT_FRACTION * 100)}%% of the "
                        f"board's; on iCE40 the estimated logic cells also stay within {round(CELL_FRACTION * 100)}%%). "
                        "DSPs and block RAMs are used where they save logic, within the board's counts")


def cmd_boards(args):
    from boards import DEFAULT_BOARD, known_boards, load_board

    print(f"{'board':<12} {'family':<8} {'LUT':>6} {'FF':>6} {'BRAM':>5} {'DSP':>4} {'MHz':>5}  {'hwq board':<12} "
          f"description")
    for name in known_boards():
        b = load_board(name)
        mark = "  (default)" if name == DEFAULT_BOARD else ""
        print(f"{b.name:<12} {b.family:<8} {b.lut:>6} {b.ff:>6} {b.bram:>5} {b.dsp:>4} {b.clock_mhz:>5g}  "
              f"{b.platform or '-':<12} {b.description}{mark}")


def cmd_train(args):
    from .train import train

    metrics = train(_train_config(args), args.out)
    acc = metrics["accuracy"]
    print(f"wrote {Path(args.out) / 'checkpoint.pt'}, metrics.json and bits.yaml: float accuracy "
          f"{acc['float']:.4f}, fake-quant {acc['fake_quant']:.4f} ({metrics['train_seconds']:.1f} s)")


def _requant_summary(layer):
    if layer.requant_kind == "multiply_shift":
        dev = f", {layer.deviations} acc values off the float model" if layer.deviations else ", exact"
        return f" multiply-shift >>{layer.shift}{dev}"
    return f" {layer.requant_kind}" if layer.requant_kind else ""


def cmd_export(args):
    from .export import export_run

    ir = export_run(args.run, args.out, requant=args.requant, qonnx=args.qonnx, force=args.force)
    files = "manifest.yaml, tensors.npz" + (" and model.onnx (QONNX)" if args.qonnx else "")
    print(f"wrote {args.out}: {files}")
    _print_layers(ir)


def cmd_import(args):
    from .qonnx_import import check_and_save, check_inputs, lower_qonnx

    ir, model = lower_qonnx(args.model, dataset=args.dataset, requant=args.requant)
    codes, what = (_read_codes(args.inputs, ir), args.inputs) if args.inputs else check_inputs(ir, args.samples)
    print(f"checking {len(codes)} samples: qonnx's executor on {args.model} against hwq's golden model ...", flush=True)
    check = check_and_save(model, ir, codes, args.model, args.out, inputs=what, force=args.force)
    print(f"equal: every logit of {check['samples']} samples (largest difference {check['max_error_steps']:.2g} of "
          f"one integer step, float32 rounding)")
    print(f"wrote {args.out}: manifest.yaml, tensors.npz, import.json")
    _print_layers(ir)


def _print_layers(ir):
    for la in ir.layers:
        what = (f"W{la.w_bits}/A{la.a_bits}->{la.out_bits} acc{la.acc_bits}" if la.weights
                else f"A{la.a_bits}->{la.out_bits} acc{la.acc_bits}" if la.op == "add" else f"A{la.a_bits}")
        xnor = " xnor-popcount" if la.xnor else ""
        print(f"  {la.name:<8} {la.op:<8} {what}{xnor}{_requant_summary(la)}")


def cmd_golden(args):
    import numpy as np

    from . import golden
    from .fileio import atomic_path
    from .ir import load_ir

    ir = load_ir(args.ir)
    x = _read_codes(args.inputs, ir)
    names = [la.name for la in ir.layers]
    if args.layer is not None and args.layer not in names:
        raise UserError(f"--layer: no layer '{args.layer}' in {args.ir}; layers: {', '.join(names)}")
    outputs = golden.run_layers(ir, x)
    y = outputs[names.index(args.layer)] if args.layer else outputs[-1]
    with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
        np.save(f, y)
    what = f"layer '{args.layer}'" if args.layer else "logits"
    print(f"wrote {args.out}: {what} of {len(x)} samples, int64 array of shape {list(y.shape)}")


def _read_codes(path, ir):
    """Input codes from a .npy file, checked: integers in the IR's input range, shape (N, *input_shape)
    or (N, prod(input_shape))."""
    import math

    import numpy as np

    from .intrange import act_levels, code_range

    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npy file ({exc})") from None
    shape = list(ir.input_shape)
    if x.ndim < 1 or list(x.shape[1:]) not in (shape, [math.prod(shape)]):
        forms = f"[N, {', '.join(map(str, shape))}]" + (f" or [N, {math.prod(shape)}]" if len(shape) > 1 else "")
        raise UserError(f"{path}: expected an array of shape {forms} (input codes), found {list(x.shape)}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise UserError(f"{path}: expected integer codes, found NaN or infinity")
    if x.dtype.kind not in "iu" and not (x.dtype.kind == "f" and (x == np.round(x)).all()):
        raise UserError(f"{path}: expected integer codes, found dtype {x.dtype} with non-integer values")
    x = x.astype(np.int64)
    lo, hi = code_range(ir.input_bits, ir.input_signed)
    step = act_levels(ir.input_bits, ir.input_signed)[1]
    bad = (x < lo) | (x > hi) | ((x - lo) % step != 0)  # bipolar codes are -1 and +1 only
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{path}: value {x[idx]} at {list(idx)} is outside the input codes {lo}..{hi} "
                        f"({ir.input_bits}-bit {'signed' if ir.input_signed else 'unsigned'}; see docs/formats.md, "
                        "input conventions)")
    return x


def cmd_rtl(args):
    from boards import load_board
    from rtl_gen.emit import generate_rtl

    from .ir import check_size, load_ir
    from .progress import status

    board = load_board(args.board)
    ir = load_ir(args.ir)
    n = check_size(ir)  # a network too large is one line, before the announcement
    with status(f"choosing the folding and generating Verilog for {n:,} weights", enabled=n > 100_000):
        info = generate_rtl(ir, board, args.out, **_folding(args), force=args.force)
    arrays = ", ".join(f"{la['name']} {la['engine']} {la['array'][0]}x{la['array'][1]}"
                       + (" on DSPs" if la.get("dsp") else "")
                       for la in info["layers"] if la["stage"] is not None)
    block = info["folding"]["block"]
    arrays += f"; in block RAM: {', '.join(block)}" if block else "; every memory in logic"
    n_layers, n_mem = len(info["files"]) - 1, len(info["memory_files"])
    print(f"wrote {args.out}/: top.v, {n_layers} layer files, {n_mem} memory files and rtl.json for {board.name}: "
          f"latency {info['latency_cycles']} cycles, "
          f"initiation interval {info['initiation_interval_cycles']} cycles "
          f"({info['throughput_per_s']:,.0f} inferences/s at {board.clock_mhz:g} MHz); {arrays}"
          + "".join(f"; skip {s['from']} -> {s['to']} in a ring of {s['banks']} banks" for s in info["skips"]))


def cmd_estimate(args):
    from boards import load_board

    from .estimate import estimate
    from .fileio import write_json
    from .ir import load_ir

    board = load_board(args.board)
    est = estimate(load_ir(args.ir), board, **_folding(args))
    for la in [*est["layers"], {"name": "(top)", "estimate": {**est["top"], "cycles": 0}}]:
        e = la["estimate"]
        print(f"{la['name']:<8} LUT {e['lut']:>6}  FF {e['ff']:>6}  BRAM {e['bram']:>4g}  DSP {e['dsp']:>3}  "
              f"cycles {e['cycles']:>6}" + (f"  (built into {la['in_stage']}'s stage)" if la.get("in_stage") else ""))
    t = est["totals"]
    if est["fits"]:
        fit = "fits"
    else:
        worst = max(est["layers"], key=lambda la: la["estimate"]["lut"])
        over = ", ".join(f"{v:g} {k.upper()}" for k, v in est["over"].items())
        fit = f"does NOT fit (over by {over}; largest layer {worst['name']}, {worst['estimate']['lut']} LUT)"
    cells = f"  logic cells {t['cells']}" if "cells" in t else ""
    print(f"{'total':<8} LUT {t['lut']:>6}  FF {t['ff']:>6}  BRAM {t['bram']:>4g}  DSP {t['dsp']:>3}  cycles "
          f"{t['cycles']:>6}{cells}  ({est['latency_us']:.2f} us at {board.clock_mhz:g} MHz); {fit} {board.name}")
    if args.out:
        write_json(args.out, est)
        print(f"wrote {args.out}")


def _mismatch_text(first):
    pos = first["position"]
    at = f"channel {pos[0]}, y {pos[1]}, x {pos[2]}" if len(pos) == 3 else f"output {pos[0]}"
    return (f"MISMATCH at layer {first['layer']}, sample {first['sample']}, {at}: expected {first['expected']} "
            f"(golden model), got {first['got']} (RTL)")


def cmd_sim(args):
    from sim.runner import select_inputs, simulate

    from .fileio import write_json
    from .ir import load_ir

    ir = load_ir(args.ir)
    inputs = _read_codes(args.inputs, ir) if args.inputs else None
    if inputs is None:
        select_inputs(ir, args.samples, args.data)  # too many samples is an error before the announcement
    what = f"layer {args.layer}" if args.layer else "the network"
    n = len(inputs) if inputs is not None else args.samples
    how = ("Verilator (each design is built once, then cached)" if args.simulator == "verilator"
           else f"Icarus Verilog under {'SystemVerilog-2012' if args.simulator.endswith('2012') else 'Verilog-2005'} "
                f"rules (hundreds of times slower than Verilator)")
    print(f"simulating {n} {'samples from ' + args.inputs if args.inputs else 'samples'} through {what} with "
          f"{how} ...", flush=True)
    res = simulate(ir, args.rtl, samples=args.samples, inputs=inputs, data=args.data, layer=args.layer,
                   backpressure=args.backpressure, seed=args.seed, waves=args.waves, testbench=args.testbench,
                   simulator=args.simulator, log=lambda line: print(line, flush=True))
    out = args.out or Path(args.rtl) / ("sim.json" if args.layer is None else f"sim-{args.layer}.json")
    write_json(out, res)
    cyc = ", ".join(f"{la['name']} {la['cycles']}" for la in res["layers"])
    if res["bit_exact"]:
        verdict = f"bit-exact ({res['samples']} of {res['samples']} samples)"
    else:
        verdict = f"{_mismatch_text(res['first_mismatch'])} ({res['mismatched_samples']} samples differ)"
    waves = f" and {args.waves}" if args.waves else ""
    print(f"{verdict}\ncycles per layer: {cyc}; latency {res['latency_cycles']} (estimate "
          f"{res['latency_cycles_estimate']}), initiation interval {res['initiation_interval_cycles']} (estimate "
          f"{res['initiation_interval_cycles_estimate']}); {res['cycles_per_s'] or 0:,} simulated cycles/s\n"
          f"wrote {out}{waves}")
    return 0 if res["bit_exact"] else 1


def cmd_sweep(args):
    from .sweep import run_sweep

    report = run_sweep(args.sweep, args.out, workers=args.workers, ray_address=args.ray_address,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    n = len(report["points"])
    print(f"{n} points: {n - report['failed']} ok ({report['reused']} reused), {report['failed']} failed, "
          f"{report['wall_seconds']:.1f} s; wrote {Path(args.out) / 'sweep.json'} and {Path(args.out) / 'sweep.html'}")
    return 1 if report["failed"] else 0


def cmd_synth(args):
    from boards import load_board

    from .synth import synth_rtl

    board = load_board(args.board)
    res = synth_rtl(args.rtl, board, pnr=args.pnr, jobs=args.jobs)
    print(f"{'':<8} {'LUT':>7} {'FF':>7} {'BRAM':>5} {'DSP':>4}")
    for la in [*res["layers"], {"name": "(top)", **res["top"]}, {"name": "total", **res["total"]}]:
        print(f"{la['name']:<8} {la['lut']:>7} {la['ff']:>7} {la['bram']:>5g} {la['dsp']:>4}")
    use = ", ".join(f"{k.upper()} {v:.0%}" for k, v in res["utilization"].items() if v is not None)
    print(f"{board.name}: {use}; {'fits' if res['fits'] else 'does NOT fit'}  "
          f"({res['command']}, {res['seconds']:.0f} s{', cached' if res['cached'] else ''}); "
          f"wrote {Path(args.rtl) / 'synth.json'}")
    if args.pnr and res["pnr"] is None:
        print(f"no place and route: {board.name} ({board.family}) has no open nextpnr target")
    elif res["pnr"] and res["pnr"].get("error"):
        print(f"place and route failed: {res['pnr']['error']}")
        return 1
    elif res["pnr"]:
        p = res["pnr"]
        print(f"{p['tool']}: Fmax {p['fmax_mhz']} MHz (target {p['target_mhz']:g} MHz, "
              f"{'met' if p['meets_target'] else 'NOT met'}); placed in {p['seconds']['pnr']:.0f} s")


def cmd_board(args):
    from boards import load_board

    from .board import build_board

    rtl = Path(args.rtl)
    ir = Path(args.ir) if args.ir else rtl.parent / "ir"
    if not (ir / "manifest.yaml").is_file():
        raise UserError(f"{ir}: no IR there (the golden reference `hwq run` compares with); pass --ir IR")
    record = build_board(rtl, ir, load_board(args.board), args.out, baud=args.baud, bitstream=not args.no_bitstream,
                         force=args.force, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    _print_board(record, args.out)
    return 0


def _print_board(record, out):
    made = record["bitstream"] or (record["vivado"] and f"{record['vivado']['script']} (for Vivado)") or "no bitstream"
    print(f"wrote {out}/: {made}, pins in {record['pin_file']}, {record['link']['baud']} baud UART link "
          f"(board.json){'' if not record['timing'] else ', timing in timing.json'}")
    if record["bitstream"]:
        from .board import PLATFORMS

        bitstream, loader = Path(out) / record["bitstream"], f"openFPGALoader -b {PLATFORMS[record['platform']][2]}"
        print(f"flash it: iceprog {bitstream}   (or: {loader} {bitstream})" if record["family"] == "ice40"
              else f"load it: {loader} {bitstream}")
    print(f"then: hwq run {out} --port /dev/ttyUSB1   (or --simulate: the same driver against the simulated board)")


def cmd_run(args):
    import time

    import numpy as np

    from sim.runner import select_inputs

    from . import golden
    from .board import load_board_dir
    from .driver import Device
    from .fileio import atomic_path, write_json
    from .progress import progress_bar

    record, ir = load_board_dir(args.dir)
    if args.inputs:
        x, labels = _read_codes(args.inputs, ir), None
    else:
        x, labels = select_inputs(ir, args.samples, "test")
    x = np.asarray(x, dtype=np.int64).reshape(len(x), -1)

    def run(port, where):
        with Device.open(args.dir, port, timeout=args.timeout) as dev:
            print(f"connected to {where}: {record['board']} ({record['platform']}), design {record['link']['design_id']}, "
                  f"{record['link']['baud']} baud", file=sys.stderr, flush=True)
            with progress_bar(f"run {len(x)} samples", len(x)) as tick:
                t = time.perf_counter()
                got = dev.infer(x, progress=lambda k: tick())
                return got, time.perf_counter() - t

    if args.simulate:
        from sim.board_sim import simulated_board

        with simulated_board(args.dir, log=lambda m: print(m, file=sys.stderr, flush=True)) as url:
            got, seconds = run(url, f"the simulated board ({url})")
    else:
        got, seconds = run(args.port, args.port)
    expected = golden.run(ir, x)
    equal = bool(np.array_equal(got, expected))
    bad = np.flatnonzero((got != expected).any(axis=1))
    result = {"format": "hwq-run/1", "board": record["board"], "port": "simulated" if args.simulate else args.port,
              "samples": len(x), "bit_exact": equal, "mismatched_samples": len(bad),
              "first_mismatch": None if equal else int(bad[0]), "seconds": round(seconds, 3),
              "inferences_per_s": round(len(x) / seconds, 1) if seconds > 0 else None,
              "accuracy": None if labels is None else float((got.argmax(1) == labels).mean())}
    out = Path(args.out) if args.out else Path(args.dir) / "run.json"
    write_json(out, result)
    if not args.out:
        with atomic_path(Path(args.dir) / "logits.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, got)
    rate = (f"{result['inferences_per_s']:,} inferences/s over the link"
            + (" (wall-clock rate of the simulation, not the board's)" if args.simulate else ""))
    acc = "" if labels is None else f", accuracy {result['accuracy']:.4f}"
    verdict = (f"logits equal to the golden model's for all {len(x)} samples" if equal
               else f"MISMATCH: {len(bad)} samples differ from the golden model (first: sample {bad[0]})")
    print(f"{verdict}{acc}; {rate}\nwrote {out}")
    return 0 if equal else 1


def cmd_flow(args):
    from boards import load_board

    from .flow import run_flow

    board = load_board(args.board)
    cfg = _train_config(args)
    report = run_flow(args.out, board=board, train_cfg=cfg, samples=args.samples, **_folding(args),
                      synth=args.synth, log=lambda msg: print(msg, file=sys.stderr),
                      allocate_options=_allocate_options(args) if args.allocate else None, force=args.force,
                      command=args.command_line, onnx=args.onnx)
    _print_summary(report)
    if args.bitstream:
        from .board import build_board

        record = build_board(Path(args.out) / "rtl", Path(args.out) / "ir", board, Path(args.out) / "board",
                             force=args.force, log=lambda msg: print(msg, file=sys.stderr, flush=True))
        _print_board(record, Path(args.out) / "board")
    print(f"wrote {Path(args.out) / 'report.json'} and {Path(args.out) / 'report.html'} (open it in a browser)")
    be = report["bit_exact"]
    ok = be["rtl_vs_golden"] and (be["golden_vs_qonnx"] if args.onnx else be["golden_vs_torch_integer"])
    return 0 if ok else 1


def _candidates(text):
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and 1 <= int(p) <= 8 for p in parts):
        raise argparse.ArgumentTypeError(f"expected bitwidths in 1..8 separated by commas (e.g. 2,4,8), not {text!r}")
    return tuple(sorted({int(p) for p in parts}))


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], not {text!r}")
    return value


def _add_allocate_args(p):
    from .allocate import COSTS, DEFAULT_CANDIDATES, DEFAULT_FINALISTS, DEFAULT_SIGNIFICANCE
    from .config import SENSITIVITY_METHODS

    p.add_argument("--max-latency-cycles", type=_positive, metavar="C",
                   help="speed target: cycles from an input's first word to its logits")
    p.add_argument("--min-throughput", type=_positive_float, metavar="INF_PER_S",
                   help="speed target: inferences per second at the board's clock (the initiation interval, "
                        "the slowest stage, at most clock / INF_PER_S)")
    p.add_argument("--candidates", type=_candidates, default=DEFAULT_CANDIDATES, metavar="B,B,...",
                   help="bitwidths each layer's weights and activations may get (default: "
                        f"{','.join(map(str, DEFAULT_CANDIDATES))})")
    p.add_argument("--sensitivity", choices=SENSITIVITY_METHODS, default="loss",
                   help="loss: measured loss change with one layer quantized to a candidate; hessian: Hutchinson "
                        "Hessian trace times the quantization perturbation (HAWQ style) (default: loss)")
    p.add_argument("--cost", choices=COSTS, default="estimator",
                   help="estimator: the calibrated resource model with the folding chosen jointly; bops: the "
                        "baseline, a bit-operations budget (sum of MACs x w_bits x a_bits) (default: estimator)")
    p.add_argument("--finalists", type=_positive, default=DEFAULT_FINALISTS, metavar="K",
                   help="fine-tune the K best allocations and every uniform design that fits, each trained without "
                        "a held-out validation split of the training set (20%%), and keep the one most accurate on "
                        f"it (default: {DEFAULT_FINALISTS}; 1: the program's choice alone, trained on all the "
                        "training set)")
    p.add_argument("--significance", type=_fraction, default=DEFAULT_SIGNIFICANCE, metavar="P",
                   help="with finalists: a mixed setting is kept only if it beats the best uniform finalist on the "
                        "validation split by a one-sided sign test at this level, else that uniform design is "
                        f"built (default: {DEFAULT_SIGNIFICANCE:g}; 1: the most accurate on validation, whatever "
                        "the margin)")


def _allocate_options(args):
    return {"max_latency_cycles": args.max_latency_cycles, "min_throughput": args.min_throughput,
            "candidates": args.candidates, "sensitivity": args.sensitivity, "cost": args.cost,
            "finalists": args.finalists, "significance": args.significance}


def cmd_allocate(args):
    from boards import load_board

    from .allocate import allocate

    board = load_board(args.board)
    report = allocate(args.run, board, out_dir=args.out, lut_budget=args.lut_budget, ff_budget=args.ff_budget,
                      epochs=args.epochs, synth=args.synth, dry_run=args.dry_run, **_allocate_options(args),
                      log=lambda msg: print(msg, file=sys.stderr))
    if report is None:
        return 0
    final = report["final"]
    bits = " ".join(f"{n}:W{b['w_bits']}/A{b['a_bits']}" for n, b in final["bits"].items())
    syn = f", yosys {final['synth']['total']['lut']} LUT" if final.get("synth") else ""
    print(f"allocated {bits}: golden accuracy {final['accuracy']['golden']:.4f}, estimated "
          f"{final['estimate']['lut']} LUT{syn} (budget {report['limits']['lut']:.0f}); wrote {report['out']}/ "
          f"(bits.yaml, run/, ir/) and {Path(report['run']) / 'allocate.json'}")
    return 0 if final["meets_budget"] else 1


def _print_summary(report):
    from rich.console import Console
    from rich.table import Table

    from .report import _array_text, _bits_text, _or_dash

    t = report["totals"]
    synth = t["synth"] is not None  # yosys columns only when synthesis ran
    table = Table(title=f"hwq: {report['model']} on {report['dataset']} -> {report['board']}")
    cols = ["layer", "W/A/out", "acc", "array", "LUT est", *(["LUT yosys"] if synth else []), "FF est",
            *(["FF yosys"] if synth else []), "cycles est", "cycles sim"]
    for col in cols:
        table.add_column(col, justify="right")

    def row(name, bits, acc, array, est, syn, cycles):
        lut = [str(est["lut"]), *([str(syn["lut"]) if syn else "-"] if synth else [])]
        ff = [str(est["ff"]), *([str(syn["ff"]) if syn else "-"] if synth else [])]
        table.add_row(name, bits, acc, array, *lut, *ff, *cycles)
    for la in report["layers"]:
        row(la["name"], _bits_text(la), _or_dash(la["acc_bits"]), _array_text(la["array"]), la["estimate"],
            la["synth"], [str(la["estimate"]["cycles"]), str(la["sim"]["cycles"])])
    row("(top)", "", "", "", report["top"]["estimate"], report["top"]["synth"], ["", ""])
    row("total", "", "", "", t["estimate"], t["synth"], [str(t["latency_cycles_estimate"]), str(t["latency_cycles_sim"])])
    console = Console()
    console.print(table)
    if t.get("fmax_mhz"):
        console.print(f"Fmax {t['fmax_mhz']} MHz (nextpnr): {t.get('throughput_at_fmax_per_s') or 0:,.0f} inferences/s "
                      f"at it, {t['throughput_inferences_per_s']:,.0f}/s at the board's {t['clock_mhz']:g} MHz clock")
    acc, be = report["accuracy"], report["bit_exact"]
    trained = f"float {acc['float']:.4f}  fake-quant {acc['fake_quant']:.4f}  " if acc["float"] is not None else ""
    console.print(f"accuracy ({acc['golden_samples']} test samples): {trained}golden {acc['golden']:.4f}")
    console.print(f"on the {acc['rtl_samples']} simulated samples: RTL {acc['rtl']:.4f}, "
                  f"golden {acc['golden_on_rtl_samples']:.4f}")
    console.print(f"RTL vs golden: {'bit-exact' if be['rtl_vs_golden'] else 'MISMATCH'} over {be['samples']} samples; "
                  + (f"qonnx vs golden: {'equal' if be['golden_vs_qonnx'] else 'DIFFERENT'}; "
                     if be.get("golden_vs_qonnx") is not None else
                     f"torch integer vs golden: {'equal' if be['golden_vs_torch_integer'] else 'DIFFERENT'}; ")
                  + f"fits {report['board']}: {t['fits']}")


# Per subcommand: what it reads and writes, and examples (shown by `hwq COMMAND --help`).
COMMAND_HELP = {
    "boards": (("Print the bundled boards: family, part, LUTs, flip-flops, block RAMs, DSPs and clock. Reads "
               "boards/*.yaml; writes nothing. Any command's --board also takes the path of your own board "
               "YAML (fields as in boards/ice40-up5k.yaml)."),
               ["hwq boards"]),
    "train": (("Quantization-aware training: a float warm-up, then the method's QAT at the chosen bits. Reads "
              "the dataset (bundled or under $HWQ_DATA); writes OUT/checkpoint.pt, OUT/metrics.json and "
              "OUT/bits.yaml."),
              ["hwq train --out run", "hwq train --model cnn --method uniq --bits 4/4 --first-last 8 --out run",
               "hwq train --bits-file my-bits.yaml --out run"]),
    "export": (("Export a trained run to the integer IR: integer weights, batch-norm folded, requantization as "
               "thresholds or multiply-shift, accumulator widths proven. Reads RUN; writes OUT/manifest.yaml "
               "and OUT/tensors.npz (and OUT/model.onnx with --qonnx)."),
               ["hwq export run --out ir", "hwq export run --out ir --qonnx"]),
    "import": (("Import a quantized model in QONNX form (Brevitas' export_qonnx, qonnx's converters, hwq export "
               "--qonnx): scales folded, requantization as thresholds or multiply-shift, accumulator widths "
               "proven, then checked: qonnx's executor and hwq's golden model must give the same logits. Ops: "
               "Quant, BipolarQuant, MultiThreshold, Gemm, MatMul, Conv, BatchNormalization, Relu, Clip, Add, "
               "Sub, Mul, Div, MaxPool, Flatten, Reshape, Identity. Reads MODEL.onnx; writes OUT/manifest.yaml, "
               "OUT/tensors.npz and OUT/import.json."),
               ["hwq import model.onnx --out ir", "hwq import model.onnx --dataset digits --out ir"]),
    "golden": (("Run the golden model (numpy integers) of an IR. Reads IR and an .npy of input codes; writes "
               "the logits (or one layer's output codes) as an int64 .npy."),
               ["hwq golden ir --inputs x.npy --out logits.npy"]),
    "rtl": (("Generate Verilog for a board: the folding (channels per cycle), DSP and block-RAM choices that "
            "fit the LUT budget, one engine per layer in a layer-pipelined top. Reads IR; writes OUT/top.v, "
            "OUT/<layer>.v, OUT/mem/*.hex and OUT/rtl.json."),
            ["hwq rtl ir --board ice40-up5k --out rtl", "hwq rtl ir --fold fc1=4x8 --lut-budget 3000 --out rtl"]),
    "estimate": (("Estimate resources (calibrated against yosys) and cycles (exact) per layer for a board, with "
                 "the folding hwq rtl would choose. Reads IR; prints a table, and writes JSON with --out."),
                 ["hwq estimate ir --board xc7a35t", "hwq estimate ir --board ice40-up5k --out est.json"]),
    "sim": (("Simulate the RTL cycle by cycle with Verilator and compare every output integer with the golden "
            "model, and every layer's cycle count with the estimate. Reads IR and RTL; writes RTL/sim.json."),
            ["hwq sim ir rtl --samples 100", "hwq sim ir rtl --layer conv2", "hwq sim ir rtl --inputs x.npy",
             "hwq sim ir rtl --simulator icarus-2012 --samples 20"]),
    "synth": (("Synthesize the RTL with yosys for its board (resources per layer and in total) and, with --pnr, "
              "place and route it with nextpnr (Fmax). Reads RTL; writes RTL/synth.json."),
              ["hwq synth rtl", "hwq synth rtl --pnr"]),
    "sweep": (("Run every point of a sweep file (a grid or a list over model, method, bits, board, LUT budget, "
              "seed) through the chosen stages (train, export, rtl, estimate, sim, synth, pnr), on Ray: this "
              "machine's cores or a cluster. Finished points are found again by their hash and reused; a failed "
              "point is recorded with its error. Writes OUT/sweep.json, OUT/sweep.html (accuracy against LUTs "
              "and throughput, Pareto fronts), OUT/points/<hash>/ and OUT/cache/."),
              ["hwq sweep examples/sweeps/mlp-cnn.yaml --out out/sweep", "hwq sweep my.yaml --workers 1 --out out/sweep",
               "hwq sweep my.yaml --ray-address auto --out /shared/sweep"]),
    "board": (("Wrap the network in a UART host link and the board's clock, reset and LEDs, with the pins "
               "of an amaranth-boards platform (iCEBreaker, ULX3S, Arty A7), and build the bitstream with open "
               "tools: yosys, nextpnr at the board's clock (a design that misses it is an error), icepack or "
               "ecppack. Xilinx: a Vivado Tcl script, an XDC file and an AXI4-Stream wrapper instead. Reads RTL "
               "and its IR; writes OUT/board.json, OUT/ir, the Verilog, OUT/hwq_board.* and OUT/timing.json."),
              ["hwq board out/demo/rtl --board ice40-up5k --out out/demo/board",
               "hwq board rtl --ir ir --board ecp5-85f --out board-ulx3s", "hwq board rtl --board xc7a35t --out arty"]),
    "run": (("Send input codes to a board over its UART (pyserial), read the logits back, compare them with the "
             "golden model and report the rate; --simulate runs the same driver against the board folder's "
             "link and network simulated in Verilator. Reads DIR; writes DIR/run.json and DIR/logits.npy."),
            ["hwq run out/demo/board --port /dev/ttyUSB1", "hwq run out/demo/board --simulate --samples 100",
             "hwq run board --port /dev/ttyUSB1 --inputs x.npy --out results.json"]),
    "flow": (("Every stage in one run: train, export, check, generate, estimate, simulate (and synthesize with "
             "--synth, allocate bits with --allocate). Writes OUT/run, OUT/ir, OUT/rtl, OUT/estimate.json, "
             "OUT/sim.json, OUT/report.json and OUT/report.html."),
             ["hwq flow --out out/demo", "hwq flow --model cnn --bits 2/2 --first-last 8 --board ecp5-25f --out out/cnn",
              "hwq flow --model cnn --allocate --min-throughput 5000 --out out/alloc"]),
}


def _describe(sub):
    for name, parser in sub.choices.items():
        if name in COMMAND_HELP:
            text, examples = COMMAND_HELP[name]
            parser.description = parser.description or textwrap.fill(text, 88)
            parser.epilog = parser.epilog or "examples:\n" + "\n".join(f"  {e}" for e in examples)
            parser.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser():
    from .board import DEFAULT_BAUD

    parser = _Parser(prog="hwq", description="Quantized neural network in, verified FPGA accelerator out. "
                     "Run `hwq flow --out DIR` for the whole flow on the bundled digits dataset.")
    parser.add_argument("--version", action="version", version=f"hwq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("boards", help="list the bundled boards and their resources")
    p.set_defaults(func=cmd_boards)

    p = sub.add_parser("train", help="quantization-aware training -> run directory")
    _add_train_args(p)
    p.add_argument("--out", required=True, help="run directory to write (checkpoint.pt, metrics.json)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="run directory -> integer IR (manifest.yaml + tensors.npz)")
    p.add_argument("run", help="run directory from `hwq train`")
    p.add_argument("--out", required=True, help="IR directory to write (replaced whole; see --force)")
    p.add_argument("--force", action="store_true",
                   help="replace the output folder even if it is not empty and was not written by hwq")
    p.add_argument("--requant", choices=REQUANT_POLICIES, default="auto",
                   help="requantization per layer: auto = thresholds up to 4-bit outputs, multiply-shift above "
                        "(where it can express the layer); or one kind for all (default: auto)")
    p.add_argument("--qonnx", action="store_true",
                   help="also write model.onnx in QONNX form (Quant, BipolarQuant, MultiThreshold)")
    p.set_defaults(func=cmd_export)

    from .data import DATASETS

    p = sub.add_parser("import", help="QONNX model (Brevitas export_qonnx, qonnx, FINN) -> integer IR, checked")
    p.add_argument("model", help="the .onnx file (QONNX: Quant, BipolarQuant, MultiThreshold nodes)")
    p.add_argument("--out", required=True, help="IR directory to write (replaced whole; see --force)")
    p.add_argument("--force", action="store_true",
                   help="replace the output folder even if it is not empty and was not written by hwq")
    p.add_argument("--dataset", default="none", choices=("none", *DATASETS),
                   help="the dataset the model takes (hwq sim's default inputs, and the check's); none: give "
                        "hwq sim --inputs (default: none, random codes for the check)")
    p.add_argument("--inputs", metavar="X.npy", help="check on these input codes instead")
    p.add_argument("--samples", type=_positive, default=64, help="samples for the check (default: 64)")
    p.add_argument("--requant", choices=REQUANT_POLICIES, default="auto",
                   help="requantization per layer, as for hwq export (default: auto)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("golden", help="run the golden (integer numpy) model of an IR on input codes")
    p.add_argument("ir", help="IR directory from `hwq export`")
    p.add_argument("--inputs", required=True, help=".npy file of input codes, shape [N, *input shape] or [N, features]")
    p.add_argument("--out", required=True, help=".npy file to write (int64 logits, or the --layer's codes)")
    p.add_argument("--layer", help="write this layer's output codes instead of the logits")
    p.set_defaults(func=cmd_golden)

    p = sub.add_parser("rtl", help="IR -> Verilog (top.v, a file per layer, memory files, rtl.json) for a board")
    p.add_argument("ir", help="IR directory from `hwq export`")
    _add_board(p)
    p.add_argument("--out", required=True, help="RTL directory to write (replaced whole; see --force)")
    p.add_argument("--force", action="store_true",
                   help="replace the output folder even if it is not empty and was not written by hwq")
    p.set_defaults(func=cmd_rtl)

    p = sub.add_parser("estimate", help="resource and latency estimate of an IR on a board")
    p.add_argument("ir", help="IR directory from `hwq export`")
    _add_board(p)
    p.add_argument("--out", help="also write the estimate as JSON to this file")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("sim", help="simulate the RTL with Verilator and check it against the golden model")
    p.add_argument("ir", help="IR directory from `hwq export`")
    p.add_argument("rtl", help="RTL directory from `hwq rtl`")
    p.add_argument("--samples", type=_positive, default=100, help="samples to simulate (default: 100)")
    p.add_argument("--inputs", metavar="X.npy",
                   help="simulate these input codes instead (as `hwq golden --inputs` takes them; --samples and "
                        "--data are then ignored)")
    p.add_argument("--data", choices=DATA_SPLITS, default="test",
                   help="dataset split the samples come from; 'all' is the test split, then the training split "
                        "(default: test)")
    p.add_argument("--layer", metavar="NAME",
                   help="simulate this layer alone (its Verilog generated with its folding in RTL), on the input "
                        "codes the golden model computes for it")
    p.add_argument("--testbench", choices=TESTBENCHES, default="harness",
                   help="harness: free-running Verilog testbench, no Python while it runs (default); cocotb: "
                        "Python on every handshake (slower, an independent check)")
    p.add_argument("--simulator", choices=SIMULATORS, default="verilator",
                   help="verilator (default); icarus-2005 / icarus-2012: the harness in Icarus Verilog under "
                        "Verilog-2005 or SystemVerilog-2012 rules, to check the Verilog's portability (slow: keep "
                        "--samples small)")
    p.add_argument("--backpressure", type=float, default=0.0, metavar="P",
                   help="test the handshakes: the output is stalled with probability P each cycle and inputs "
                        "arrive after random gaps (default: 0, free-running)")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="N", help="seed of the random stalls (default: 0)")
    p.add_argument("--waves", metavar="FILE.vcd", help="also write the waveforms of every signal (VCD, for GTKWave)")
    p.add_argument("--out", help="sim.json to write (default: RTL/sim.json; with --layer, RTL/sim-LAYER.json)")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("synth", help="synthesize the RTL with yosys: resources per layer and in total")
    p.add_argument("rtl", help="RTL directory from `hwq rtl`")
    _add_board(p, folding=False)
    p.add_argument("--pnr", action="store_true", help="also place and route with nextpnr for Fmax (iCE40, ECP5)")
    p.add_argument("--jobs", type=_positive, metavar="N",
                   help="yosys runs at a time, one per layer module and one for the top (default: the machine's "
                        "cores; the counts do not depend on it)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("board", help="RTL -> a board folder: UART board top, pins, bitstream, timing")
    p.add_argument("rtl", help="RTL directory from `hwq rtl` (or a flow's OUT/rtl)")
    _add_board(p, folding=False)
    p.add_argument("--ir", help="the IR the RTL was generated from (default: the folder `ir` beside RTL)")
    p.add_argument("--out", required=True, help="board folder to write")
    p.add_argument("--baud", type=_positive, default=DEFAULT_BAUD, help=f"UART baud rate (default: {DEFAULT_BAUD})")
    p.add_argument("--no-bitstream", action="store_true",
                   help="write the board top and pin file only (no synthesis, place and route or packing)")
    p.add_argument("--force", action="store_true", help="replace OUT even if it was not written by hwq")
    p.set_defaults(func=cmd_board)

    p = sub.add_parser("run", help="send inputs to a board (or its simulation) over the UART; check the logits")
    p.add_argument("dir", help="board folder from `hwq board` (or a flow's OUT/board)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="serial port of the board (e.g. /dev/ttyUSB1) or a pyserial URL")
    where.add_argument("--simulate", action="store_true",
                       help="run the board folder's hwq_link.v in Verilator behind a simulated serial line instead")
    p.add_argument("--inputs", metavar="X.npy", help="input codes (default: the dataset's test split)")
    p.add_argument("--samples", type=_positive, default=100, help="test samples when no --inputs (default: 100)")
    p.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds to wait for a reply (default: 10)")
    p.add_argument("--out", help="results file (default: DIR/run.json, with the logits in DIR/logits.npy)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="many flow points (a grid or a list) on Ray, reused when run again")
    p.add_argument("sweep", help="sweep file (format hwq-sweep/1; see docs/formats.md and examples/sweeps/mlp-cnn.yaml)")
    p.add_argument("--out", required=True, help="results folder: sweep.json, sweep.html, points/, cache/")
    p.add_argument("--workers", type=_positive, default=None,
                   help="1: run the points one after the other in this process (no Ray); N: a local Ray with N "
                        "CPUs (default: this machine's cores)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run on an existing Ray cluster (e.g. ray://head:10001 or auto); --out must then be a "
                        "folder every node can write")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("flow", help="all stages in one run -> report.json and report.html")
    _add_train_args(p)
    _add_board(p)
    p.add_argument("--samples", type=_positive, default=None,
                   help="test samples to simulate (default: the whole test set)")
    p.add_argument("--synth", action="store_true",
                   help="also synthesize with yosys and place and route with nextpnr where the board has it "
                        "(fills the synth and fmax fields)")
    p.add_argument("--allocate", action="store_true",
                   help="after training at --bits, choose every layer's bits for the board (as `hwq allocate`), "
                        "retrain at them and build that design")
    _add_allocate_args(p)
    p.add_argument("--onnx", metavar="MODEL.onnx",
                   help="import this QONNX model (as `hwq import`; it takes --dataset's inputs) instead of training")
    p.add_argument("--bitstream", action="store_true",
                   help="also build the board folder OUT/board (as `hwq board`): the UART board top, pin file, "
                        "bitstream and timing report (iCE40, ECP5), or the Vivado script (Xilinx)")
    p.add_argument("--out", required=True, help="directory to write everything into")
    p.add_argument("--force", action="store_true",
                   help="replace OUT/ir and OUT/rtl even if they are not empty and were not written by hwq")
    p.add_argument("--config", metavar="FLOW.yaml",
                   help="take options from a YAML file (keys are the option names: `model: cnn`, `bits: 2/2`, "
                        "`synth: true`); options on the command line override it; examples in examples/")
    p.set_defaults(func=cmd_flow)

    p = sub.add_parser(
        "allocate", help="choose each layer's bits for a board (hardware-aware), retrain, export and check",
        description="Choose every layer's weight and activation bits for a board: the least accuracy cost "
                    "(per-layer sensitivity) whose design, folding included, fits the LUT budget, the board's "
                    "flip-flops, block RAMs and DSPs, and meets the speed target. Then train at those bits, "
                    "export and estimate (or synthesize with --synth); a design over budget tightens the "
                    "budget by its overshoot and is solved again.",
        epilog="example: hwq allocate out/run --board ice40-up5k --min-throughput 5000 --dry-run")
    p.add_argument("run", help="run directory from `hwq train` (its model, method, epochs and seed are used)")
    _add_board(p, folding=False)
    p.add_argument("--lut-budget", type=_positive, metavar="N",
                   help="LUTs the design may use (default: the folding's default share of the board)")
    p.add_argument("--ff-budget", type=_positive, metavar="N", help="flip-flops the design may use (default: the board's)")
    _add_allocate_args(p)
    p.add_argument("--epochs", type=_non_negative, metavar="N",
                   help="quantization-aware epochs at the chosen bits (default: the run's)")
    p.add_argument("--synth", action="store_true", help="check each round with yosys (and nextpnr) instead of "
                   "the estimate alone")
    p.add_argument("--dry-run", action="store_true",
                   help="print the chosen bits, the estimate, the uniform baselines and the frontier; train nothing")
    p.add_argument("--out", help="directory for bits.yaml, the retrained run and its IR (default: RUN/allocated)")
    p.set_defaults(func=cmd_allocate)
    _describe(sub)
    return parser


def _config_argv(argv, parser):
    """``hwq flow --config FLOW.yaml ...``: the file's options as command-line words, placed before the
    command line's own (which therefore win); checked with the same one-line errors."""
    if not argv or argv[0] != "flow":
        return argv
    rest, path = [], None
    k = 1
    while k < len(argv):
        if argv[k] == "--config" and k + 1 < len(argv):
            path, k = argv[k + 1], k + 2
        elif argv[k].startswith("--config="):
            path, k = argv[k].split("=", 1)[1], k + 1
        else:
            rest.append(argv[k])
            k += 1
    if path is None:
        return argv
    from .fileio import read_yaml

    if not Path(path).is_file():
        raise UserError(f"{path}: config file not found")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of flow options (e.g. `model: cnn`), found {type(raw).__name__}")
    flow = next(a for a in parser._actions if a.dest == "command").choices["flow"]
    actions = {s: a for a in flow._actions for s in a.option_strings}
    words = []
    for key, value in raw.items():
        flag = "--" + str(key).replace("_", "-")
        action = actions.get(flag)
        if action is None or flag in ("--config", "--help"):
            known = sorted(s[2:] for s in actions if s.startswith("--") and s not in ("--config", "--help"))
            raise UserError(f"{path}: unknown option {key!r}; flow options: {', '.join(known)}")
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise UserError(f"{path}: option {key!r}: expected true or false, found {value!r}")
            words += [flag] if value else []
        elif isinstance(value, list):
            words += [w for v in value for w in (flag, str(v))]  # e.g. fold: [conv1=4x8, conv2=8x8]
        elif value is None or isinstance(value, dict):
            raise UserError(f"{path}: option {key!r}: expected a value, found {value!r}")
        else:
            words += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return ["flow", *words, *rest]


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _config_argv(argv, parser)
    except UserError as exc:
        print(f"hwq: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.command_line = ["hwq", *argv]  # with a --config file's options written out
    if args.command is None:
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"hwq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwq: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("hwq: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM, raised as an exception so that cleanup runs on the way out: temporary folders are removed
    and tool subprocesses (yosys, Verilator, nextpnr: ``subprocess.run`` kills its child when interrupted)
    end with hwq."""


def _terminated(signum, frame):
    raise _Terminated


if __name__ == "__main__":
    sys.exit(main())
