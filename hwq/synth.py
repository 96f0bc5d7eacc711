"""``hwq synth``: yosys resource counts per layer and in total for a generated RTL directory."""

from boards import RESOURCES

from .fileio import write_json

__all__ = ["SYNTH_FORMAT", "synth_rtl"]

SYNTH_FORMAT = "hwq-synth/1"


def synth_rtl(rtl_dir, board, *, pnr=False, show_progress=True, jobs=None, timeout=None):
    """Synthesize the Verilog of ``rtl_dir`` for ``board``; write and return ``rtl_dir/synth.json``.

    Each layer's module is synthesized by its own yosys run, and the top with them as black boxes, ``jobs``
    runs at a time (default: the machine's cores); the counts do not depend on ``jobs``. ``timeout``: seconds
    one yosys run may take (default: :func:`boards.synth.synthesize`'s 1,800).
    With ``pnr``, also place and route with nextpnr (when the board's family has an open tool) and
    record Fmax and the placer's utilization under ``"pnr"``; otherwise ``"pnr"`` is null.
    """
    import os
    from pathlib import Path

    from boards.synth import synthesize
    from rtl_gen.emit import verilog_sources
    from sim.runner import load_rtl

    from .progress import progress_bar, status

    rtl_dir = Path(rtl_dir)
    info = load_rtl(rtl_dir)
    top = info["top"]
    names = [la["name"] for la in info["layers"] if la.get("stage") is not None]
    jobs = jobs or os.cpu_count() or 1
    with progress_bar(f"yosys {board.yosys_synth} on {rtl_dir}, {jobs} at a time: module", total=len(names) + 1,
                      enabled=show_progress, lines=True) as tick:
        syn = synthesize(verilog_sources(rtl_dir, info), top, board, keep=[f"{top}.{n}" for n in names],
                         split=True, jobs=jobs, progress=lambda *_: tick(), **({"timeout": timeout} if timeout else {}))
    # one entry per IR layer; a layer without hardware (flatten) costs nothing
    layers = [{"name": la["name"], **{k: (syn["modules"][f"{top}.{la['name']}"][k] if la["name"] in names else 0)
                                      for k in RESOURCES}} for la in info["layers"]]
    total = {k: syn["total"][k] for k in RESOURCES}
    result = {
        "format": SYNTH_FORMAT,
        "board": board.name,
        "family": board.family,
        "command": syn["command"],
        "yosys": syn["yosys"],
        "layers": layers,
        "top": {k: syn["modules"][top][k] for k in RESOURCES},
        "total": total,
        "utilization": {k: (total[k] / getattr(board, k) if getattr(board, k) else None) for k in RESOURCES},
        "fits": board.fits(total),
        "seconds": syn["seconds"],
        "jobs": jobs,
        "cached": syn["cached"],
        "pnr": None,
    }
    if pnr and board.pnr is not None:
        from boards.pnr import PnrError, place_and_route

        with status(f"{board.pnr['tool']} {' '.join(board.pnr['args'])} (place and route)", enabled=show_progress):
            try:
                result["pnr"] = place_and_route(rtl_dir, info, board)
            except PnrError as exc:  # e.g. the design does not fit: a result, not a crash
                result["pnr"] = {"tool": board.pnr["tool"], "fmax_mhz": None, "error": str(exc)}
                result["fits"] = False
    write_json(rtl_dir / "synth.json", result)
    return result
