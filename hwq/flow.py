"""``hwq flow``: train, export, check, generate RTL, estimate, simulate; write report.json and report.html."""

import html
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from boards import RESOURCES

from . import golden
from .data import load_dataset
from .errors import UserError
from .estimate import estimate
from .export import export_model, export_run, multiply_shift_params
from .fileio import write_json, write_text
from .train import TrainConfig, load_run, train

__all__ = ["REPORT_FORMAT", "check_fits_first", "check_model_integer", "check_torch_integer", "run_flow"]

REPORT_FORMAT = "hwq-report/1"
FLOW_RESULTS = ("report.json", "report.html", "sim.json", "estimate.json")  # synthesis writes into rtl/


def check_model_integer(model, ir, inputs):
    """Compare a model's PyTorch integer path with the golden model on ``inputs``, and count where
    fake-quant predictions differ from the golden model's, with the reason.

    The integer path applies the IR's multiply-shift layers with constants derived afresh from the
    model (the same choice of layers), so a corrupted IR tensor shows up as a difference. Returns a
    dict: ``equal`` (every logit of every sample), ``fake_quant_mismatches`` and, of those,
    ``logit_ties`` (the fake-quant prediction has the golden maximum logit too; argmax picks the
    first), ``multiply_shift_rounding`` (the float requantization, which thresholds reproduce, gives
    the fake-quant prediction: the difference comes from a multiply-shift's rounding-boundary
    deviations) and ``unexplained`` (the rest; should be 0).
    """
    x = torch.from_numpy(np.asarray(inputs, dtype=np.int64))
    ms_layers = {la.name: "multiply_shift" for la in ir.layers if la.requant_kind == "multiply_shift"}
    params = multiply_shift_params(export_model(model, requant=ms_layers)) if ms_layers else {}
    torch_int = model.integer_forward(x, multiply_shift=params).numpy()
    gold = golden.run(ir, inputs)
    equal = torch_int.shape == gold.shape and bool((torch_int == gold).all())
    with torch.no_grad():
        fq_pred = model(x).argmax(1).numpy()
    differ, tie = golden.prediction_disagreements(fq_pred, gold)
    # Only a fit that deviates from its thresholds somewhere can explain a difference by rounding.
    deviates = any((la.deviations or 0) > 0 for la in ir.layers if la.requant_kind == "multiply_shift")
    float_requant = model.integer_forward(x).numpy().argmax(1) if deviates else gold.argmax(1)
    rounding = differ & ~tie & (float_requant == fq_pred)
    return {"equal": equal, "fake_quant_mismatches": int(differ.sum()), "logit_ties": int(tie.sum()),
            "multiply_shift_rounding": int(rounding.sum()), "unexplained": int((differ & ~tie & ~rounding).sum())}


def check_torch_integer(run_dir, ir, inputs):
    """:func:`check_model_integer` for a run directory."""
    model, _ = load_run(run_dir)
    return check_model_integer(model, ir, inputs)


def _explained(check):
    return (f"{check['logit_ties']} logit ties, {check['multiply_shift_rounding']} multiply-shift rounding, "
            f"{check['unexplained']} unexplained")


def _report_layers(ir, rtl_info, est, sim, syn):
    rows = []
    syn_layers = syn["layers"] if syn else [None] * len(ir.layers)
    for layer, rl, el, sl, yl in zip(ir.layers, rtl_info["layers"], est["layers"], sim["layers"], syn_layers,
                                     strict=True):
        rows.append({
            "name": layer.name, "op": layer.op, "engine": rl["engine"],
            "w_bits": layer.w_bits, "a_bits": layer.a_bits, "out_bits": layer.out_bits,
            "acc_bits": layer.acc_bits, "array": rl.get("array"), "dsp": rl.get("dsp_blocks", 0),
            "memories": rl.get("memories", []),
            "estimate": el["estimate"],
            "synth": {k: yl[k] for k in RESOURCES} if yl else None,
            "sim": {"cycles": sl["cycles"]},
        })
    return rows


def _untrained_ir(cfg, data):
    """The IR of ``cfg``'s network with untrained weights (quantizers initialised, no epochs): its shapes,
    bits and accumulator widths are the trained network's, which is what fitting a board depends on."""
    with tempfile.TemporaryDirectory(prefix="hwq-fitcheck-") as tmp:
        train(replace(cfg, epochs_float=0, epochs_qat=0, sinareq_learn_bits=False), Path(tmp) / "run",
              show_progress=False, data=data)
        model, _ = load_run(Path(tmp) / "run")
    return export_model(model, dataset=cfg.dataset, method=cfg.method)


def check_fits_first(cfg, board, *, lut_budget=None, fold=None):
    """Before training: refuse a network that no folding fits on ``board`` (the same search ``hwq rtl`` runs,
    on the untrained network), naming the boards it fits and the uniform bits that fit this board."""
    from boards import known_boards, load_board
    from rtl_gen.folding import choose_folding

    data = load_dataset(cfg.dataset)
    ir = _untrained_ir(cfg, data)
    try:
        choose_folding(ir, board, lut_budget=lut_budget, fold=fold)
        return
    except UserError as exc:
        reason = str(exc)
    fits_on = []
    for name in known_boards():
        other = load_board(name)
        if other.name != board.name and other.family in ("ice40", "ecp5", "xilinx7"):
            try:
                choose_folding(ir, other, fold=fold)
                fits_on.append((other.lut, name))
            except UserError:
                pass
    bits = None
    if cfg.bits_file is None and cfg.w_bits == cfg.a_bits:
        for b in range(cfg.w_bits - 1, 0, -1):
            try:
                choose_folding(_untrained_ir(replace(cfg, w_bits=b, a_bits=b), data), board, lut_budget=lut_budget,
                               fold=fold)
                bits = b
                break
            except UserError:
                continue
    hints = ["raise --lut-budget"] if lut_budget is not None else []
    if bits is not None:
        hints.append(f"--bits {bits}/{bits} fits {board.name}")
    if fits_on:
        hints.append(f"at these bits it fits {', '.join(n for _, n in sorted(fits_on)[:3])}")
    hints.append("or try --allocate to choose each layer's bits for this board")
    raise UserError(f"checked before training: {reason.split(': raise')[0]}; {'; '.join(hints)}")


def run_flow(out_dir, *, board, train_cfg: TrainConfig, samples=None, fold=None, lut_budget=None,
             synth=False, log=print, show_progress=True, allocate_options=None, force=False):
    """Run every stage into ``out_dir``; return the report dict (also written to report.json).

    The previous run's report and stage results in ``out_dir`` are removed before the first stage, so
    a flow that is interrupted never leaves a report that describes other files. ``force``: replace
    ``ir/`` and ``rtl/`` folders that hwq did not write.

    ``allocate_options``: after training, allocate the bits for ``board`` (:func:`hwq.allocate.allocate`'s
    keyword arguments) and build the allocated design (its retrained run in ``out_dir/allocated``)."""
    from rtl_gen.emit import generate_rtl
    from sim.runner import simulate

    out = Path(out_dir)
    timings = {}
    for name in FLOW_RESULTS:
        (out / name).unlink(missing_ok=True)
    if allocate_options is None:
        check_fits_first(train_cfg, board, lut_budget=lut_budget, fold=fold)

    t = time.perf_counter()
    metrics = train(train_cfg, out / "run", show_progress=show_progress)
    timings["train"] = round(time.perf_counter() - t, 3)
    log(f"trained {train_cfg.model} ({train_cfg.method}, W{train_cfg.w_bits}/A{train_cfg.a_bits}) -> {out / 'run'}  "
        f"float {metrics['accuracy']['float']:.4f}, fake-quant {metrics['accuracy']['fake_quant']:.4f}")

    run_dir, allocation, folding = out / "run", None, None
    if allocate_options is not None:
        from .allocate import allocate

        t = time.perf_counter()
        allocation = allocate(out / "run", board, out_dir=out / "allocated", lut_budget=lut_budget, log=log,
                              show_progress=show_progress, **allocate_options)
        timings["allocate"] = round(time.perf_counter() - t, 3)
        run_dir, folding = out / "allocated" / "run", allocation["final"]["folding"]
        metrics = json.loads((run_dir / "metrics.json").read_text())

    t = time.perf_counter()
    ir = export_run(run_dir, out / "ir", force=force)
    timings["export"] = round(time.perf_counter() - t, 3)
    data = load_dataset(ir.dataset, input_bits=ir.input_bits)
    gold_out = golden.run(ir, data.x_test)
    acc_golden = float((gold_out.argmax(1) == data.y_test).mean())
    check = check_torch_integer(run_dir, ir, data.x_test)
    log(f"exported IR -> {out / 'ir'}  golden {acc_golden:.4f}, torch integer path "
        f"{'equal' if check['equal'] else 'DIFFERENT'}, fake-quant prediction mismatches "
        f"{check['fake_quant_mismatches']} ({_explained(check)})")

    t = time.perf_counter()
    rtl_info = generate_rtl(ir, board, out / "rtl", fold=fold, lut_budget=lut_budget, folding=folding, force=force)
    timings["rtl"] = round(time.perf_counter() - t, 3)
    log(f"generated Verilog -> {out / 'rtl'}/ (top.v, a file per layer, memory files in mem/)")

    est = estimate(ir, board, folding=rtl_info["folding"])
    write_json(out / "estimate.json", est)

    n = len(data.x_test) if samples is None else min(samples, len(data.x_test))
    if samples is not None and samples > n:
        log(f"--samples {samples}: the {ir.dataset} test set has {n} samples; simulating all of them")
    log(f"simulating {n} samples with Verilator (a design's first build takes 10-20 s) ...")
    t = time.perf_counter()
    sim = simulate(ir, out / "rtl", inputs=data.x_test[:n], labels=data.y_test[:n])
    timings["sim"] = round(time.perf_counter() - t, 3)
    write_json(out / "sim.json", sim)
    log(f"simulated {n} samples -> {out / 'sim.json'}  "
        f"{'bit-exact' if sim['bit_exact'] else 'MISMATCH ' + str(sim['first_mismatch'])}")

    syn = None
    timings["synth"] = None
    if synth:
        from .synth import synth_rtl

        t = time.perf_counter()
        syn = synth_rtl(out / "rtl", board, pnr=True, show_progress=show_progress)
        timings["synth"] = round(time.perf_counter() - t, 3)
        pnr = syn["pnr"]
        if pnr and pnr.get("error"):
            fmax = f"; place and route FAILED: {pnr['error']}"
        else:
            fmax = f", Fmax {pnr['fmax_mhz']} MHz ({pnr['tool']})" if pnr else ""
        log(f"synthesized with yosys -> {out / 'rtl' / 'synth.json'}  {syn['total']['lut']} LUT, "
            f"{syn['total']['ff']} FF{fmax}")

    ii = sim["initiation_interval_cycles"]
    report = {
        "format": REPORT_FORMAT,
        "board": board.name, "model": ir.model, "dataset": ir.dataset, "method": ir.method,
        "accuracy": {
            "float": metrics["accuracy"]["float"],
            "fake_quant": metrics["accuracy"]["fake_quant"],
            "golden": acc_golden,
            "golden_samples": len(data.x_test),
            "golden_on_rtl_samples": sim["accuracy_golden"],
            "rtl": sim["accuracy"],
            "rtl_samples": n,
        },
        "bit_exact": {
            "golden_vs_torch_integer": check["equal"],
            "rtl_vs_golden": sim["bit_exact"],
            "samples": n,
            "first_mismatch": sim["first_mismatch"],
            "fake_quant_prediction_mismatches": check["fake_quant_mismatches"],
            "fake_quant_mismatches_logit_ties": check["logit_ties"],
            "fake_quant_mismatches_multiply_shift_rounding": check["multiply_shift_rounding"],
            "fake_quant_mismatches_unexplained": check["unexplained"],
        },
        "layers": _report_layers(ir, rtl_info, est, sim, syn),
        "top": {"estimate": est["top"], "synth": syn["top"] if syn else None},
        "folding": rtl_info["folding"],
        "buffers": rtl_info["buffers"] + rtl_info["skips"],
        "totals": {
            "estimate": est["totals"],
            "synth": syn["total"] if syn else None,
            "fmax_mhz": syn["pnr"]["fmax_mhz"] if syn and syn["pnr"] else None,
            "pnr": syn["pnr"] if syn else None,
            "fits": syn["fits"] if syn else est["fits"],
            "latency_cycles_sim": sim["latency_cycles"],
            "latency_cycles_estimate": est["latency_cycles"],
            "initiation_interval_cycles_sim": ii,
            "clock_mhz": board.clock_mhz,
            "throughput_inferences_per_s": round(board.clock_mhz * 1e6 / ii, 1) if ii else None,
        },
        "timings_s": timings,
        "allocation": None if allocation is None else {
            "bits": allocation["final"]["bits"], "meets_budget": allocation["final"]["meets_budget"],
            "limits": allocation["limits"], "cost": allocation["cost"], "sensitivity": allocation["sensitivity"],
            "rounds": len(allocation["rounds"]), "frontier": allocation["frontier"]},
    }
    write_json(out / "report.json", report)
    write_text(out / "report.html", render_html(report))
    return report


def _array_text(array):
    return f"{array[0]}x{array[1]}" if array else "-"


def _or_dash(value):
    return "-" if value is None else str(value)


def _bits_text(layer):
    """W/A/out bits of a report layer; "-" where a layer has none (no weights: maxpool, add, flatten)."""
    return "/".join(_or_dash(layer[k]) for k in ("w_bits", "a_bits", "out_bits"))


def render_html(report):
    """A self-contained HTML page with the report's figures."""
    e = html.escape
    acc, be, tot = report["accuracy"], report["bit_exact"], report["totals"]
    syn = lambda la, k: la["synth"][k] if la["synth"] else "-"  # noqa: E731
    rows = "".join(
        f"<tr><td>{e(la['name'])}</td><td>{e(la['engine'])}</td><td>{_bits_text(la)}</td>"
        f"<td>{_or_dash(la['acc_bits'])}</td><td>{_array_text(la['array'])}</td><td>{la['estimate']['lut']}</td>"
        f"<td>{syn(la, 'lut')}</td><td>{la['estimate']['ff']}</td><td>{syn(la, 'ff')}</td>"
        f"<td>{la['estimate']['cycles']}</td><td>{la['sim']['cycles']}</td></tr>"
        for la in report["layers"])
    top = report["top"]
    rows += (f"<tr><td>(top)</td><td></td><td></td><td></td><td></td><td>{top['estimate']['lut']}</td>"
             f"<td>{top['synth']['lut'] if top['synth'] else '-'}</td><td>{top['estimate']['ff']}</td>"
             f"<td>{top['synth']['ff'] if top['synth'] else '-'}</td><td></td><td></td></tr>")
    if tot["synth"]:
        synth_line = f"yosys: {tot['synth']['lut']} LUT, {tot['synth']['ff']} FF, {tot['synth']['bram']} BRAM, {tot['synth']['dsp']} DSP."
        cells = ((tot.get("pnr") or {}).get("utilization") or {}).get("ICESTORM_LC")
        if cells:
            synth_line += f" nextpnr: {cells['used']} of {cells['available']} logic cells."
        if tot.get("fmax_mhz"):
            synth_line += f" Fmax {tot['fmax_mhz']} MHz."
    else:
        synth_line = "Synthesis not run (hwq flow --synth runs it)."
    est_t = tot["estimate"]
    est_line = (f"Estimated {est_t['lut']} LUT, {est_t['ff']} FF, {est_t['bram']:g} BRAM, {est_t['dsp']} DSP"
                + (f", {est_t['cells']} logic cells" if "cells" in est_t else "") + ".")
    block = report.get("folding", {}).get("block", [])
    dsp = report.get("folding", {}).get("dsp", [])
    places = (f"In block RAM: {e(', '.join(block)) if block else 'nothing'}. On DSP blocks: "
              f"{e(', '.join(dsp)) if dsp else 'nothing'}.")
    verdict = "bit-exact" if be["rtl_vs_golden"] else f"MISMATCH: {e(str(be['first_mismatch']))}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hwq report: {e(report['model'])} on {e(report['board'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>hwq report</h1>
<p>{e(report['model'])} on {e(report['dataset'])}, method {e(report['method'])}, board {e(report['board'])}</p>
<h2>Accuracy</h2>
<table><tr><th>float</th><th>fake-quant</th><th>golden ({acc['golden_samples']})</th><th>RTL ({acc['rtl_samples']})</th></tr>
<tr><td>{acc['float']:.4f}</td><td>{acc['fake_quant']:.4f}</td><td>{acc['golden']:.4f}</td><td>{acc['rtl']:.4f}</td></tr></table>
<h2>Checks</h2>
<ul><li>RTL vs golden over {be['samples']} samples: <b>{verdict}</b></li>
<li>PyTorch integer path vs golden: <b>{'equal' if be['golden_vs_torch_integer'] else 'DIFFERENT'}</b></li>
<li>fake-quant vs golden prediction mismatches: {be['fake_quant_prediction_mismatches']}
({be['fake_quant_mismatches_logit_ties']} logit ties, {be['fake_quant_mismatches_multiply_shift_rounding']} multiply-shift
rounding, {be['fake_quant_mismatches_unexplained']} unexplained)</li></ul>
<h2>Layers</h2>
<table><tr><th>layer</th><th>engine</th><th>W/A/out bits</th><th>acc bits</th><th>array</th><th>LUT (est.)</th>
<th>LUT (yosys)</th><th>FF (est.)</th><th>FF (yosys)</th><th>cycles (est.)</th><th>cycles (sim)</th></tr>{rows}</table>
<h2>Totals</h2>
<p>Latency {tot['latency_cycles_sim']} cycles (simulated), {tot['initiation_interval_cycles_sim']} cycles between inputs;
{tot['throughput_inferences_per_s']} inferences/s at the board's {tot['clock_mhz']} MHz clock (not a measured Fmax).
{est_line} {synth_line} {places}
{'Fits' if tot['fits'] else 'Does NOT fit'} the board.</p>
{_allocation_html(report.get("allocation"))}
</body></html>
"""


def _allocation_html(alloc):
    """The allocation's section of the report: the chosen bits, the budget, the frontier it explored."""
    if not alloc:
        return ""
    e = html.escape
    lim = alloc["limits"]
    bits = "".join(f"<tr><td>{e(n)}</td><td>{b['w_bits']}</td><td>{b['a_bits']}</td></tr>"
                   for n, b in alloc["bits"].items())
    front = "".join(
        f"<tr><td>{p['lut_budget']}</td>" + (f"<td>{p['score']:.4g}</td><td>{p['lut']}</td><td>{p['interval']}</td>"
                                            f"<td>{e(str(p['w_bits']))}</td><td>{e(str(p['a_bits']))}</td></tr>"
                                            if p["feasible"] else "<td colspan=5>infeasible</td></tr>")
        for p in (alloc.get("frontier") or {}).get("lut", []))
    speed = ", ".join(f"{k.replace('_', ' ')} at most {v}" for k, v in
                      (("interval_cycles", lim.get("interval_cycles")), ("latency_cycles", lim.get("latency_cycles")))
                      if v is not None) or "no speed target"
    return f"""<h2>Bit allocation</h2>
<p>Chosen by <code>hwq allocate</code> ({e(alloc['cost'])} cost, {e(alloc['sensitivity'])} sensitivity) within
{lim['lut']:.0f} LUTs, {e(speed)}, in {alloc['rounds']} round(s); {'meets' if alloc['meets_budget'] else 'MISSES'}
the budget. Input bits (a) of each layer are its producer's output bits.</p>
<table><tr><th>layer</th><th>weight bits</th><th>input bits</th></tr>{bits}</table>
<h3>Frontier (least sensitivity at each LUT budget, as the program estimates it)</h3>
<table><tr><th>LUT budget</th><th>sensitivity</th><th>LUT</th><th>interval</th><th>W</th><th>A</th></tr>{front}</table>"""
