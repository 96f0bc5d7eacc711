"""Run yosys on generated Verilog and count resources per layer module and in total.

Cells are mapped to four resource kinds per family (``CELL_KINDS``). Results are cached by a hash of
the Verilog and the script in ``$HWQ_CACHE/synth`` (default ``~/.cache/hwq/synth``).
"""

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hwq.errors import UserError
from hwq.fileio import cache_dir, read_cache, write_cache
from hwq.names import NAME_EXPECTED, is_name

from . import RESOURCES

__all__ = ["CELL_KINDS", "YosysTimeout", "check_module_names", "count_resources", "stage_sources", "synthesize", "tool_env",
           "tool_work", "verilog_inputs", "yosys_version"]

# cell type -> (resource kind, how many of it one cell is)
CELL_KINDS = {
    "ice40": [
        (r"SB_LUT4", "lut", 1), (r"SB_DFF\w*", "ff", 1), (r"SB_RAM40_4K\w*", "bram", 1),
        (r"SB_SPRAM256KA", "bram", 1), (r"SB_MAC16", "dsp", 1),
    ],
    "ecp5": [
        (r"LUT4", "lut", 1), (r"CCU2C", "lut", 2), (r"TRELLIS_DPR16X4", "lut", 4), (r"TRELLIS_FF", "ff", 1),
        (r"DP16KD", "bram", 1), (r"MULT18X18D", "dsp", 1),
    ],
    "xilinx7": [
        (r"LUT[1-6]", "lut", 1), (r"INV", "lut", 1), (r"RAM(32|64|128|256)[MX]\w*", "lut", 1), (r"SRL\w*", "lut", 1),
        (r"FD[RSCP]E\w*", "ff", 1), (r"RAMB36E1", "bram", 1), (r"RAMB18E1", "bram", 0.5), (r"DSP48E1", "dsp", 1),
    ],
}


@functools.cache
def yosys_version():
    exe = shutil.which("yosys")
    if exe is None:
        return None
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout
    return out.strip()


def count_resources(family, cells_by_type):
    """Map yosys cell counts to {lut, ff, bram, dsp}; other cells (carry, IO) are not counted."""
    counts = dict.fromkeys(RESOURCES, 0)
    for cell, n in cells_by_type.items():
        for pattern, kind, weight in CELL_KINDS[family]:
            if re.fullmatch(pattern, cell.lstrip("\\$")):
                counts[kind] += n * weight
                break
    return {k: round(v) if k != "bram" else v for k, v in counts.items()}


def _parse_stat(text):
    """``stat -json`` output; yosys 0.23 sometimes prints the hierarchy as plain text inside the final
    "design" block, which breaks the JSON, so that block is dropped (totals come from the modules)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        cut = text.rfind('"design"')
        if cut < 0:
            raise
        return json.loads(text[: text.rfind(",", 0, cut)] + "}")


def _flat_cells(cells, name):
    """Cell counts of module ``name`` with its submodule instances expanded, recursively."""
    total = {}
    for cell, n in cells[name].items():
        sub = cell.lstrip("\\")
        parts = _flat_cells(cells, sub) if sub in cells else {cell: 1}
        for k, v in parts.items():
            total[k] = total.get(k, 0) + n * v
    return total


def verilog_inputs(verilog):
    """(source paths, bytes that determine them): ``verilog`` is one path or a list (read in order); the
    memory files they load (``mem/*.hex`` beside the first) count too. Tools run in the first file's
    folder, where the ``$readmemh`` paths are relative to."""
    sources = [Path(v) for v in ([verilog] if isinstance(verilog, (str, Path)) else verilog)]
    for path in sources:
        if not path.is_file():
            raise UserError(f"{path}: Verilog file not found")
    data = b"".join(p.read_bytes() for p in sources)
    for hex_file in sorted(sources[0].parent.glob("mem/*.hex")):
        data += hex_file.name.encode() + hex_file.read_bytes()
    return sources, data


def stage_sources(sources, work):
    """Copy the Verilog files into ``work`` as ``src0.v``, ``src1.v``, ... with the memory files beside the
    first (``mem/``), and return the yosys command that reads them. Tools then run in ``work`` on names
    that hwq chose: no user path (spaces, quotes, ``;``) ever reaches a yosys script."""
    work = Path(work)
    names = []
    for k, src in enumerate(sources):
        names.append(f"src{k}.v")
        shutil.copyfile(src, work / names[-1])
    mem = Path(sources[0]).parent / "mem"
    if mem.is_dir():
        (work / "mem").mkdir(exist_ok=True)
        for f in mem.glob("*.hex"):
            shutil.copyfile(f, work / "mem" / f.name)
    return "read_verilog " + " ".join(names)


_SAFE_PATH = re.compile(r"[A-Za-z0-9_/.+-]+")


def tool_env():
    """The environment for yosys and nextpnr, with a temporary folder whose path they can handle: yosys
    pastes ``$TMPDIR`` unquoted into ABC's command line, so a space or ``;`` there breaks synthesis."""
    tmp = tempfile.gettempdir()
    if _SAFE_PATH.fullmatch(tmp):
        return None  # inherit
    for cand in ("/tmp", "/var/tmp"):
        if os.path.isdir(cand) and os.access(cand, os.W_OK | os.X_OK):
            return {**os.environ, "TMPDIR": cand}
    raise UserError(f"TMPDIR {tmp!r}: yosys cannot work in a folder whose path has spaces or symbols; set "
                    f"TMPDIR to a path of letters, digits and / _ . + -")


@contextmanager
def tool_work(prefix):
    """(a temporary folder to run yosys or nextpnr in, their environment): both from :func:`tool_env`."""
    env = tool_env()
    with tempfile.TemporaryDirectory(prefix=prefix, dir=env and env["TMPDIR"]) as work:
        yield Path(work), env


def check_module_names(names, where):
    """Module names that go into a yosys script: identifiers, possibly dotted (``hwq_top.fc1``)."""
    for name in names:
        if not all(is_name(part) for part in str(name).split(".")):
            raise UserError(f"{where}: module name {name!r} is not {NAME_EXPECTED} (dotted paths allowed)")


class _Runs:
    """The yosys processes of one synthesis, so that an interrupted one (Ctrl-C, SIGTERM) kills every one of
    them at once, and none starts after."""

    def __init__(self):
        self.lock, self.procs, self.stopped = threading.Lock(), set(), False

    def start(self, args, **kw):
        with self.lock:
            if self.stopped:
                raise RuntimeError("synthesis stopped")
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
            self.procs.add(proc)
        return proc

    def done(self, proc):
        with self.lock:
            self.procs.discard(proc)

    def stop(self):
        with self.lock:
            self.stopped = True
            for proc in self.procs:
                proc.kill()


class YosysTimeout(RuntimeError):
    """yosys ran past its time limit (``timeout`` s) on ``module`` (``what``: sources and module, for the message)."""

    def __init__(self, what, timeout, module):
        super().__init__(f"yosys took longer than {timeout} s on {what}")
        self.timeout, self.module = timeout, module


def _run_yosys(exe, sources, script, timeout, what, runs=None, module=None):
    """Run one yosys script on ``sources`` (for ``module``) in a fresh folder; return (the parsed ``stat -json``,
    seconds)."""
    runs = runs or _Runs()
    with tool_work("hwq-synth-") as (work, env):
        stat = work / "stat.json"
        script = f"{stage_sources(sources, work)}; {script}; tee -q -o stat.json stat -json"
        t0 = time.perf_counter()
        proc = runs.start([exe, "-q", "-p", script], cwd=work, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise YosysTimeout(what, timeout, module) from None
        except BaseException:  # interrupted: yosys ends with us
            proc.kill()
            proc.communicate()
            raise
        finally:
            runs.done(proc)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0 or not stat.is_file():
            raise RuntimeError(f"yosys failed on {what}:\n{(err or out)[-2000:]}")
        return _parse_stat(stat.read_text()), seconds


def _cells(data):
    return {name.lstrip("\\"): mod["num_cells_by_type"] for name, mod in data["modules"].items()}


def synthesize(verilog, top, board, *, keep=(), timeout=1800, cache=True, split=False, jobs=1, progress=None):
    """Synthesize ``verilog`` (a path, or a list of paths) for ``board``; return resources per kept module
    and in total.

    ``keep`` names modules (e.g. ``hwq_top.fc1``) whose hierarchy is kept, so each gets its own count;
    everything else is flattened into its parent. The board's ``yosys_synth`` command is used.

    ``split`` (``keep``: children of ``top``): one yosys run per kept module, as the top of its own design,
    and one for ``top`` with them as black boxes; ``jobs`` of them at a time, so the counts never depend on
    ``jobs``. They are within a few percent of the single run's (yosys's ABC results depend a little on
    what else is in the design: the digits CNN on the UP5K, 3,077 LUTs against 3,176). ``progress(done, total)`` is called as the runs finish.
    """
    exe = shutil.which("yosys")
    if exe is None:
        raise UserError("yosys not found; install it with `sudo apt-get install -y yosys` (or run `make install` as root)")
    sources, data = verilog_inputs(verilog)
    check_module_names([top, *keep], sources[0])
    split = split and bool(keep)
    keep_cmd = f"setattr -mod -set keep_hierarchy 1 {' '.join(keep)}; " if keep else ""
    script_tail = f"{board.yosys_synth} -top {top}"
    key = hashlib.sha256(data + repr((top, keep_cmd, script_tail, yosys_version())).encode()
                         + (b"split" if split else b""))
    cached = cache_dir("synth") / f"{key.hexdigest()[:20]}.json"
    result = read_cache(cached) if cache else None
    if result is not None:
        result["cached"] = True
        return result
    t0 = time.perf_counter()
    if split:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        scripts = {m: f"hierarchy -top {m}; {board.yosys_synth} -top {m}" for m in keep}
        scripts[top] = f"hierarchy -top {top}; blackbox {' '.join(keep)}; {script_tail}"
        cells, runs = {}, _Runs()
        pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        try:
            futures = {pool.submit(_run_yosys, exe, sources, script, timeout, f"{sources[0]} ({m})", runs, m): m
                       for m, script in scripts.items()}
            for done, future in enumerate(as_completed(futures), 1):
                m = futures[future]
                cells[m] = _cells(future.result()[0])[m]
                if progress:
                    progress(done, len(futures))
        except BaseException:  # a failed run, Ctrl-C or SIGTERM: stop every run, let each remove its folder
            runs.stop()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    else:
        cells = _cells(_run_yosys(exe, sources, f"hierarchy -top {top}; {keep_cmd}{script_tail}", timeout,
                                  str(sources[0]), module=top)[0])
    seconds = time.perf_counter() - t0
    modules = {}
    for name, by_type in cells.items():
        own = {k: v for k, v in by_type.items() if k.lstrip("\\") not in cells}
        modules[name] = {**count_resources(board.family, own), "cells": own}
    total_cells = _flat_cells(cells, top)
    result = {
        "family": board.family,
        "command": script_tail,
        "yosys": yosys_version(),
        "modules": modules,
        "total": {**count_resources(board.family, total_cells), "cells": total_cells},
        "seconds": round(seconds, 2),
        "runs": len(keep) + 1 if split else 1,
        "cached": False,
    }
    if cache:
        write_cache(cached, result)
    return result
