"""Accuracy of every quantization method on the digits CNN, 3 seeds: bench/results/qat.json + docs/results/qat.md.

    python bench/qat.py [--seeds 0 1 2] [--epochs-float 30] [--epochs-qat 30] [--jobs 2]

Every method starts from the same float network per seed (trained once) and gets the same number of
quantization epochs. The first/last-layer policy is UniQ's: the first and last layers' weights, and
the last layer's input, at 8 bits (``--first-last same`` to quantize them too). Also: neuron-by-neuron
vs direct vs layer-by-layer at 3 bits, and the bitwidths SINAREQ learns per layer.
"""

import argparse
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BITS = [(8, 8), (4, 4), (3, 3), (2, 2)]
MULTI_BIT = ["lsq", "uniq", "dorefa", "pact", "sinareq", "tsq", "nbn"]
BINARY = ["lsq", "uniq", "dorefa", "xnor", "tsq"]  # NbN: 2..8 bits in its paper; PACT: 2+ bit activations
TARGETS = {"W4A4": 1.0, "W2A2": 3.0, "W1A1": 10.0}  # best method within this many points of FP32
NBN_PAPER = {"nbn": 73.2, "direct": 71.4, "layer": 67.2}  # CIFAR-10, 3 bits (Sher et al., 2023, abstract)


def _pretrain(job):
    from hwq.data import load_dataset
    from hwq.train import TrainConfig, pretrain

    seed, epochs, first_last = job
    state, acc = pretrain(TrainConfig(model="cnn", epochs_float=epochs, seed=seed, first_last=first_last),
                          load_dataset("digits"))
    return seed, state, acc


def _train(job):
    from hwq.data import load_dataset
    from hwq.train import TrainConfig, train

    key, kwargs, float_state = job
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        m = train(TrainConfig(model="cnn", **kwargs), tmp, show_progress=False, float_state=float_state,
                  data=load_dataset("digits"))
        m["seconds"] = round(time.perf_counter() - t, 2)
    return key, m


def _stats(values):
    values = [100 * v for v in values]
    return {"acc_mean": round(statistics.mean(values), 2),
            "acc_std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "accs": [round(v, 2) for v in values]}


def _jobs(args):
    common = dict(epochs_float=args.epochs_float, epochs_qat=args.epochs_qat, first_last=args.first_last)
    jobs = []
    for seed in args.seeds:
        for method in MULTI_BIT:
            for w, a in BITS:
                jobs.append((("grid", method, w, a, seed), dict(method=method, w_bits=w, a_bits=a, seed=seed,
                                                                **common)))
        for method in BINARY:
            jobs.append((("grid", method, 1, 1, seed), dict(method=method, w_bits=1, a_bits=1, seed=seed, **common)))
        for variant in ("direct", "layer"):  # "nbn" at 3 bits is in the grid
            jobs.append((("nbn", variant, 3, 3, seed), dict(method="nbn", nbn_variant=variant, w_bits=3, a_bits=3,
                                                            seed=seed, **common)))
        jobs.append((("sinareq_bits", "sinareq", 8, args.sinareq_a_bits, seed),
                     dict(method="sinareq", sinareq_learn_bits=True, w_bits=8, a_bits=args.sinareq_a_bits,
                          seed=seed, **common)))
    return jobs


def run(args):
    t0 = time.perf_counter()
    from hwq.sweep import run_all

    floats = {s: (st, acc) for s, st, acc in run_all(_pretrain, [(s, args.epochs_float, args.first_last)
                                                                 for s in args.seeds], workers=args.jobs,
                                                     label="float networks")}
    jobs = [(key, kw, floats[key[-1]]) for key, kw in _jobs(args)]
    results = dict(run_all(_train, jobs, workers=args.jobs, label="QAT runs"))
    return floats, results, time.perf_counter() - t0


def summarize(args, floats, results, wall):
    fp32 = _stats([floats[s][1] for s in args.seeds])
    rows = []
    for method in dict.fromkeys(MULTI_BIT + BINARY):
        for w, a in [*BITS, (1, 1)]:
            accs = [results[k]["accuracy"]["fake_quant"] for k in sorted(results)
                    if k[:4] == ("grid", method, w, a)]
            if accs:
                rows.append({"method": method, "w_bits": w, "a_bits": a, **_stats(accs)})
    nbn = {"w_bits": 3, "a_bits": 3, "paper_cifar10": NBN_PAPER, "variants": {}}
    for variant in ("nbn", "direct", "layer"):
        kind = ("grid", "nbn") if variant == "nbn" else ("nbn", variant)
        accs = [m["accuracy"]["fake_quant"] for k, m in sorted(results.items()) if k[:4] == (*kind, 3, 3)]
        nbn["variants"][variant] = _stats(accs)
    sin = [m for k, m in sorted(results.items()) if k[0] == "sinareq_bits"]
    from hwq.models import layer_names

    sinareq_bits = {
        "layers": layer_names("cnn"), "a_bits": args.sinareq_a_bits, "start_bits": 8,
        "first_last": args.first_last,
        "per_seed_w_bits": [m["sinareq"]["w_bits"] for m in sin],
        "per_seed_learned_float": [m["sinareq"]["learned_bits_float"] for m in sin],
        **_stats([m["accuracy"]["fake_quant"] for m in sin]),
    }
    targets = {}
    for label, gap in TARGETS.items():
        w = int(label[1])
        cands = [r for r in rows if r["w_bits"] == w and r["a_bits"] == w]
        best = max(cands, key=lambda r: r["acc_mean"])
        shortfall = round(fp32["acc_mean"] - best["acc_mean"], 2)
        targets[label] = {"best_method": best["method"], "best_acc_mean": best["acc_mean"],
                          "points_below_fp32": shortfall, "allowed": gap, "met": shortfall <= gap}
    return {
        "dataset": "digits", "model": "cnn", "seeds": list(args.seeds), "fp32": fp32, "results": rows,
        "nbn": nbn, "sinareq_bits": sinareq_bits, "targets": targets,
        "settings": {"epochs_float": args.epochs_float, "epochs_qat": args.epochs_qat,
                     "first_last": args.first_last, "jobs": args.jobs, "test_samples": 360,
                     "runs": len(results)},
        "wall_seconds": round(wall, 1),
        "machine": {"python": platform.python_version(), "cpus": multiprocessing.cpu_count()},
    }


def _plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method in dict.fromkeys(r["method"] for r in report["results"]):
        rows = sorted((r for r in report["results"] if r["method"] == method), key=lambda r: r["w_bits"])
        ax.errorbar([r["w_bits"] for r in rows], [r["acc_mean"] for r in rows], yerr=[r["acc_std"] for r in rows],
                    marker="o", capsize=3, label=method)
    ax.axhline(report["fp32"]["acc_mean"], color="k", ls="--", lw=1, label="FP32")
    ax.set_xlabel("bits (weights = activations)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks([1, 2, 3, 4, 8])
    ax.set_ylim(max(0, min(r["acc_mean"] for r in report["results"]) - 5), 100)
    ax.set_title("digits CNN, mean and std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(ncol=4, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report, png_name, json_name):
    fp = report["fp32"]
    s = report["settings"]
    lines = [
        "# QAT benchmark: every method on the digits CNN",
        "",
        f"Made by `{report.get('command', 'python bench/qat.py')}` ({s['runs']} training runs, seeds {report['seeds']}, "
        f"{report['wall_seconds']:.0f} s wall on {report['machine']['cpus']} CPUs). Raw numbers: "
        f"`{json_name}`. Test set: 360 digits images. Each method starts from the same float "
        f"network per seed ({s['epochs_float']} epochs) and gets {s['epochs_qat']} quantization epochs. "
        f"First/last-layer policy: `{s['first_last']}`"
        + (" (first and last layers' weights and the last layer's input at 8 bits, as UniQ)."
           if s["first_last"] == "8" else "."),
        "",
        f"FP32: **{fp['acc_mean']:.2f} ± {fp['acc_std']:.2f} %**",
        "",
        f"![accuracy vs bits]({png_name})",
        "",
        "| method | " + " | ".join(f"W{w}A{a}" for w, a in [*BITS, (1, 1)]) + " |",
        "|---|" + "---:|" * (len(BITS) + 1),
    ]
    for method in dict.fromkeys(r["method"] for r in report["results"]):
        cells = []
        for w, a in [*BITS, (1, 1)]:
            r = next((r for r in report["results"] if (r["method"], r["w_bits"], r["a_bits"]) == (method, w, a)), None)
            cells.append(f"{r['acc_mean']:.2f} ± {r['acc_std']:.2f}" if r else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets (best method vs FP32)", "", "| setting | best | accuracy | below FP32 | allowed | met |",
              "|---|---|---:|---:|---:|---|"]
    for label, t in report["targets"].items():
        lines.append(f"| {label} | {t['best_method']} | {t['best_acc_mean']:.2f} | {t['points_below_fp32']:.2f} | "
                     f"{t['allowed']:.0f} | {'yes' if t['met'] else 'NO'} |")
    nb = report["nbn"]
    lines += ["", "## Neuron-by-neuron vs direct vs layer-by-layer (W3A3)", "",
              "| variant | ours (digits CNN) | paper (CIFAR-10) |", "|---|---:|---:|"]
    for v, st in nb["variants"].items():
        lines.append(f"| {v} | {st['acc_mean']:.2f} ± {st['acc_std']:.2f} | {nb['paper_cifar10'][v]} |")
    sb = report["sinareq_bits"]
    lines += ["", f"## SINAREQ's learned weight bits (start at 8, activations {sb['a_bits']} bits)", "",
              "| seed | " + " | ".join(sb["layers"]) + " | accuracy |", "|---|" + "---:|" * (len(sb["layers"]) + 1)]
    for seed, bits, flt, acc in zip(report["seeds"], sb["per_seed_w_bits"], sb["per_seed_learned_float"], sb["accs"],
                                    strict=True):
        lines.append(f"| {seed} | " + " | ".join(f"{b} ({f:.2f})" for b, f in zip(bits, flt, strict=True))
                     + f" | {acc:.2f} |")
    lines += ["", "(learned float bitwidth in brackets; the integer is its rounding, clamped to 1..8)", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs-float", type=int, default=30)
    p.add_argument("--epochs-qat", type=int, default=30)
    p.add_argument("--first-last", default="8", choices=["same", "8"])
    p.add_argument("--sinareq-a-bits", type=int, default=4)
    p.add_argument("--jobs", type=int, default=max(1, min(2, multiprocessing.cpu_count())))
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "qat.json")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "results" / "qat.md")
    args = p.parse_args(argv)
    floats, results, wall = run(args)
    report = summarize(args, floats, results, wall)
    report["command"] = " ".join(["python bench/qat.py", *(sys.argv[1:] if argv is None else argv)])
    from hwq.fileio import write_json, write_text

    write_json(args.out, report)
    png = args.docs.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    _plot(report, png)
    try:
        json_name = args.out.resolve().relative_to(ROOT)
    except ValueError:
        json_name = args.out
    write_text(args.docs, _markdown(report, png.name, json_name))
    for label, t in report["targets"].items():
        print(f"{label}: best {t['best_method']} {t['best_acc_mean']:.2f}% ({t['points_below_fp32']:.2f} below FP32 "
              f"{report['fp32']['acc_mean']:.2f}%, allowed {t['allowed']:.0f}): {'met' if t['met'] else 'NOT met'}")
    print(f"wrote {args.out}, {args.docs} and {png} in {wall:.0f} s")


if __name__ == "__main__":
    main()
