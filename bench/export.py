"""Integer export of the model zoo: bench/results/export.json + docs/results/export.md.

    python bench/export.py [--epochs-float 30] [--epochs-qat 30] [--seed 0] [--jobs 2]

For each model x method x bits (with the first/last-layer policy "8", so 8-bit layers get a
multiply-shift under ``--requant auto``), train on digits, export, and check on the whole test set:
the PyTorch integer path against the golden model (every logit), the QONNX file run by the qonnx
package's executor against the golden model, and the fake-quant predictions against the golden ones,
each disagreement classified (logit tie, multiply-shift rounding, unexplained). Also per layer: the
requantization chosen and its deviations from the trained model.
"""

import argparse
import multiprocessing
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = [
    ("mlp", "lsq", 4), ("mlp", "dorefa", 2), ("mlp", "xnor", 1),
    ("cnn", "lsq", 4), ("cnn", "uniq", 2), ("cnn", "pact", 3), ("cnn", "tsq", 2), ("cnn", "nbn", 3),
    ("cnn", "sinareq", 4), ("cnn", "xnor", 1),
    ("resnet", "lsq", 3), ("resnet", "uniq", 2), ("resnet", "xnor", 1),
]


def _init_worker():
    import torch

    torch.set_num_threads(1)


def _run(job):
    import numpy as np

    from hwq import golden
    from hwq.data import load_dataset
    from hwq.export import export_run
    from hwq.flow import check_torch_integer
    from hwq.qonnx_export import run_qonnx
    from hwq.train import TrainConfig, train

    (model, method, bits), args = job
    data = load_dataset("digits")
    cfg = TrainConfig(model=model, method=method, w_bits=bits, a_bits=bits, first_last="8",
                      epochs_float=args.epochs_float, epochs_qat=args.epochs_qat, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        m = train(cfg, Path(tmp) / "run", show_progress=False, data=data)
        ir = export_run(Path(tmp) / "run", Path(tmp) / "ir", qonnx=True)
        gold = golden.run(ir, data.x_test)
        check = check_torch_integer(Path(tmp) / "run", ir, data.x_test)
        qonnx = run_qonnx(Path(tmp) / "ir" / "model.onnx", data.x_test, ir.input_shape)
        seconds = time.perf_counter() - t
    return {
        "model": model, "method": method, "bits": bits,
        "accuracy": {"fake_quant": m["accuracy"]["fake_quant"], "golden": float((gold.argmax(1) == data.y_test).mean())},
        "samples": len(data.x_test),
        "golden_vs_torch_integer": check["equal"],
        "qonnx_vs_golden": bool(np.array_equal(qonnx, gold)),
        "fake_quant_mismatches": check["fake_quant_mismatches"],
        "logit_ties": check["logit_ties"],
        "multiply_shift_rounding": check["multiply_shift_rounding"],
        "unexplained": check["unexplained"],
        "layers": [{"name": la.name, "op": la.op, "requant": la.requant_kind, "out_bits": la.out_bits,
                    "acc_bits": la.acc_bits, "shift": la.shift, "deviations": la.deviations, "xnor": la.xnor}
                   for la in ir.layers if la.requant_kind],
        "seconds": round(seconds, 1),
    }


def _markdown(res):
    lines = [
        "# Integer export of the model zoo",
        "",
        f"Made by `{res['command']}` ({res['seconds']:.0f} s on {res['machine']}); data in `bench/results/export.json`.",
        f"Digits test set ({res['cases'][0]['samples']} images); first/last-layer policy 8; `--requant auto`.",
        "",
        ("| model | method | bits | fake-quant | golden | torch int = golden | QONNX = golden | fq mismatches "
         "(ties / ms rounding / unexplained) | requantization per layer (deviations) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        req = ", ".join(
            f"{la['name']} {'ms>>' + str(la['shift']) if la['requant'] == 'multiply_shift' else la['requant']}"
            + (f" ({la['deviations']})" if la["deviations"] else "") + (" xnor" if la["xnor"] else "")
            for la in c["layers"])
        lines.append(
            f"| {c['model']} | {c['method']} | W{c['bits']}A{c['bits']} | {100 * c['accuracy']['fake_quant']:.2f} | "
            f"{100 * c['accuracy']['golden']:.2f} | {'yes' if c['golden_vs_torch_integer'] else '**NO**'} | "
            f"{'yes' if c['qonnx_vs_golden'] else '**NO**'} | {c['fake_quant_mismatches']} ({c['logit_ties']} / "
            f"{c['multiply_shift_rounding']} / {c['unexplained']}) | {req} |")
    lines += [
        "",
        "*ms>>S*: multiply-shift with shift S; *(n)*: accumulator values (over the proven range, summed over",
        "channels) where the multiply-shift differs from the trained model's float requantization. A",
        "fake-quant mismatch is a *tie* when its class also has the golden maximum logit, *ms rounding*",
        "when the thresholds (equal to the float model) would have agreed.",
        "",
    ]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs-float", type=int, default=30)
    p.add_argument("--epochs-qat", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "export.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "results" / "export.md"))
    args = p.parse_args()

    from hwq.fileio import write_json, write_text
    from hwq.progress import progress_bar

    t = time.perf_counter()
    jobs = [(case, args) for case in CASES]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker) as pool, progress_bar("export checks", len(jobs)) as tick:
        cases = []
        for r in pool.imap(_run, jobs):
            cases.append(r)
            tick()
    res = {
        "command": " ".join(["python bench/export.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}",
        "seconds": round(time.perf_counter() - t, 1),
        "cases": cases,
    }
    write_json(args.out, res)
    write_text(args.docs, _markdown(res))
    bad = [c for c in cases if not (c["golden_vs_torch_integer"] and c["qonnx_vs_golden"]) or c["unexplained"]]
    print(f"wrote {args.out} and {args.docs}: {len(cases)} models, {len(bad)} with a failed check")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
