"""Design-space sweeps: many points (model, method, bits, board, folding budget, seed), each trained,
exported, generated, estimated, simulated and synthesized as asked, run on Ray (this machine's cores, or
an existing cluster) or in this process.

:func:`run_tasks` is the machinery, shared with the estimator's calibration sweep
(``python -m boards.calibrate sweep``): a task is plain data and a module-level function of it; its
result is stored under the hash of the function's name, the task and hwq's version, so that a re-run (or
an extended sweep) reuses every finished point. A task that raises is recorded as failed with its error
and the sweep goes on; a worker that dies is retried by Ray (``max_retries``).

``hwq sweep SWEEP.yaml --out DIR`` (:func:`run_sweep`) runs the flow points of a sweep file
(``docs/formats.md``) and writes ``DIR/sweep.json`` and ``DIR/sweep.html`` (Pareto fronts).
"""

import hashlib
import itertools
import json
import os
import time
import traceback
from pathlib import Path

from . import __version__
from .errors import UserError
from .fileio import read_json, write_json, write_text

__all__ = ["POINT_KEYS", "STAGES", "SWEEP_FORMAT", "flow_point", "load_sweep", "run_all", "run_sweep", "run_tasks",
           "task_key"]

SWEEP_FORMAT = "hwq-sweep/1"
STAGES = ("train", "export", "rtl", "estimate", "sim", "synth", "pnr")
DEFAULT_STAGES = ["train", "export", "rtl", "estimate", "sim"]
BOARD_KEYS = ("board", "lut_budget")
TRAIN_KEYS = ("model", "dataset", "method", "bits", "first_last", "epochs_float", "epochs_qat", "seed", "bits_file")
POINT_KEYS = (*TRAIN_KEYS, *BOARD_KEYS)


# ---- the machinery ---------------------------------------------------------------------------------------

def task_key(fn, task):
    """The hash a task's result is stored under: the function, the task and hwq's version."""
    text = json.dumps([__version__, f"{fn.__module__}.{fn.__qualname__}", task], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _safe(fn, task):
    """``fn(task)`` as a result dict; an exception becomes a failed result (recorded, not retried)."""
    t0 = time.perf_counter()
    try:
        out = {"status": "ok", "result": fn(task)}
    except Exception as e:  # a point's failure is data: the sweep goes on
        out = {"status": "failed", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc(limit=6)[-2000:]}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["pid"] = os.getpid()
    return out


def _ray_task(fn, task):
    return _safe(fn, task)


def run_tasks(fn, tasks, *, workers=None, ray_address=None, cache=None, retries=3, log=None):
    """``[{"status", "result" or "error", "seconds", "reused"}]`` for every task, in order.

    ``workers`` 1 (and no ``ray_address``): in this process, one task after the other. Otherwise on Ray:
    a local instance with ``workers`` CPUs (default: this machine's), or the cluster at ``ray_address``;
    Ray retries a task whose worker died up to ``retries`` times. ``cache``: a folder where every finished
    task's result is stored (``<key>.json``) and found again; failed tasks are not stored, so a re-run
    tries them again."""
    cache = None if cache is None else Path(cache)
    results, todo = [None] * len(tasks), []
    for i, task in enumerate(tasks):
        hit = _cached(cache, fn, task)
        if hit is not None:
            results[i] = {**hit, "reused": True}
        else:
            todo.append(i)
    if log and len(todo) < len(tasks):
        log(f"reusing {len(tasks) - len(todo)} finished point(s) of {len(tasks)}")

    def done(i, out):
        out["reused"] = False
        results[i] = out
        if cache is not None and out["status"] == "ok":
            write_json(cache / f"{task_key(fn, tasks[i])}.json", {"task": tasks[i], **out})
        if log:
            n = sum(r is not None for r in results)
            what = "ok" if out["status"] == "ok" else f"FAILED: {out['error']}"
            log(f"[{n}/{len(tasks)}] {_label(tasks[i])}: {what} ({out['seconds']:.1f} s)")

    if not todo:
        return results
    if (workers or 0) == 1 and ray_address is None:
        for i in todo:
            done(i, _safe(fn, tasks[i]))
        return results
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, num_cpus=None if ray_address else (workers or os.cpu_count()),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=retries)(_ray_task)
        pending = {remote.remote(fn, tasks[i]): i for i in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except Exception as e:  # the worker died more often than the retries allow, or Ray failed
                out = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                       "seconds": 0.0}
            done(i, out)
    finally:
        if started:
            ray.shutdown()
    return results


def run_all(fn, tasks, *, workers=None, label="tasks"):
    """``fn(task)`` for every task through :func:`run_tasks` (no cache), with a progress line per finished
    task; the results in order. A failed task stops the whole with its error (benchmarks need every one)."""
    from .progress import progress_bar

    with progress_bar(label, len(tasks), lines=True) as tick:
        results = run_tasks(fn, tasks, workers=workers, log=lambda msg: msg.startswith("[") and tick())
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(tasks)} {label} failed; first: {failed[0]['error']}\n"
                           f"{failed[0].get('traceback', '')}")
    return [r["result"] for r in results]


def _cached(cache, fn, task):
    if cache is None:
        return None
    path = cache / f"{task_key(fn, task)}.json"
    if not path.is_file():
        return None
    try:
        entry = read_json(path)
    except UserError:
        return None  # damaged: run it again
    return {k: v for k, v in entry.items() if k != "task"} if entry.get("task") == task else None


def _label(task):
    if not isinstance(task, dict):
        return str(task)[:80]
    point = task.get("point", task)
    return " ".join(f"{k}={v}" for k, v in point.items() if k not in ("dir", "stages", "samples"))


# ---- sweep files -------------------------------------------------------------------------------------------

def _as_list(value):
    return value if isinstance(value, list) else [value]


def load_sweep(path):
    """(points, stages, samples) of a sweep file; a one-line error naming the file and the key."""
    from .fileio import read_yaml

    raw = read_yaml(path)
    if not isinstance(raw, dict) or raw.get("format") != SWEEP_FORMAT:
        raise UserError(f"{path}: expected a mapping with format: {SWEEP_FORMAT}")
    unknown = set(raw) - {"format", "grid", "points", "stages", "samples"}
    if unknown:
        raise UserError(f"{path}: unknown key {sorted(unknown)[0]!r}; keys: format, grid, points, stages, samples")
    stages = raw.get("stages", DEFAULT_STAGES)
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise UserError(f"{path}: stages: expected a list of {', '.join(STAGES)}, found {stages!r}")
    for s, needs in (("export", "train"), ("rtl", "export"), ("estimate", "export"), ("sim", "rtl"),
                     ("synth", "rtl"), ("pnr", "synth")):
        if s in stages and needs not in stages:
            raise UserError(f"{path}: stages: {s} needs {needs}")
    samples = raw.get("samples", 100)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise UserError(f"{path}: samples: expected a positive integer, found {samples!r}")
    points = []
    grid = raw.get("grid")
    if grid is not None:
        if not isinstance(grid, dict):
            raise UserError(f"{path}: grid: expected a mapping of option: value or [values]")
        keys = list(grid)
        points += [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(_as_list(grid[k]) for k in keys))]
    listed = raw.get("points", [])
    if not isinstance(listed, list) or not all(isinstance(p, dict) for p in listed):
        raise UserError(f"{path}: points: expected a list of mappings")
    points += listed
    if not points:
        raise UserError(f"{path}: no points: give a grid or a list of points")
    for k, point in enumerate(points):
        bad = set(point) - set(POINT_KEYS)
        if bad:
            raise UserError(f"{path}: point {k + 1}: unknown option {sorted(bad)[0]!r}; options: {', '.join(POINT_KEYS)}")
        _check_point(path, k, point)
    return points, stages, samples


def _check_point(path, k, point):
    """Options checked before anything runs, with the file and the point in the message."""
    from boards import load_board

    try:
        _train_config(point)
        load_board(point.get("board", "ice40-up5k"))
    except UserError as e:
        raise UserError(f"{path}: point {k + 1}: {e}") from None
    budget = point.get("lut_budget")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise UserError(f"{path}: point {k + 1}: lut_budget: expected a positive integer or null, found {budget!r}")


def _train_config(point):
    from .train import TrainConfig, parse_bits

    kw = {k: v for k, v in point.items() if k in TRAIN_KEYS and k != "bits"}
    if "bits" in point:
        kw["w_bits"], kw["a_bits"] = parse_bits(str(point["bits"]))
    try:
        return TrainConfig(**kw)
    except TypeError as e:
        raise UserError(str(e)) from None


# ---- one flow point ------------------------------------------------------------------------------------------

def flow_point(task):
    """Run a sweep point's stages in ``task["dir"]``; return its figures (plain data)."""
    from boards import load_board

    from . import golden
    from .data import load_dataset
    from .estimate import estimate
    from .export import export_run
    from .train import train

    point, stages, out = task["point"], task["stages"], Path(task["dir"])
    cfg = _train_config(point)
    board = load_board(point.get("board", "ice40-up5k"))
    res = {}
    metrics = train(cfg, out / "run", show_progress=False)
    res["accuracy"] = {"float": metrics["accuracy"]["float"], "fake_quant": metrics["accuracy"]["fake_quant"]}
    if "export" not in stages:
        return res
    ir = export_run(out / "run", out / "ir", force=True)
    data = load_dataset(ir.dataset, input_bits=ir.input_bits)
    res["accuracy"]["golden"] = float((golden.run(ir, data.x_test).argmax(1) == data.y_test).mean())
    if "estimate" in stages:
        est = estimate(ir, board, lut_budget=point.get("lut_budget"))
        res["estimate"] = {**est["totals"], "fits": est["fits"], "latency_cycles": est["latency_cycles"],
                           "initiation_interval_cycles": est["initiation_interval_cycles"],
                           "throughput_per_s": est["throughput_per_s"]}
    if "rtl" not in stages:
        return res
    from rtl_gen.emit import generate_rtl

    info = generate_rtl(ir, board, out / "rtl", lut_budget=point.get("lut_budget"), force=True)
    res["rtl"] = {"latency_cycles": info["latency_cycles"], "initiation_interval_cycles": info["initiation_interval_cycles"],
                  "throughput_per_s": info["throughput_per_s"], "folding": info["folding"]}
    if "sim" in stages:
        from sim.runner import simulate

        sim = simulate(ir, out / "rtl", samples=min(task["samples"], len(data.x_test)))
        res["sim"] = {k: sim[k] for k in ("samples", "bit_exact", "mismatched_samples", "accuracy", "latency_cycles",
                                          "initiation_interval_cycles", "throughput_per_s")}
    if "synth" in stages:
        from .synth import synth_rtl

        syn = synth_rtl(out / "rtl", board, pnr="pnr" in stages, show_progress=False)
        res["synth"] = {**syn["total"], "fits": syn["fits"]}
        res["fmax_mhz"] = syn["pnr"]["fmax_mhz"] if syn.get("pnr") else None
    return res


def run_sweep(path, out_dir, *, workers=None, ray_address=None, log=print):
    """Run a sweep file into ``out_dir``: every point's artifacts in ``out_dir/points/<key>/``, the results in
    ``sweep.json`` and the Pareto fronts in ``sweep.html``; return the sweep.json dict."""
    points, stages, samples = load_sweep(path)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for point in points:
        key = task_key(flow_point, {"point": point, "stages": stages, "samples": samples})
        tasks.append({"point": point, "stages": stages, "samples": samples, "dir": str(out / "points" / key)})
    t0 = time.perf_counter()
    results = run_tasks(flow_point, tasks, workers=workers, ray_address=ray_address, cache=out / "cache", log=log)
    wall = time.perf_counter() - t0
    report = {"format": "hwq-sweep-results/1", "hwq_version": __version__, "sweep": str(path), "stages": stages,
              "samples": samples, "workers": workers, "ray_address": ray_address, "wall_seconds": round(wall, 2),
              "points": [{"point": t["point"], "dir": t["dir"], **r} for t, r in zip(tasks, results, strict=True)]}
    report["failed"] = sum(r["status"] != "ok" for r in results)
    report["reused"] = sum(bool(r.get("reused")) for r in results)
    write_json(out / "sweep.json", report)
    write_text(out / "sweep.html", render_sweep_html(report))
    return report


def pareto(points):
    """Indices of the (x, y) points not dominated in (lower x, higher y)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2, y2) != (x, y) for x2, y2 in points):
            front.append(i)
    return front


def _row(p):
    """One table row of a point: its figures, or its error."""
    import html

    cells = [html.escape(_label(p)), p["status"]]
    if p["status"] != "ok":
        cells.append(f"<td colspan=8>{html.escape(p.get('error', ''))}</td>")
        return "<tr>" + "".join(f"<td>{c}</td>" for c in cells[:2]) + cells[2] + f"<td>{p['seconds']:.1f}</td></tr>"
    r = p["result"]
    res = r.get("synth") or r.get("estimate") or {}
    acc = r["accuracy"].get("golden", r["accuracy"]["fake_quant"])
    cells += [f"{acc:.4f}", *(str(res.get(k, "-")) for k in ("lut", "ff", "bram", "dsp")),
              str((r.get("rtl") or r.get("estimate") or {}).get("initiation_interval_cycles", "-")),
              f"{(r.get('rtl') or r.get('estimate') or {}).get('throughput_per_s', 0):,.0f}",
              str(r["sim"]["bit_exact"]) if "sim" in r else "-", f"{p['seconds']:.1f}"]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_sweep_html(report):
    """A self-contained page: accuracy against LUTs and against throughput per board (Pareto fronts marked),
    and a table of every point."""
    import html

    from .report import _axes, _png

    ok = [p for p in report["points"] if p["status"] == "ok"]
    figs = []
    for board in sorted({p["point"].get("board", "ice40-up5k") for p in ok}):
        rows = [p for p in ok if p["point"].get("board", "ice40-up5k") == board and "estimate" in p["result"]]
        if not rows:
            continue
        acc = [p["result"]["accuracy"].get("golden", p["result"]["accuracy"]["fake_quant"]) for p in rows]
        lut = [(p["result"].get("synth") or p["result"]["estimate"])["lut"] for p in rows]
        thr = [p["result"]["estimate"]["throughput_per_s"] for p in rows]
        for xs, label, log_x in ((lut, "LUTs (yosys where synthesized, else estimate)", False),
                                 (thr, "inferences/s at the board's clock", True)):
            fig, ax = _axes(5.0, 3.0)
            sign = -1 if log_x else 1  # throughput: higher is better
            front = set(pareto([(sign * x, a) for x, a in zip(xs, acc, strict=True)]))
            ax.scatter(xs, acc, color=["#e45756" if i in front else "#4c78a8" for i in range(len(xs))])
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("accuracy (golden)")
            ax.set_title(f"{board}: Pareto front in red")
            figs.append(f'<img alt="{html.escape(board)}" src="{_png(fig)}">')
    table = "".join(_row(p) for p in report["points"])
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>hwq sweep</title></head><body>"
            f"<h1>hwq sweep: {len(report['points'])} points</h1><p>{report['failed']} failed, {report['reused']} "
            f"reused, {report['wall_seconds']} s</p>{''.join(figs)}<table border=1 cellpadding=4 style='border-collapse:"
            f"collapse'><tr><th>point</th><th>status</th><th>accuracy (golden)</th><th>LUT</th><th>FF</th><th>BRAM</th>"
            f"<th>DSP</th><th>interval (cycles)</th><th>inferences/s</th><th>RTL bit-exact</th><th>seconds</th></tr>"
            f"{table}</table></body></html>\n")
