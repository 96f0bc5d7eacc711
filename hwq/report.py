"""report.html: a self-contained page (no network: figures are inline PNGs drawn with matplotlib) with the
flow's results: the accuracy chain, resources against the board, per-layer cycles with the bottleneck,
estimate against synthesis, the bits, Fmax and throughput when place and route ran, and the allocation
frontier when allocation ran."""

import base64
import html
import io
import threading

__all__ = ["figures", "render_html", "warm_up"]


def warm_up():
    """Import matplotlib and draw one small figure (its font cache) in a thread; return the thread. The flow
    starts it while Verilator compiles (a subprocess: the interpreter is idle) and joins it before drawing:
    about 1 s of a re-run's 9 s. pyplot is not thread-safe, so nothing else draws until it is joined."""
    def draw():
        fig, _ = _axes(1, 1)
        _png(fig)

    thread = threading.Thread(target=draw, name="hwq-plot-warm-up", daemon=True)
    thread.start()
    return thread

def _array_text(array):
    return f"{array[0]}x{array[1]}" if array else "-"


def _or_dash(value):
    return "-" if value is None else str(value)


def _p_text(p):
    return "-" if p is None else f"{p:.2g}"


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
    if tot.get("fmax_mhz"):
        speed = (f"{tot.get('throughput_at_fmax_per_s') or 0:,.0f} inferences/s at the measured Fmax of "
                 f"{tot['fmax_mhz']} MHz (nextpnr); {tot['throughput_inferences_per_s']:,.0f}/s at the board's "
                 f"{tot['clock_mhz']:g} MHz clock")
    else:
        speed = (f"{tot['throughput_inferences_per_s']:,.0f} inferences/s at the board's {tot['clock_mhz']:g} MHz "
                 f"clock (Fmax not measured: hwq flow --synth places and routes where the board has an open tool)")
    figs = "".join(f'<figure><img alt="{e(t)}" src="{uri}"><figcaption>{e(t)}</figcaption></figure>'
                   for t, uri in figures(report))
    cap = report.get("board_resources") or {}
    cap_line = ", ".join(f"{cap[k]:,} {k.upper() if k != 'cells' else 'logic cells'}" for k in
                         ("lut", "ff", "bram", "dsp", "cells") if cap.get(k) is not None)
    made = " ".join(filter(None, [f"hwq {e(str(report.get('hwq_version', '?')))}", e(report.get("date") or "")]))
    cmd = f"<code>{e(' '.join(report['command']))}</code>" if report.get("command") else "(called from Python)"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hwq report: {e(report['model'])} on {e(report['board'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}}table{{border-collapse:collapse}}
figure{{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}}figure img{{max-width:34em}}
figcaption{{font-size:.85em;color:#555}}.meta{{color:#555;font-size:.9em}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>hwq report</h1>
<p>{e(report['model'])} on {e(report['dataset'])}, method {e(report['method'])}, board {e(report['board'])}
({e(cap_line)}): <b>{verdict}</b>, {speed}.</p>
<p class="meta">Made by {made}: {cmd}</p>
<h2>Figures</h2>
{figs}
<h2>Accuracy</h2>
<table><tr><th>float</th><th>fake-quant</th><th>golden ({acc['golden_samples']})</th><th>RTL ({acc['rtl_samples']})</th></tr>
<tr><td>{_acc_text(acc['float'])}</td><td>{_acc_text(acc['fake_quant'])}</td><td>{acc['golden']:.4f}</td><td>{acc['rtl']:.4f}</td></tr></table>
<h2>Checks</h2>
<ul><li>RTL vs golden over {be['samples']} samples: <b>{verdict}</b></li>
{_source_checks(report)}</ul>
<h2>Layers</h2>
<table><tr><th>layer</th><th>engine</th><th>W/A/out bits</th><th>acc bits</th><th>array</th><th>LUT (est.)</th>
<th>LUT (yosys)</th><th>FF (est.)</th><th>FF (yosys)</th><th>cycles (est.)</th><th>cycles (sim)</th></tr>{rows}</table>
<h2>Totals</h2>
<p>Latency {tot['latency_cycles_sim']} cycles (simulated), {tot['initiation_interval_cycles_sim']} cycles between inputs;
{speed}.
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
    finalists = "".join(
        f"<tr><td>{e(f['label'])}</td><td>{e(' '.join(str(b['w_bits']) for b in f['bits'].values()))}</td>"
        f"<td>{e(' '.join(str(b['a_bits']) for b in f['bits'].values()))}</td><td>{f['val_acc']:.4f}</td>"
        f"<td>{f['est_lut']}</td><td>{_p_text(f.get('p_over_uniform'))}</td></tr>"
        for f in alloc.get("finalists") or [])
    if finalists:
        finalists = ("<h3>Finalists (fine-tuned; the first was built: the most accurate on the validation split, "
                     "unless it is a mixed setting that did not beat the best uniform one by the sign test)</h3>"
                     "<table><tr><th>finalist</th><th>W per layer</th><th>A per layer</th><th>validation accuracy</th>"
                     f"<th>LUT (program)</th><th>p against uniform</th></tr>{finalists}</table>")
    speed = ", ".join(f"{k.replace('_', ' ')} at most {v}" for k, v in
                      (("interval_cycles", lim.get("interval_cycles")), ("latency_cycles", lim.get("latency_cycles")))
                      if v is not None) or "no speed target"
    return f"""<h2>Bit allocation</h2>
<p>Chosen by <code>hwq allocate</code> ({e(alloc['cost'])} cost, {e(alloc['sensitivity'])} sensitivity) within
{lim['lut']:.0f} LUTs, {e(speed)}, in {alloc['rounds']} round(s); {'meets' if alloc['meets_budget'] else 'MISSES'}
the budget. Input bits (a) of each layer are its producer's output bits.</p>
<table><tr><th>layer</th><th>weight bits</th><th>input bits</th></tr>{bits}</table>
{finalists}
<h3>Frontier (least sensitivity at each LUT budget, as the program estimates it)</h3>
<table><tr><th>LUT budget</th><th>sensitivity</th><th>LUT</th><th>interval</th><th>W</th><th>A</th></tr>{front}</table>"""


def _png(fig):
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _axes(width=6.4, height=3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _fig_resources(report):
    """Each resource as a share of the board: the estimate, and yosys (and nextpnr's cells) when run."""
    cap, tot = report.get("board_resources") or {}, report["totals"]
    kinds = [k for k in ("lut", "ff", "bram", "dsp", "cells") if cap.get(k)]
    if not kinds:
        return None
    est = [100 * tot["estimate"].get(k, 0) / cap[k] for k in kinds]
    syn = None
    if tot["synth"]:
        cells = ((tot.get("pnr") or {}).get("utilization") or {}).get("ICESTORM_LC", {}).get("used")
        syn = [100 * ((cells or 0) if k == "cells" else tot["synth"].get(k, 0)) / cap[k] for k in kinds]
    fig, ax = _axes()
    x = range(len(kinds))
    w = 0.38 if syn else 0.6
    ax.bar([i - (w / 2 if syn else 0) for i in x], est, w, label="estimate", color="#4c78a8")
    if syn:
        ax.bar([i + w / 2 for i in x], syn, w, label="yosys / nextpnr", color="#f58518")
    ax.axhline(100, color="#c00", lw=1, ls="--")
    ax.set_xticks(list(x), [f"{k.upper()}\n({cap[k]:,})" for k in kinds])
    ax.set_ylabel("% of the board")
    ax.set_title(f"resources on {report['board']}")
    ax.legend(frameon=False)
    return _png(fig)


def _fig_cycles(report):
    """Cycles per layer (simulated), the slowest stage (the initiation interval) marked."""
    layers = [la for la in report["layers"] if la["sim"]["cycles"]]
    if not layers:
        return None
    cycles = [la["sim"]["cycles"] for la in layers]
    worst = max(cycles)
    fig, ax = _axes()
    ax.bar([la["name"] for la in layers], cycles, color=["#e45756" if c == worst else "#72b7b2" for c in cycles])
    ax.set_ylabel("cycles per inference")
    ax.set_title(f"cycles per layer (bottleneck in red; a new input every "
                 f"{report['totals']['initiation_interval_cycles_sim']} cycles)")
    ax.tick_params(axis="x", rotation=45)
    return _png(fig)


def _fig_estimate_vs_synth(report):
    """LUTs per layer: the estimate against yosys, with the error; the estimate alone when synthesis did not run."""
    layers = [la for la in report["layers"] if la["estimate"]["lut"] or (la["synth"] and la["synth"]["lut"])]
    if not layers:
        return None
    fig, ax = _axes()
    names = [la["name"] for la in layers]
    est = [la["estimate"]["lut"] for la in layers]
    x = range(len(names))
    if all(la["synth"] for la in layers):
        syn = [la["synth"]["lut"] for la in layers]
        ax.bar([i - 0.2 for i in x], est, 0.4, label="estimate", color="#4c78a8")
        ax.bar([i + 0.2 for i in x], syn, 0.4, label="yosys", color="#f58518")
        for i, (a, b) in enumerate(zip(est, syn, strict=True)):
            if b:
                ax.annotate(f"{100 * (a - b) / b:+.0f}%", (i, max(a, b)), ha="center", va="bottom", fontsize=8)
        ax.set_title("LUTs per layer: estimate against yosys (error in %)")
        ax.legend(frameon=False)
    else:
        ax.bar(names, est, color="#4c78a8")
        ax.set_title("estimated LUTs per layer (run with --synth to compare with yosys)")
    ax.set_xticks(list(x), names, rotation=45)
    ax.set_ylabel("LUTs")
    return _png(fig)


def _acc_text(value):
    return "-" if value is None else f"{value:.4f}"


def _source_checks(report):
    """The checks of where the IR came from: the PyTorch integer path (trained), or qonnx's executor."""
    be, source = report["bit_exact"], report.get("source") or {"kind": "trained"}
    if source["kind"] == "qonnx":
        return (f"<li>imported from {html.escape(source['source'])}: qonnx's executor vs golden on "
                f"{source['samples']} samples ({html.escape(source['inputs'])}): "
                f"<b>{'equal' if be['golden_vs_qonnx'] else 'DIFFERENT'}</b></li>")
    return (f"<li>PyTorch integer path vs golden: <b>{'equal' if be['golden_vs_torch_integer'] else 'DIFFERENT'}</b></li>"
            f"<li>fake-quant vs golden prediction mismatches: {be['fake_quant_prediction_mismatches']} "
            f"({be['fake_quant_mismatches_logit_ties']} logit ties, {be['fake_quant_mismatches_multiply_shift_rounding']} "
            f"multiply-shift rounding, {be['fake_quant_mismatches_unexplained']} unexplained)</li>")


def _fig_accuracy(report):
    acc = report["accuracy"]
    steps = [("float", acc["float"]), ("fake-quant", acc["fake_quant"]), ("golden", acc["golden"]),
             (f"RTL ({acc['rtl_samples']})", acc["rtl"])]
    steps = [(s, v) for s, v in steps if v is not None]  # an imported model has no float or fake-quant figure
    fig, ax = _axes(5.0, 2.8)
    ax.plot([s for s, _ in steps], [v for _, v in steps], marker="o", color="#54a24b")
    for i, (_, v) in enumerate(steps):
        ax.annotate(f"{v:.4f}", (i, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    lo = min(v for _, v in steps)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(v for _, v in steps) + 0.03))
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy from float to hardware")
    return _png(fig)


def _fig_bits(report):
    layers = [la for la in report["layers"] if la["w_bits"] is not None]
    if not layers:
        return None
    fig, ax = _axes(5.0, 2.8)
    x = range(len(layers))
    ax.bar([i - 0.2 for i in x], [la["w_bits"] for la in layers], 0.4, label="weights", color="#b279a2")
    ax.bar([i + 0.2 for i in x], [la["a_bits"] for la in layers], 0.4, label="input activations", color="#9d755d")
    ax.set_xticks(list(x), [la["name"] for la in layers], rotation=45)
    ax.set_yticks(range(0, 10, 2))
    ax.set_ylabel("bits")
    ax.set_title("bits per layer")
    ax.legend(frameon=False)
    return _png(fig)


def _fig_frontier(report):
    alloc = report.get("allocation")
    points = [p for p in ((alloc or {}).get("frontier") or {}).get("lut", []) if p.get("feasible")]
    if not points:
        return None
    fig, ax = _axes(5.0, 2.8)
    ax.plot([p["lut"] for p in points], [p["score"] for p in points], marker="o", color="#4c78a8")
    chosen = alloc["bits"]
    ax.set_xlabel("estimated LUTs")
    ax.set_ylabel("summed sensitivity (lower is better)")
    ax.set_title(f"allocation frontier ({len(chosen)} layers)")
    return _png(fig)


def figures(report):
    """[(title, PNG data URI)] of the report's figures (those that apply to this run)."""
    makers = [("Accuracy", _fig_accuracy), ("Resources against the board", _fig_resources),
              ("Cycles per layer", _fig_cycles), ("Estimate and synthesis", _fig_estimate_vs_synth),
              ("Bits per layer", _fig_bits), ("Allocation frontier", _fig_frontier)]
    return [(title, uri) for title, make in makers if (uri := make(report)) is not None]
