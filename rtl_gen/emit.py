"""Emit the Verilog of a network for a board: ``top.v`` (the network top), one file per layer (its engine
module and the modules inside it), memory init files (``mem/*.hex``, the weight and parameter ROMs,
loaded with ``$readmemh``) and ``rtl.json`` (every engine's parameters, the file list).

``$readmemh`` paths are relative to the RTL directory: yosys finds them next to the Verilog; a simulator
runs there (``hwq sim`` does). :func:`verilog_sources` lists the Verilog files in reading order.
"""

import hashlib
import re
import time
from dataclasses import asdict
from pathlib import Path

from amaranth.back import verilog

from hwq.fileio import read_json, write_json
from hwq.ir import atomic_dir, check_size, ir_digest
from hwq.names import inside

from .add import AddPlan
from .engine import EnginePlan
from .folding import check_folding, choose_folding
from .plan import as_folding, network_plan
from .pool import AvgPoolPlan
from .shortcut import ShortcutPlan
from .top import NetworkTop

__all__ = ["MEM_DIR", "RTL_FORMAT", "TOP_NAME", "describe", "generate_rtl", "split_verilog", "verilog_sources"]

RTL_FORMAT = "hwq-rtl/3"
TOP_NAME = "hwq_top"
MEM_DIR = "mem"

# A module with the attribute lines before it; a memory with its initial contents (Amaranth's output).
_MODULE = re.compile(r"((?:\(\*[^\n]*\*\)\n)*)module ([^\s(]+) ?\(.*?^endmodule\n", re.S | re.M)
_MEMORY = re.compile(r"^  reg \[(\d+):0\] (\S+) \[(\d+):0\];\n  initial begin\n((?:    .*\n)*?)  end\n", re.M)
_WORD = re.compile(r"^    \S+\[(\d+)\] = \d+'([hd])([0-9a-fA-F]+);$")


def _externalize_memories(module_text, prefix):
    """Replace each memory's inline contents with ``$readmemh``; return (text, {path: hex text})."""
    files = {}

    def replace(match):
        msb, name, depth_msb, body = match.group(1), match.group(2), int(match.group(3)), match.group(4)
        words = [0] * (depth_msb + 1)
        for line in body.splitlines():
            word = _WORD.match(line)
            if word is None:
                raise RuntimeError(f"unexpected memory initialisation in Amaranth's Verilog: {line.strip()!r}")
            k, base, digits = word.groups()
            words[int(k)] = int(digits, 16 if base == "h" else 10)
        path = f"{MEM_DIR}/{prefix}.{name.lstrip(chr(92)).replace('$', '_')}.hex"
        digits = (int(msb) + 4) // 4
        files[path] = "".join(f"{w:0{digits}x}\n" for w in words)
        ref = f"{name} " if name.startswith("\\") else name  # an escaped identifier ends at a space
        # ascending addresses: $readmemh fills from the lowest address under Verilog-1995, -2005 and SV alike
        return f"  reg [{msb}:0] {name} [0:{depth_msb}];\n  initial $readmemh(\"{path}\", {ref});\n"

    return _MEMORY.sub(replace, module_text), files


# yosys' write_verilog makes every `always @*` read a register initialised to 0 (declared in each module),
# so that the block runs at time 0. That relies on the initialiser being an event at time 0, which it is
# under Verilog-2005 rules but not under SystemVerilog's (initialisers take effect before time 0): there
# the blocks stay X until an input changes and the design hangs (seen in Icarus -g2012).
_TIME0_REG = re.compile(r"^  reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;\n", re.M)


def _portable(module_text):
    """Make a module's combinational blocks read ``clk`` instead of yosys' time-0 register: they run on
    every clock edge, so two edges (in reset) give every block, and through the synchronous reset every
    register, a defined value under Verilog-2005 and SystemVerilog-2012 rules alike. The read is an empty
    ``if``: synthesis and Verilator see the same logic as before."""
    regs = _TIME0_REG.findall(module_text)
    if not regs:
        return module_text
    header = module_text[: module_text.index(";")]
    if not re.search(r"[(, ]clk[,)]", header):
        raise RuntimeError("a module of Amaranth's Verilog has combinational blocks but no clk port")
    text = _TIME0_REG.sub("", module_text)
    for reg in regs:
        text = text.replace(f"if ({reg}) begin end", "if (clk) begin end")
    if "dump_module$" in text:
        raise RuntimeError("Amaranth's Verilog reads yosys' time-0 register in an unexpected way")
    return text


def split_verilog(text, stage_names):
    """Amaranth's single Verilog text -> {relative path: contents}: ``top.v`` with the top module, and per
    stage ``<name>.v`` with the stage's module and every module inside it, whose memories are loaded from
    ``mem/<module path>.<memory>.hex``."""
    header = text[: text.index("\n") + 1] if text.startswith("/*") else ""
    files = {"top.v": [header]}
    for name in stage_names:
        files[f"{name}.v"] = [header]
    data, covered = {}, len(header)
    for match in _MODULE.finditer(text):
        covered += len(match.group(0))
        module, body = match.group(2).lstrip("\\"), _portable(match.group(0))
        parts = module.split(".")
        if len(parts) > 1 and parts[0] == TOP_NAME and parts[1] in stage_names:
            body, mems = _externalize_memories(body, ".".join(parts[1:]))
            data.update(mems)
            files[f"{parts[1]}.v"].append("\n" + body)
        else:
            files["top.v"].append("\n" + body)
    if covered != len(text) - text.count("\n\n"):  # modules are separated by one blank line
        raise RuntimeError("Amaranth's Verilog has text outside its modules; the per-layer split would lose it")
    out = {path: "".join(chunks) for path, chunks in files.items()}
    out.update(data)
    return out


def verilog_sources(rtl_dir, info=None):
    """The Verilog files of an RTL directory, in reading order (``rtl.json``'s list; ``top.v`` alone for
    directories written before there were per-layer files)."""
    rtl_dir = Path(rtl_dir)
    if info is None:
        info = read_json(rtl_dir / "rtl.json")
    return [inside(rtl_dir, f) for f in info.get("files", ["top.v"]) if f.endswith(".v")]


def _engine_info(p):
    """rtl.json's fields of a layer engine (an EnginePlan)."""
    return {
        "array": [p.rows, p.cols], "lanes": p.lanes, "w_bits": p.w_bits, "a_bits": p.a_bits, "out_bits": p.out_bits,
        "acc_bits": p.acc_bits, "requant": p.kind, "param_bits": p.param_bits, "positions": p.positions,
        "tiles": [p.positions, p.n_out_tiles, p.n_in_tiles], "macs": p.macs,
        "macs_per_cycle": round(p.macs / p.latency, 3), "dsp": p.dsp, "dsp_blocks": p.dsp_blocks,
    }


def _stage_info(stage, index, skips, family):
    p = stage.plan
    info = {"stage": index, "engine": stage.kind, "latency_cycles": p.latency, "period_cycles": stage.period}
    skip = next((s["name"] for s in skips if s["to"] == stage.layer.name), None)
    if isinstance(p, EnginePlan):
        info.update(_engine_info(p))
    elif isinstance(p, AddPlan):
        info.update({"array": [p.lanes, 1], "lanes": p.lanes, "bits": p.out_bits, "reads": p.words,
                     "inputs": [[p.a_bits, p.a_signed], [p.b_bits, p.b_signed]], "param_bits": p.param_bits,
                     "skip": skip})
    elif isinstance(p, ShortcutPlan):  # the shortcut layer's engine, then its add
        a = p.add
        info.update({**_engine_info(p.engine), "shortcut": stage.shortcut.name, "out_bits": a.out_bits,
                     "reads": p.engine.in_words, "inputs": [[a.a_bits, a.a_signed], [a.b_bits, a.b_signed]],
                     "add_param_bits": a.param_bits, "skip": skip})
    elif isinstance(p, AvgPoolPlan):
        info.update({"array": [p.lanes, 1], "lanes": p.lanes, "bits": p.out_bits, "reads": p.n_reads,
                     "inputs": [[p.bits, p.is_signed]], "param_bits": p.param_bits})
    else:
        info.update({"array": [p.lanes, 1], "lanes": p.lanes, "bits": p.bits, "reads": p.n_reads})
    if getattr(p, "memories", None):
        from boards.model import bram_blocks

        info["memories"] = [{"name": f"{stage.layer.name}.{name}", "depth": depth, "width": width, "memory": style,
                             "bram_blocks": bram_blocks(family, depth, width) if style == "block" else 0}
                            for name, depth, width, style in p.memories]
    return info


def _memory_info(name, b, family):
    return {"name": name, **asdict(b), "total_bits": b.total_bits, "memory": b.style,
            "bram_blocks": b.bram_blocks(family)}


def describe(plan, ir, board, folding):
    """The rtl.json dict: one entry per IR layer (flatten has no hardware: ``stage`` null)."""
    by_name = {s.layer.name: (k, s) for k, s in enumerate(plan.stages)}
    skips = [{**_memory_info(f"skip{j}", s.buffer, board.family), "from": plan.stages[s.producer].layer.name,
              "to": plan.stages[s.consumer].layer.name} for j, s in enumerate(plan.skips)]
    layers = []
    built_into = plan.built_into  # a shortcut layer's hardware is in its add's stage
    for layer in ir.layers:
        entry = {"name": layer.name, "op": layer.op}
        if layer.name in by_name:
            entry.update(_stage_info(by_name[layer.name][1], by_name[layer.name][0], skips, board.family))
        else:
            entry.update({"stage": None, "engine": "none", "latency_cycles": 0, "period_cycles": 0})
            if layer.name in built_into:
                entry["in_stage"] = built_into[layer.name]
        layers.append(entry)
    buffers = [_memory_info(f"buffer{k}", b, board.family) for k, b in enumerate(plan.buffers)]
    return {
        "format": RTL_FORMAT,
        "top": TOP_NAME,
        "board": board.name,
        "clock_mhz": board.clock_mhz,
        "folding": as_folding(folding).to_json(),
        "input": {"features": ir.in_features, "bits": ir.input_bits, "shape": list(plan.input_shape),
                  "word_lanes": plan.buffers[0].lanes, "load_cycles": plan.load_cycles},
        "output": {"features": plan.out_features, "bits": plan.out_bits, "signed": True},
        "latency_cycles": plan.latency,
        "initiation_interval_cycles": plan.initiation_interval,
        "throughput_per_s": round(board.clock_mhz * 1e6 / plan.initiation_interval, 1),
        "counter_bits": plan.counter_bits,
        "dsp_blocks": plan.dsp_blocks,
        "stages": [s.layer.name for s in plan.stages],
        "layers": layers,
        "buffers": buffers,
        "skips": skips,
        "files": ["top.v", *(f"{s.layer.name}.v" for s in plan.stages)],
    }


def generate_rtl(ir, board, out_dir, *, fold=None, lut_budget=None, folding=None, force=False):
    """Choose the folding (or take ``folding``: a :class:`rtl_gen.plan.Folding` or just the word widths),
    write the Verilog, memory files and ``rtl.json`` into ``out_dir`` (replacing it whole); return the
    rtl.json dict. ``force``: replace a non-empty folder that hwq did not write (:func:`hwq.ir.atomic_dir`)."""
    t0 = time.perf_counter()
    check_size(ir)
    folding = as_folding(folding) if folding else choose_folding(ir, board, lut_budget=lut_budget, fold=fold)
    plan = network_plan(ir, folding)
    check_folding(plan, board)
    top = NetworkTop(plan)
    text = verilog.convert(top, name=TOP_NAME, emit_src=False)
    info = describe(plan, ir, board, folding)
    files = split_verilog(text, [s.layer.name for s in plan.stages])
    info["memory_files"] = sorted(f for f in files if f.startswith(f"{MEM_DIR}/"))
    # provenance: the IR it came from, and every file's contents (checked by hwq sim and hwq synth)
    info["ir_sha256"] = ir_digest(ir)
    info["file_sha256"] = {f: hashlib.sha256(files[f].encode()).hexdigest() for f in sorted(files)}
    info["seconds"] = round(time.perf_counter() - t0, 3)
    with atomic_dir(out_dir, force=force) as tmp:
        Path(tmp, MEM_DIR).mkdir()
        for path, content in files.items():
            inside(tmp, path).write_text(content)
        write_json(Path(tmp, "rtl.json"), info)
    return info
