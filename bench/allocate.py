"""Allocation benchmark: estimator-priced mixed bits against uniform bits and a BOPs-priced allocation.

    python bench/allocate.py [--models cnn mlp1d] [--boards ice40-up5k ecp5-25f] [--seeds 0 1 2]

Writes bench/results/allocate.json, docs/results/allocate.md and docs/results/allocate.png.

For each model, seed and board: a validation split (20% of the training set, stratified by the seed) is held
out of every training, the float network is trained once on the rest (the warm-up every design of that seed
starts from), its per-layer loss sensitivity measured on a calibration split of that rest, and the joint
bits-and-folding program (:class:`rtl_gen.allocation.AllocationSearch`) built. The speed target is a fixed
initiation interval per model and board (``TARGETS``). The LUT budgets are spread between the smallest design
that meets the target (any bits) and the most accurate one (``BUDGET_POINTS`` of the way). At each budget
three designs are chosen, as ``hwq allocate --finalists 3`` chooses:

- ``mixed`` (``--cost estimator``): the finalists are the 3 bit settings of least summed sensitivity within the
  budget (the estimator prices every choice, with its folding) and every uniform design that fits; the one
  most accurate on the validation split is built, except that a mixed setting must beat the best uniform
  finalist there by a one-sided sign test at ``SIGNIFICANCE`` (else that uniform design is built);
- ``bops`` (``--cost bops``): the same, with the 3 least-sensitivity bit settings within the largest
  bit-operations budget (sum of MACs x w_bits x a_bits) whose bits then fit;
- ``uniform``: every candidate W=A=b (the first layer reads the dataset's codes) that the estimate says fits,
  by validation accuracy, synthesized in that order until one fits by yosys: ``uniform_best``.

Each bit setting is trained once per seed (the method's QAT from the shared float warm-up), exported,
generated with the program's folding and synthesized with yosys; a design over budget by synthesis is
tightened by its overshoot and chosen again among the tightened program's finalists and the earlier ones not yet
built (up to ``ROUNDS`` times, as ``hwq allocate`` does). ``matched``
compares the golden-model test accuracy of each; the test set chooses nothing. ``uniform_test_max_acc`` is the
best test accuracy of the uniform designs that fit by estimate, chosen on the test set: shown for reference,
not a protocol. The allocated digits CNN on ice40-up5k is also placed with nextpnr and simulated over all
360 test images.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import load_board  # noqa: E402
from hwq.allocate import DEFAULT_FINALISTS, DEFAULT_SIGNIFICANCE, is_uniform  # noqa: E402
from hwq.errors import UserError  # noqa: E402
from hwq.fileio import write_json, write_text, write_yaml  # noqa: E402

MODELS = {
    "cnn": {"label": "digits CNN", "cfg": dict(model="cnn", dataset="digits", epochs_float=30, epochs_qat=20)},
    "mlp1d": {"label": "MNIST-1D MLP (100-100)", "cfg": dict(model="mlp", dataset="mnist1d", hidden=(100, 100),
                                                          epochs_float=60, epochs_qat=20)},
}
# speed targets: initiation interval (cycles) per model and board
TARGETS = {("cnn", "ice40-up5k"): 2400, ("cnn", "ecp5-25f"): 1200,
           ("mlp1d", "ice40-up5k"): 400, ("mlp1d", "ecp5-25f"): 250}
BUDGET_POINTS = (0.2, 0.45, 0.75)
CANDIDATES = (1, 2, 3, 4, 6, 8)
ROUNDS = 3
FINALISTS = DEFAULT_FINALISTS  # hwq allocate --finalists: the program's best bits, then validation decides
SIGNIFICANCE = DEFAULT_SIGNIFICANCE  # hwq allocate --significance: a mixed finalist must beat uniform bits


class Bench:
    def __init__(self, work, log):
        self.work, self.log = Path(work), log
        self.trained = {}   # (model, seed, bits key) -> (run dir, test acc, IR, validation acc, its correctness)
        self.synthesized = {}
        self.names = {}

    def train(self, model, seed, cfg, data, validation, float_state, w_bits, a_bits):
        from hwq.allocate import _golden_accuracy, golden_correct
        from hwq.export import export_run
        from hwq.train import BITS_FORMAT, train

        key = (model, seed, tuple(w_bits), tuple(a_bits))
        if key not in self.trained:
            tag = "-".join(f"{w}.{a}" for w, a in zip(w_bits, a_bits, strict=True))
            d = self.work / f"{model}-s{seed}-{tag}"
            names = list(self.names[model])
            write_yaml(d / "bits.yaml", {"format": BITS_FORMAT, "layers": {
                n: {"w_bits": w, "a_bits": a} for n, w, a in zip(names, w_bits, a_bits, strict=True)}})
            t = time.perf_counter()
            train(replace(cfg, bits_file=str(d / "bits.yaml"), first_last="same"), d / "run",
                  float_state=float_state, data=data, show_progress=False)
            ir = export_run(d / "run", d / "ir")
            acc, correct = _golden_accuracy(ir, data.x_test, data.y_test), golden_correct(ir, *validation)
            val = float(correct.mean())
            self.log(f"    trained W{list(w_bits)} A{list(a_bits)}: validation {val:.4f}, test {acc:.4f} "
                     f"({time.perf_counter() - t:.0f} s)")
            self.trained[key] = (d, acc, ir, val, correct)
        return self.trained[key]

    def synth(self, d, ir, board, alloc, budget):
        from hwq.allocate import _real_design
        from hwq.synth import synth_rtl
        from rtl_gen.emit import generate_rtl

        folding, est, _ = _real_design(ir, board, alloc, budget)
        key = (str(d), board.name, json.dumps(folding.to_json(), sort_keys=True))
        if key not in self.synthesized:
            rtl = d / f"rtl-{board.name}-{len(self.synthesized)}"
            generate_rtl(ir, board, rtl, folding=folding)
            t = time.perf_counter()
            syn = synth_rtl(rtl, board, pnr=False, show_progress=False)
            self.synthesized[key] = {"rtl": rtl, "est": est, "syn": syn, "folding": folding,
                                     "seconds": time.perf_counter() - t}
        return self.synthesized[key]


def _fits(rec, budget):
    return bool(rec["syn"]["fits"]) and rec["syn"]["total"]["lut"] <= budget


def run_point(bench, model, seed, board, search, cfg, data, validation, float_state, limits_of, interval, budget):
    """One (model, seed, board, budget): the estimator's, the BOPs and the uniform designs, each chosen among
    its finalists by validation accuracy, trained and synthesized."""
    from hwq.allocate import _uniform, finalist_designs, rank_by_validation, round_finalists

    def trained(a):
        return bench.train(model, seed, cfg, data, validation, float_state, a.w_bits, a.a_bits)

    input_bits = search.boundary_bits[0][0]
    out = {"lut_budget": round(budget)}
    for name, cost in (("mixed", "estimator"), ("bops", "bops")):
        program_budget, out[name], earlier, missed = budget, None, [], set()
        for r in range(1, ROUNDS + 1):
            limits, cm, cl = limits_of(program_budget)
            uniform = _uniform(search, CANDIDATES, input_bits, limits, cm, cl, interval, None)
            designs = round_finalists(finalist_designs(search, cost, FINALISTS, limits, cm, cl, interval, None,
                                                       uniform, log=lambda *_: None), earlier, missed)
            if not designs:
                break
            earlier = designs
            entries = [{"label": label, "alloc": a, "est_lut": a.totals["lut"], "val_acc": trained(a)[3],
                        "val_correct": trained(a)[4], "uniform": is_uniform(a.w_bits, a.a_bits)}
                       for label, a in designs]
            best = rank_by_validation(entries, SIGNIFICANCE)[0]
            alloc = best["alloc"]
            d, acc, ir, val = trained(alloc)[:4]
            rec = bench.synth(d, ir, board, alloc, budget)
            out[name] = {"w_bits": alloc.w_bits, "a_bits": alloc.a_bits, "acc": acc, "val_acc": val,
                         "label": best["label"], "rounds": r, "p_over_uniform": best.get("p_over_uniform"),
                         "finalists": [{"label": e["label"], "w_bits": e["alloc"].w_bits, "a_bits": e["alloc"].a_bits,
                                        "val_acc": e["val_acc"], "acc": trained(e["alloc"])[1],
                                        **({"p_over_uniform": e["p_over_uniform"]} if "p_over_uniform" in e else {})}
                                       for e in entries],
                         "est_lut": rec["est"]["totals"]["lut"], "synth_lut": rec["syn"]["total"]["lut"],
                         "synth": rec["syn"]["total"], "fits_by_synthesis": _fits(rec, budget),
                         "interval": rec["est"]["initiation_interval_cycles"], "rtl": str(rec["rtl"])}
            bench.log(f"  {name} round {r}: {best['label']} W{alloc.w_bits} A{alloc.a_bits} validation {val:.4f} "
                      f"test {acc:.4f}, est {out[name]['est_lut']}, yosys {out[name]['synth_lut']} (budget {budget:.0f})")
            if out[name]["fits_by_synthesis"]:
                break
            missed.add((tuple(alloc.w_bits), tuple(alloc.a_bits)))
            program_budget = min(program_budget, alloc.totals["lut"]) * min(0.98, budget / out[name]["synth_lut"])
    # uniform bits: those that fit by estimate, by validation accuracy; synthesized until one fits by yosys
    limits, cm, cl = limits_of(budget)
    fitting = {b: a for b, a in _uniform(search, CANDIDATES, input_bits, limits, cm, cl, interval, None).items() if a}
    uniform = [{"bits": b, "fits_estimate": b in fitting} for b in sorted(CANDIDATES, reverse=True)]
    entries = [{"bits": b, "alloc": a, "est_lut": a.totals["lut"], "val_acc": trained(a)[3]} for b, a in fitting.items()]
    chosen = None
    for e in rank_by_validation(entries):
        d, acc, ir, val = trained(e["alloc"])[:4]
        u = next(u for u in uniform if u["bits"] == e["bits"])
        u.update(acc=acc, val_acc=val, est_lut=e["est_lut"])
        if chosen is None:
            rec = bench.synth(d, ir, board, e["alloc"], budget)
            u.update(synth_lut=rec["syn"]["total"]["lut"], fits_by_synthesis=_fits(rec, budget),
                     interval=rec["est"]["initiation_interval_cycles"])
            if u["fits_by_synthesis"]:
                chosen = u["chosen"] = True
            bench.log(f"  uniform W{e['bits']}/A{e['bits']}: validation {val:.4f} test {acc:.4f}, yosys {u['synth_lut']}")
    out["uniform"] = uniform
    return out


def run_model_seed(bench, model, seed, boards):
    from hwq.allocate import VALIDATION_FRACTION, _acc_bits_fn
    from hwq.data import holdout, load_dataset
    from hwq.models import QuantNet, layer_names
    from hwq.sensitivity import layer_sensitivity
    from hwq.train import TrainConfig, _net_config, pretrain
    from rtl_gen.allocation import AllocationSearch
    from rtl_gen.folding import board_limits

    cfg = TrainConfig(**MODELS[model]["cfg"], seed=seed)
    data, validation = holdout(load_dataset(cfg.dataset), VALIDATION_FRACTION, seed=seed)
    bench.names[model] = layer_names(cfg.model, len(cfg.hidden))
    t = time.perf_counter()
    float_state = pretrain(cfg, data)
    net = QuantNet(_net_config(cfg, data))
    net.load_state_dict(float_state[0], strict=False)
    sens = layer_sensitivity(net, data, CANDIDATES, "loss", seed=seed)
    bench.log(f"{model} seed {seed}: float {float_state[1]:.4f}, sensitivity in {time.perf_counter() - t:.0f} s")
    from hwq.export import export_model

    shapes = export_model(net, dataset=cfg.dataset, method=cfg.method)
    rows = []
    for board_name in boards:
        board = load_board(board_name)
        interval = TARGETS[(model, board_name)]
        search = AllocationSearch(shapes, board.family, CANDIDATES, _acc_bits_fn(net, shapes.input_bits),
                                  sens.weights, sens.acts, bram_ok=board.bram > 0, dsp_ok=board.dsp > 0)

        def limits_of(budget, board=board):
            limits, cm, cl = board_limits(board, budget)
            return limits, cm, cl

        full, cm, cl = limits_of(board.lut)  # no LUT budget beyond the board (cells still bounded on iCE40)
        smallest = search.smallest(interval_limit=interval, limits={"bram": board.bram, "dsp": board.dsp})
        richest = search.best(full, interval_limit=interval, cell_model=cm, cell_limit=cl)
        if smallest is None or richest is None:
            bench.log(f"{model} on {board_name}: nothing meets interval {interval}")
            rows.append({"model": model, "board": board_name, "seed": seed, "error": "speed target unreachable"})
            continue
        lo, hi = smallest.totals["lut"], richest.totals["lut"]
        bench.log(f"{model} on {board_name} (interval <= {interval}): LUT {lo} (smallest) .. {hi} (most accurate)")
        for frac in BUDGET_POINTS:
            budget = lo + frac * (hi - lo)
            point = run_point(bench, model, seed, board, search, cfg, data, validation, float_state, limits_of,
                              interval, budget)
            rows.append({"model": model, "data": cfg.dataset, "board": board_name, "seed": seed,
                         "interval_limit": interval, "float_acc": float_state[1], **point})
    return rows


def matched(rows):
    out = []
    for r in rows:
        if "error" in r:
            continue
        best = next((u for u in r["uniform"] if u.get("chosen")), None)
        trained = [u for u in r["uniform"] if "acc" in u]
        m, b = r["mixed"], r["bops"]
        out.append({"data": r["data"], "model": r["model"], "board": r["board"], "seed": r["seed"],
                    "lut_budget": r["lut_budget"], "interval_limit": r["interval_limit"],
                    "mixed_acc": m["acc"] if m else None,
                    "mixed_bits": {"w": m["w_bits"], "a": m["a_bits"]} if m else None,
                    "mixed_fits_by_synthesis": m["fits_by_synthesis"] if m else None,
                    "bops_acc": b["acc"] if b else None,
                    "bops_bits": {"w": b["w_bits"], "a": b["a_bits"]} if b else None,
                    "uniform_best_acc": best["acc"] if best else None,
                    "uniform_best_bits": best["bits"] if best else None,
                    "mixed_val_acc": m["val_acc"] if m else None, "bops_val_acc": b["val_acc"] if b else None,
                    "uniform_best_val_acc": best["val_acc"] if best else None,
                    "mixed_choice": m["label"] if m else None, "bops_choice": b["label"] if b else None,
                    "mixed_p_over_uniform": m.get("p_over_uniform") if m else None,
                    "uniform_test_max_acc": max((u["acc"] for u in trained), default=None),
                    "synth_lut": m["synth_lut"] if m else None, "est_lut": m["est_lut"] if m else None,
                    "mixed_interval": m["interval"] if m else None,
                    "bops_synth_lut": b["synth_lut"] if b else None, "bops_interval": b["interval"] if b else None,
                    "uniform_best_synth_lut": best["synth_lut"] if best else None,
                    "uniform_best_interval": best.get("interval") if best else None})
    return out


def check_cnn(bench, rows):
    """The allocated digits CNN for ice40-up5k (the middle of its rows: with 3 seeds, seed 1's middle budget):
    nextpnr placement and simulation of all 360 test images, bit-exact, cycles equal to the estimate."""
    from hwq.ir import load_ir
    from hwq.synth import synth_rtl
    from sim.runner import simulate

    cands = [r for r in rows if r["model"] == "cnn" and r["board"] == "ice40-up5k" and r.get("mixed")]
    if not cands:
        return None
    r = cands[len(cands) // 2]
    rtl = Path(r["mixed"]["rtl"])
    ir = load_ir(rtl.parent / "ir")
    board = load_board("ice40-up5k")
    syn = synth_rtl(rtl, board, pnr=True, show_progress=False)
    sim = simulate(ir, rtl, samples=360, data="test")
    pnr = syn["pnr"] or {}
    return {"lut_budget": r["lut_budget"], "seed": r["seed"], "bits": {"w": r["mixed"]["w_bits"], "a": r["mixed"]["a_bits"]},
            "placed": pnr.get("fmax_mhz") is not None, "fmax_mhz": pnr.get("fmax_mhz"), "pnr_error": pnr.get("error"),
            "samples": sim["samples"], "bit_exact": sim["bit_exact"],
            "cycles_equal": sim["latency_cycles"] == sim["latency_cycles_estimate"]
            and sim["initiation_interval_cycles"] == sim["initiation_interval_cycles_estimate"]}


def summary(match, rows):
    margins = [m["mixed_acc"] - m["bops_acc"] for m in match if m["mixed_acc"] is not None and m["bops_acc"] is not None]
    vs_uniform = [m["mixed_acc"] - m["uniform_best_acc"] for m in match
                  if m["mixed_acc"] is not None and m["uniform_best_acc"] is not None]
    ice = [r["mixed"]["fits_by_synthesis"] for r in rows if r.get("board") == "ice40-up5k" and r.get("mixed")]
    oracle = [m["mixed_acc"] - m["uniform_test_max_acc"] for m in match
              if m["mixed_acc"] is not None and m["uniform_test_max_acc"] is not None]
    # per budget point (the i-th budget of a model and board), the accuracies' mean over the seeds
    by_point = {}
    for key in {(m["model"], m["board"], m["seed"]) for m in match}:
        rows = sorted((m for m in match if (m["model"], m["board"], m["seed"]) == key), key=lambda m: m["lut_budget"])
        for i, m in enumerate(rows):
            if m["mixed_acc"] is not None and m["uniform_best_acc"] is not None:
                by_point.setdefault((key[0], key[1], i), []).append(m["mixed_acc"] - m["uniform_best_acc"])
    means = {k: float(np.mean(v)) for k, v in by_point.items()}
    return {"points": len(match),
            "budget_points": len(means),
            "mixed_at_least_uniform_mean_over_seeds": all(v >= -1e-12 for v in means.values()) if means else None,
            "mixed_minus_uniform_mean_over_seeds_min": round(min(means.values()), 4) if means else None,
            "mixed_at_least_uniform": all(v >= 0 for v in vs_uniform) if vs_uniform else None,
            "mixed_at_least_uniform_points": sum(v >= 0 for v in vs_uniform),
            "mixed_minus_uniform_min": round(min(vs_uniform), 4) if vs_uniform else None,
            "mixed_minus_uniform_mean": round(float(np.mean(vs_uniform)), 4) if vs_uniform else None,
            "mixed_above_uniform_points": sum(v > 0 for v in vs_uniform),
            "mixed_is_uniform_points": sum(m["mixed_bits"] is not None and is_uniform(m["mixed_bits"]["w"], m["mixed_bits"]["a"])
                                           for m in match),
            "mixed_at_least_uniform_test_max_points": sum(v >= 0 for v in oracle),
            "mixed_minus_bops_mean": round(float(np.mean(margins)), 4) if margins else None,
            "mixed_minus_bops_std": round(float(np.std(margins)), 4) if margins else None,
            "fits_by_synthesis": all(ice) if ice else None}


def plot(match, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(m["model"], m["board"]) for m in match})
    cols = max(1, len(keys))
    fig, axes = plt.subplots(2, cols, figsize=(4.5 * cols, 7), squeeze=False)
    series = (("mixed", "mixed (estimator)", "o"), ("bops", "mixed (BOPs)", "s"), ("uniform_best", "best uniform", "^"))
    for col, key in enumerate(keys):
        pts = [m for m in match if (m["model"], m["board"]) == key]
        for row, (axis, label_x) in enumerate((("synth_lut", "LUTs (yosys)"),
                                               ("interval", "initiation interval (cycles)"))):
            ax = axes[row][col]
            for prefix, label, marker in series:
                x_key = f"{prefix}_{axis}" if (prefix, axis) != ("mixed", "synth_lut") else "synth_lut"
                xy = [(m.get(x_key), m[f"{prefix}_acc"]) for m in pts
                      if m.get(x_key) is not None and m[f"{prefix}_acc"] is not None]
                if xy:
                    ax.scatter(*zip(*xy, strict=True), label=label, marker=marker)
            ax.set_title(f"{key[0]} on {key[1]}")
            ax.set_xlabel(label_x)
            ax.set_ylabel("test accuracy (golden model)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _command(args):
    return (f"python bench/allocate.py --models {' '.join(args.models)} --boards {' '.join(args.boards)} "
            f"--seeds {' '.join(map(str, args.seeds))}" + (" --append" if args.append else ""))


def _acc(value):
    return "-" if value is None else f"{value:.4f}"


def _choice(m):
    p = m.get("mixed_p_over_uniform")
    return m["mixed_choice"] if p is None else f"{m['mixed_choice']} (p {p:.2g})"


def markdown(res, _args):
    s = res["summary"]
    lines = ["# Hardware-aware bit allocation", "",
             "Made by " + ", then ".join(f"`{c}`" for c in res["runs"]) + "; raw numbers in "
             "`bench/results/allocate.json`.", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             (f"Summary: {s['points']} budget points; the estimator-priced allocation is at least as accurate as the "
              f"best uniform design fitting by synthesis at {s['mixed_at_least_uniform_points']} of them (all: "
              f"{s['mixed_at_least_uniform']}; worst margin {s['mixed_minus_uniform_min']}, mean "
              f"{s['mixed_minus_uniform_mean']}; more accurate at {s.get('mixed_above_uniform_points', '-')}; "
              f"uniform bits were its choice at {s['mixed_is_uniform_points']}); averaged over the seeds at each of the {s['budget_points']} budget points "
              f"(model, board, i-th budget), at least as accurate at all: {s['mixed_at_least_uniform_mean_over_seeds']} "
              f"(worst {s['mixed_minus_uniform_mean_over_seeds_min']}); margin over the BOPs allocation: mean {s['mixed_minus_bops_mean']}, "
              f"std {s['mixed_minus_bops_std']}; every ice40-up5k allocation fits by yosys: {s['fits_by_synthesis']}. "
              f"Against the uniform design with the best *test* accuracy (chosen on the test set, for reference): "
              f"at least as accurate at {s['mixed_at_least_uniform_test_max_points']}."), "",
             ("Accuracies are on the test set, the validation accuracy (which chose) in brackets; a mixed choice "
              "that beat the best uniform finalist on validation shows the sign test's p."), "",
             ("| data | board | seed | interval | LUT budget | mixed acc | mixed bits (W / A) | finalist | yosys LUT | "
              "est LUT | BOPs acc | best uniform acc (bits) |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in res["matched"]:
        bits = f"{m['mixed_bits']['w']} / {m['mixed_bits']['a']}" if m["mixed_bits"] else "-"
        lines.append(f"| {m['data']} | {m['board']} | {m['seed']} | {m['interval_limit']} | {m['lut_budget']} | "
                     f"{_acc(m['mixed_acc'])} ({_acc(m['mixed_val_acc'])}) | {bits} | {_choice(m)} | "
                     f"{m['synth_lut']} | {m['est_lut']} | {_acc(m['bops_acc'])} ({_acc(m['bops_val_acc'])}) | "
                     f"{_acc(m['uniform_best_acc'])} ({_acc(m['uniform_best_val_acc'])}, W{m['uniform_best_bits']}) |")
    if res.get("cnn_check"):
        c = res["cnn_check"]
        lines += ["", (f"Allocated digits CNN on ice40-up5k (budget {c['lut_budget']}): placed {c['placed']} "
                      f"(Fmax {c['fmax_mhz']} MHz), {c['samples']} test images bit-exact {c['bit_exact']}, cycles "
                      f"equal {c['cycles_equal']}.")]
    if res.get("partial"):
        lines += ["", "**Partial**: the run was cut short; the rows above are the points finished so far."]
    lines += ["", "![accuracy against LUTs](allocate.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--boards", nargs="+", default=["ice40-up5k", "ecp5-25f"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "allocate.json"))
    ap.add_argument("--markdown", default=str(ROOT / "docs" / "results" / "allocate.md"))
    ap.add_argument("--work", help="keep the runs, IRs and RTL here (default: a temporary directory)")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of --out for the (model, board, seed) this run does not redo")
    ap.add_argument("--replot", action="store_true", help="only remake the markdown and the plot from --out")
    ap.add_argument("--check-cnn", action="store_true", help="with --replot: place and simulate the allocated CNN")
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                    help="with --replot: add the rows (and runs) of these results files, e.g. from runs made in parallel")
    args = ap.parse_args(argv)
    if args.replot:
        res = json.loads(Path(args.out).read_text())
        for other in map(json.loads, (Path(f).read_text() for f in args.merge)):
            res["rows"] += other["rows"]
            res["runs"] += other["runs"]
            res["cnn_check"] = res.get("cnn_check") or other.get("cnn_check")
            res["seconds"] = max(res["seconds"], other["seconds"])
        if args.check_cnn:  # the check again, on the RTL the rows point to (their --work must still exist)
            res["cnn_check"] = check_cnn(None, res["rows"])
        _write(args, res)
        return
    for m in args.models:
        for b in args.boards:
            if (m, b) not in TARGETS:
                ap.error(f"no speed target for {m} on {b} (TARGETS)")
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="hwq-alloc-") as tmp:
        bench = Bench(args.work or tmp, log)
        rows = []
        args.runs, old_check = [_command(args)], None
        if args.append and Path(args.out).is_file():
            old = json.loads(Path(args.out).read_text())
            old_check = old.get("cnn_check")
            redo = {(m, b, sd) for m in args.models for b in args.boards for sd in args.seeds}
            rows = [r for r in old["rows"] if (r.get("model"), r.get("board"), r.get("seed")) not in redo]
            args.runs = old.get("runs", []) + args.runs
        for model in args.models:
            for seed in args.seeds:
                try:
                    rows += run_model_seed(bench, model, seed, args.boards)
                except UserError as exc:
                    rows.append({"model": model, "seed": seed, "error": str(exc)})
                write_results(args, rows, None, t0, partial=True)  # what is done so far, if the run is cut short
        check = check_cnn(bench, rows) if "cnn" in args.models and "ice40-up5k" in args.boards else None
        check = check or old_check
    write_results(args, rows, check, t0)


def write_results(args, rows, check, t0, *, partial=False):
    res = {"candidates": list(CANDIDATES), "targets": {f"{m}@{b}": t for (m, b), t in TARGETS.items()},
           "significance": SIGNIFICANCE,
           "partial": partial, "runs": args.runs, "rows": rows, "cnn_check": check,
           "seconds": round(time.perf_counter() - t0, 1)}
    _write(args, res)
    if not partial:
        print(json.dumps(res["summary"], indent=1))
        print(f"wrote {args.out}, {args.markdown}, {Path(args.markdown).with_suffix('.png')}")


def _write(args, res):
    """Derive ``matched`` and ``summary`` from the rows and the CNN check, then write the JSON, the plot and
    the markdown (a run and ``--replot`` alike)."""
    res["matched"] = matched(res["rows"])
    res["summary"] = summary(res["matched"], res["rows"])
    c = res.get("cnn_check")
    res["summary"]["cnn_placed_bit_exact"] = bool(c["placed"] and c["bit_exact"] and c["cycles_equal"]) if c else None
    write_json(args.out, res)
    plot(res["matched"], Path(args.markdown).with_suffix(".png"))
    write_text(args.markdown, markdown(res, args))


if __name__ == "__main__":
    main()
