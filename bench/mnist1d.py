"""MNIST-1D benchmark: float, W4/A4 and W2/A2 accuracy of an MLP and the 1-D CNN, 3 seeds, next to the
paper's float figures; the W2/A2 1-D CNN simulated bit-exact on every test sequence.

    python bench/mnist1d.py [--seeds 0 1 2] [--epochs-float 40] [--epochs-qat 30] [--jobs 2]

Writes bench/results/mnist1d.json and docs/results/mnist1d.md.

- Data: MNIST-1D as the ``mnist1d`` package generates it offline with its default arguments (4,000
  training and 1,000 test sequences of 40 samples), as signed 8-bit codes (``hwq/data.py``).
- Models: ``mlp`` with two hidden layers of 100 (the paper's MLP) and ``cnn1d`` (the paper's CNN shape:
  three strided 1-D convolutions, kernels 5, 3, 3, then a linear classifier; channels 16 and 32). Every
  layer at the stated bits, the first and last included (``--first-last same``).
- Methods: a screen at W2/A2 on the 1-D CNN (seed 0) over ``SCREEN`` picks the best two; those two are
  run at W4/A4 and W2/A2 on both models and every seed, each from the seed's float network.
- Reported per point: the fake-quant accuracy and the golden (integer, exported) accuracy on the 1,000
  test sequences, mean and spread over the seeds.
- Hardware: the W2/A2 1-D CNN of the best method (seed 0) is generated for ``--board`` and simulated on
  all 1,000 test sequences in Verilator; every output integer is compared with the golden model.
"""

import argparse
import multiprocessing
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCREEN = ["lsq", "uniq", "pact", "dorefa", "tsq"]
BITS = [(4, 4), (2, 2)]
MODELS = {"mlp": {"hidden": (100, 100)}, "cnn1d": {"channels": (16, 32)}}
# Float test accuracy in the MNIST-1D paper (Greydanus, 2020; the mnist1d README's table): MLP 68%, CNN 94%.
PAPER_FLOAT = {"mlp": 68.0, "cnn1d": 94.0}


def _config(model, **kw):
    from hwq.train import TrainConfig

    return TrainConfig(model=model, dataset="mnist1d", first_last="same", **MODELS[model], **kw)


def _pretrain(job):
    from hwq.data import load_dataset
    from hwq.train import pretrain

    model, seed, epochs = job
    state, acc = pretrain(_config(model, epochs_float=epochs, seed=seed), load_dataset("mnist1d"))
    return (model, seed), state, acc


def _train(job):
    """Train one QAT point from its float state, export it; (key, metrics with the golden accuracy). With
    ``keep``, the run and IR stay in that folder (for the simulation)."""
    from hwq import golden
    from hwq.data import load_dataset
    from hwq.export import export_run
    from hwq.train import train

    key, kwargs, float_state, keep = job
    data = load_dataset("mnist1d")
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(keep or tmp)
        t = time.perf_counter()
        m = train(_config(key[0], **kwargs), where / "run", show_progress=False, float_state=float_state, data=data)
        ir = export_run(where / "run", where / "ir")
        m["golden"] = float((golden.run(ir, data.x_test).argmax(1) == data.y_test).mean())
        m["seconds"] = round(time.perf_counter() - t, 2)
    return key, m


def _stats(values):
    values = [100 * v for v in values]
    return {"mean": round(statistics.mean(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0, "values": [round(v, 2) for v in values]}


def run(args, work):
    from hwq.sweep import run_all

    t0 = time.perf_counter()
    floats = {k: (st, acc) for k, st, acc in run_all(_pretrain, [(m, s, args.epochs_float) for m in MODELS
                                                                for s in args.seeds], workers=args.jobs,
                                                    label="float networks")}
    seed0 = args.seeds[0]
    screen = dict(run_all(_train, [(("cnn1d", method, 2, 2, seed0), dict(method=method, w_bits=2, a_bits=2, seed=seed0,
                                    epochs_qat=args.epochs_qat), floats[("cnn1d", seed0)], str(work / "screen" / method))
                                   for method in SCREEN], workers=args.jobs, label="method screen (1-D CNN, W2/A2)"))
    ranked = sorted(SCREEN, key=lambda m: -screen[("cnn1d", m, 2, 2, seed0)]["accuracy"]["fake_quant"])
    jobs = [((model, method, w, a, seed), dict(method=method, w_bits=w, a_bits=a, seed=seed, epochs_qat=args.epochs_qat),
             floats[(model, seed)], None)
            for model in MODELS for seed in args.seeds for method in ranked[:2] for w, a in BITS
            if (model, method, w, a, seed) not in screen]
    results = {**screen, **dict(run_all(_train, jobs, workers=args.jobs, label="QAT runs"))}
    return floats, screen, ranked, results, time.perf_counter() - t0


def simulate_best(args, ranked, work):
    """The W2/A2 1-D CNN of the best method (seed 0, kept from the screen): RTL for the board, all 1,000 test
    sequences."""
    from boards import load_board
    from hwq.ir import load_ir
    from rtl_gen.emit import generate_rtl
    from sim.runner import simulate

    kept = work / "screen" / ranked[0]
    ir = load_ir(kept / "ir")
    info = generate_rtl(ir, load_board(args.board), kept / "rtl")
    res = simulate(ir, kept / "rtl", samples=1000)
    return {"model": "cnn1d", "method": ranked[0], "bits": "W2/A2", "seed": args.seeds[0], "board": args.board,
            "folding": info["folding"], "samples": res["samples"], "bit_exact": res["bit_exact"],
            "mismatched_samples": res["mismatched_samples"], "accuracy_rtl": res["accuracy"],
            "latency_cycles": {"sim": res["latency_cycles"], "estimate": info["latency_cycles"]},
            "initiation_interval_cycles": {"sim": res["initiation_interval_cycles"],
                                           "estimate": info["initiation_interval_cycles"]},
            "layer_cycles_equal_estimate": all(la["cycles"] == la["estimate_cycles"] for la in res["layers"]),
            "throughput_per_s": res["throughput_per_s"], "cycles_per_s": res["cycles_per_s"]}


def summarize(args, floats, screen, ranked, results, wall, sim):
    seed0 = args.seeds[0]
    out = {"dataset": "mnist1d", "test_samples": 1000, "seeds": args.seeds, "epochs_float": args.epochs_float,
           "epochs_qat": args.epochs_qat, "first_last": "same", "models": {k: dict(v) for k, v in MODELS.items()},
           "paper_float": PAPER_FLOAT,
           "screen": {"model": "cnn1d", "bits": "W2/A2", "seed": seed0,
                      "fake_quant": {m: round(100 * screen[("cnn1d", m, 2, 2, seed0)]["accuracy"]["fake_quant"], 2)
                                     for m in SCREEN}},
           "best_methods": ranked[:2], "models_results": {}}
    for model in MODELS:
        entry = {"float": _stats([floats[(model, s)][1] for s in args.seeds]), "paper_float": PAPER_FLOAT[model],
                 "points": []}
        for method in ranked[:2]:
            for w, a in BITS:
                ms = [results[(model, method, w, a, s)] for s in args.seeds]
                entry["points"].append({"method": method, "w_bits": w, "a_bits": a,
                                        "fake_quant": _stats([m["accuracy"]["fake_quant"] for m in ms]),
                                        "golden": _stats([m["golden"] for m in ms]),
                                        "train_seconds_mean": round(statistics.mean(m["seconds"] for m in ms), 1)})
        out["models_results"][model] = entry
    out["simulation"] = sim
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    out.update(command=" ".join(["python", "bench/mnist1d.py", *sys.argv[1:]]), commit=commit or None,
               machine={"python": platform.python_version(), "cpus": multiprocessing.cpu_count()},
               wall_seconds=round(wall, 1))
    return out


def markdown(s):
    lines = ["# MNIST-1D benchmark", "",
             f"Made by `{s['command']}` at commit {s['commit']}; raw numbers in `bench/results/mnist1d.json`.", "",
             (f"MNIST-1D (4,000 training and {s['test_samples']:,} test sequences of 40 samples, generated offline), "
             f"seeds {s['seeds']}, {s['epochs_float']} float epochs, then {s['epochs_qat']} QAT epochs from the "
             f"seed's float network; every layer at the stated bits. Accuracy in percent on the test sequences, "
             f"mean ± spread over the seeds; 'golden' is the exported integer model (what the hardware computes)."), "",
             "Method screen (1-D CNN, W2/A2, seed " + str(s["screen"]["seed"]) + "): "
             + ", ".join(f"{m} {v}" for m, v in s["screen"]["fake_quant"].items())
             + f"; the best two, {' and '.join(s['best_methods'])}, are run everywhere.", "",
             "| model | float (ours) | float (paper) | method | bits | fake-quant | golden |", "|---|---|---|---|---|---|---|"]
    for model, e in s["models_results"].items():
        for k, p in enumerate(e["points"]):
            fl = f"{e['float']['mean']} ± {e['float']['std']}" if k == 0 else ""
            paper = f"{e['paper_float']}" if k == 0 else ""
            lines.append(f"| {model if k == 0 else ''} | {fl} | {paper} | {p['method']} | W{p['w_bits']}/A{p['a_bits']} | "
                         f"{p['fake_quant']['mean']} ± {p['fake_quant']['std']} | {p['golden']['mean']} ± {p['golden']['std']} |")
    sim = s["simulation"]
    lines += ["", (f"Hardware: the W2/A2 1-D CNN ({sim['method']}, seed {sim['seed']}) on {sim['board']}: "
              f"{sim['samples']:,} test sequences through Verilator, {sim['mismatched_samples']} mismatching "
              f"(bit-exact: {sim['bit_exact']}); latency {sim['latency_cycles']['sim']} cycles (estimate "
              f"{sim['latency_cycles']['estimate']}), a new sequence every {sim['initiation_interval_cycles']['sim']} "
              f"cycles ({sim['throughput_per_s']:,.0f}/s at the board's clock); every layer's cycles equal the "
              f"estimate: {sim['layer_cycles_equal_estimate']}. RTL accuracy {100 * sim['accuracy_rtl']:.1f}%."), "",
              f"Wall time {s['wall_seconds']:.0f} s on {s['machine']['cpus']} cores."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs-float", type=int, default=40)
    p.add_argument("--epochs-qat", type=int, default=30)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--board", default="ice40-up5k")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "mnist1d.json"))
    p.add_argument("--md", default=str(ROOT / "docs" / "results" / "mnist1d.md"))
    args = p.parse_args(argv)
    from hwq.fileio import write_json, write_text

    with tempfile.TemporaryDirectory(prefix="hwq-mnist1d-") as work:
        work = Path(work)
        floats, screen, ranked, results, wall = run(args, work)
        sim = simulate_best(args, ranked, work)
    s = summarize(args, floats, screen, ranked, results, wall, sim)
    write_json(Path(args.out), s)
    write_text(Path(args.md), markdown(s))
    print(markdown(s))


if __name__ == "__main__":
    main()
