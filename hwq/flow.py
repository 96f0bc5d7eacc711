"""``hwq flow``: train, export, check, generate RTL, estimate, simulate; write report.json and report.html.
With ``onnx``, the network is imported from a QONNX file (:mod:`hwq.qonnx_import`) instead of trained."""

import datetime
import hashlib
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from boards import RESOURCES

from . import __version__, golden
from .config import TrainConfig
from .data import load_dataset
from .errors import UserError
from .estimate import estimate
from .fileio import read_json, write_json, write_text
from .ir import ir_digest, load_ir
from .report import render_html, warm_up

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
    import torch

    from .export import export_model, multiply_shift_params

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
    from .train import load_run

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


TRAIN_KEY_FILE = "train-key.txt"  # in a flow's run/: what the run was trained with


def _train_key(cfg):
    """What a trained run depends on: every training option, hwq's version and the file of a custom model's
    builder (not the board)."""
    from .custom import builder_digest, is_builder_ref

    own = builder_digest(cfg.model) if is_builder_ref(cfg.model) else None
    return hashlib.sha256(json.dumps([__version__, asdict(cfg), own], sort_keys=True, default=str).encode()).hexdigest()


def _reusable_run(run_dir, key):
    """The metrics of ``run_dir`` when it was trained (completely: its key is written last) with ``key``."""
    try:
        if (run_dir / TRAIN_KEY_FILE).read_text().strip() == key and (run_dir / "checkpoint.pt").is_file():
            return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    return None


def _untrained_ir(cfg, data):
    """The IR of ``cfg``'s network with untrained weights (quantizers initialised, no epochs): its shapes,
    bits and accumulator widths are the trained network's, which is what fitting a board depends on."""
    from .export import export_model
    from .train import load_run, train

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
        if other.name != board.name:
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
             synth=False, log=print, show_progress=True, allocate_options=None, force=False, command=None, onnx=None):
    """Run every stage into ``out_dir``; return the report dict (also written to report.json).

    The previous run's report and stage results in ``out_dir`` are removed before the first stage, so
    a flow that is interrupted never leaves a report that describes other files. ``force``: replace
    ``ir/`` and ``rtl/`` folders that hwq did not write. ``command``: the command line, for the report.

    ``allocate_options``: after training, allocate the bits for ``board`` (:func:`hwq.allocate.allocate`'s
    keyword arguments) and build the allocated design (its retrained run in ``out_dir/allocated``).

    ``onnx``: import this QONNX file (its inputs are ``train_cfg.dataset``'s) instead of training; the
    report's float and fake-quant accuracies are then null, and the import's check (qonnx's executor
    against the golden model on the whole test split) stands where the PyTorch integer path's does."""
    out = Path(out_dir)
    timings = {}
    for name in FLOW_RESULTS:
        (out / name).unlink(missing_ok=True)
    if onnx is not None:
        if allocate_options is not None:
            raise UserError("--allocate retrains the network; it cannot be combined with --onnx")
        t = time.perf_counter()
        imported = _imported(out, onnx, train_cfg.dataset, log, force)
        timings["import"] = round(time.perf_counter() - t, 3)
        return _finish(out, board, *imported, samples=samples, fold=fold,
                       lut_budget=lut_budget, folding=None, synth=synth, log=log, show_progress=show_progress,
                       force=force, command=command, timings=timings, allocation=None)
    t = time.perf_counter()
    key = _train_key(train_cfg)
    reused = _reusable_run(out / "run", key)
    if allocate_options is None and reused is None:  # a reused run is checked by hwq rtl below, on its real IR
        check_fits_first(train_cfg, board, lut_budget=lut_budget, fold=fold)
    t = time.perf_counter()
    if reused is not None:
        metrics = reused
        log(f"reusing {out / 'run'}: trained by this hwq with the same options (training does not depend on the "
            f"board; delete {out / 'run'} to train again)")
    else:
        from .train import train

        (out / "run" / TRAIN_KEY_FILE).unlink(missing_ok=True)
        metrics = train(train_cfg, out / "run", show_progress=show_progress)
        write_text(out / "run" / TRAIN_KEY_FILE, key + "\n")
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
    export_key = None if allocation is not None else key  # the run in out/run was trained with key
    exported = _reusable_export(out, export_key)
    if exported is not None:
        ir, check, acc_golden = exported
        data = load_dataset(ir.dataset, input_bits=ir.input_bits)
        log(f"reusing {out / 'ir'}: exported from this run and checked (the checks' results in {out / EXPORT_FILE})")
    else:
        from .export import export_run

        (out / EXPORT_FILE).unlink(missing_ok=True)
        ir = export_run(run_dir, out / "ir", force=force)
        data = load_dataset(ir.dataset, input_bits=ir.input_bits)
        acc_golden = _golden_accuracy(ir, data)
        check = check_torch_integer(run_dir, ir, data.x_test)
        if export_key is not None:
            write_json(out / EXPORT_FILE, {"train_key": export_key, "ir_sha256": ir_digest(ir), "check": check,
                                           "golden_accuracy": acc_golden})
    timings["export"] = round(time.perf_counter() - t, 3)
    log(f"exported IR -> {out / 'ir'}  golden {acc_golden:.4f}, torch integer path "
        f"{'equal' if check['equal'] else 'DIFFERENT'}, fake-quant prediction mismatches "
        f"{check['fake_quant_mismatches']} ({_explained(check)})")
    return _finish(out, board, ir, metrics, check, None, data, samples=samples, fold=fold, lut_budget=lut_budget,
                   folding=folding, synth=synth, log=log, show_progress=show_progress, force=force, command=command,
                   timings=timings, allocation=allocation, acc_golden=acc_golden)


EXPORT_FILE = "export-check.json"  # in a flow's folder: the IR's digest and its checks, for a reused run


def _reusable_export(out, key):
    """(IR, the integer-path check, golden accuracy) of ``out/ir`` when it was exported from the run trained
    with ``key`` and is unchanged since (its digest is the one recorded); else None."""
    if key is None:
        return None
    try:
        record = read_json(out / EXPORT_FILE)
        ir = load_ir(out / "ir")
    except (OSError, ValueError, UserError):
        return None
    if not isinstance(record, dict) or record.get("train_key") != key or record.get("ir_sha256") != ir_digest(ir):
        return None
    return ir, record["check"], record["golden_accuracy"]


def _imported(out, onnx, dataset, log, force):
    """Import ``onnx`` into ``out/ir``, checked on ``dataset``'s whole test split: (ir, metrics, check,
    import check, the dataset) for :func:`_finish`."""
    from .qonnx_import import check_and_save, lower_qonnx

    ir, model = lower_qonnx(onnx, dataset=dataset)
    data = load_dataset(dataset, input_bits=ir.input_bits)
    log(f"checking the import on {len(data.x_test)} {dataset} test samples: qonnx's executor against hwq's golden "
        f"model ...")
    qcheck = check_and_save(model, ir, data.x_test, onnx, out / "ir", inputs=f"{dataset} test split", force=force)
    log(f"imported {onnx} -> {out / 'ir'}  every logit equal to qonnx's ({qcheck['samples']} samples)")
    none = {k: None for k in ("equal", "fake_quant_mismatches", "logit_ties", "multiply_shift_rounding", "unexplained")}
    return ir, {"accuracy": {"float": None, "fake_quant": None}}, none, qcheck, data


def _golden_accuracy(ir, data):
    return float((golden.run(ir, data.x_test).argmax(1) == data.y_test).mean())


def _finish(out, board, ir, metrics, check, qcheck, data, *, samples, fold, lut_budget, folding, synth, log,
            show_progress, force, command, timings, allocation, acc_golden=None):
    """The stages after the IR (``data``: its dataset): golden accuracy (unless given), RTL, estimate,
    simulation, synthesis; the report."""
    from rtl_gen.emit import generate_rtl
    from sim.runner import simulate

    if acc_golden is None:
        acc_golden = _golden_accuracy(ir, data)
    t = time.perf_counter()
    rtl_info = generate_rtl(ir, board, out / "rtl", fold=fold, lut_budget=lut_budget, folding=folding, force=force)
    timings["rtl"] = round(time.perf_counter() - t, 3)
    log(f"generated Verilog -> {out / 'rtl'}/ (top.v, a file per layer, memory files in mem/)")

    est = estimate(ir, board, folding=rtl_info["folding"])
    write_json(out / "estimate.json", est)

    n = len(data.x_test) if samples is None else min(samples, len(data.x_test))
    if samples is not None and samples > n:
        log(f"--samples {samples}: the {ir.dataset} test set has {n} samples; simulating all of them")
    log(f"simulating {n} samples with Verilator ...")
    t = time.perf_counter()
    plotting = warm_up()
    sim = simulate(ir, out / "rtl", inputs=data.x_test[:n], labels=data.y_test[:n], log=log)
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
        "hwq_version": __version__, "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "board_resources": {**{k: getattr(board, k) for k in RESOURCES},
                            "cells": board.lut if board.family == "ice40" else None},
        "accuracy": {
            "float": metrics["accuracy"]["float"],
            "fake_quant": metrics["accuracy"]["fake_quant"],
            "golden": acc_golden,
            "golden_samples": len(data.x_test),
            "golden_on_rtl_samples": sim["accuracy_golden"],
            "rtl": sim["accuracy"],
            "rtl_samples": n,
        },
        "source": {"kind": "trained"} if qcheck is None else {"kind": "qonnx", **qcheck},
        "bit_exact": {
            "golden_vs_torch_integer": check["equal"],
            "golden_vs_qonnx": None if qcheck is None else qcheck["equal"],
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
            "throughput_at_fmax_per_s": (round(syn["pnr"]["fmax_mhz"] * 1e6 / ii, 1)
                                         if ii and syn and syn["pnr"] and syn["pnr"].get("fmax_mhz") else None),
        },
        "timings_s": timings,
        "allocation": None if allocation is None else {
            "bits": allocation["final"]["bits"], "meets_budget": allocation["final"]["meets_budget"],
            "limits": allocation["limits"], "cost": allocation["cost"], "sensitivity": allocation["sensitivity"],
            "rounds": len(allocation["rounds"]), "frontier": allocation["frontier"],
            "finalists": allocation["rounds"][-1].get("finalists")},
    }
    write_json(out / "report.json", report)
    plotting.join()
    write_text(out / "report.html", render_html(report))
    return report
