"""hwq's Python API: one object, :class:`Design`, from a network to checked hardware.

Get a design by training (:meth:`Design.train`), from an IR folder (:func:`load`), from a QONNX file
(:func:`import_qonnx`) or from a trained hwq model (:meth:`Design.from_model`); then call its stages,
each of which returns plain data (dicts of numbers, strings and lists, as the CLI's JSON files)::

    import hwq
    d = hwq.Design.train("out", model="mlp", bits="2/2", epochs_float=5, epochs_qat=5)
    d.estimate("ice40-up5k")          # resources and cycles, per layer and in total
    d.rtl("ice40-up5k", "out/rtl")    # Verilog; returns rtl.json
    d.simulate(samples=50)            # Verilator against the golden model; returns sim.json
    d.report()                        # what has run so far

docs/api.md has runnable examples (the tests run them).
"""

from pathlib import Path

import numpy as np

from .errors import UserError

__all__ = ["Design", "import_qonnx", "load"]


class Design:
    """An integer network (hwq's IR) and what has been built from it.

    ``ir`` is the :class:`hwq.ir.IR`; ``ir_dir`` the folder it lives in (None until written);
    ``metrics`` the training metrics when it was trained here. Every stage returns plain data and keeps
    it, so that :meth:`report` can gather it.
    """

    def __init__(self, ir, ir_dir=None, *, metrics=None, source=None):
        self.ir, self.ir_dir, self.metrics, self.source = ir, ir_dir, metrics, source
        self.board = self.rtl_dir = None
        self.results = {}

    def __repr__(self):
        layers = ", ".join(f"{la.name}:{la.op}" for la in self.ir.layers)
        return f"Design({self.ir.model} on {self.ir.dataset}: {layers})"

    @classmethod
    def train(cls, out, *, requant="auto", show_progress=False, **options):
        """Train (``options``: :class:`hwq.train.TrainConfig`'s fields, e.g. ``model="cnn"``, ``bits="2/2"``
        or ``w_bits=2, a_bits=2``, ``method="uniq"``, ``epochs_qat=20``) into ``out/run`` and export the
        IR to ``out/ir``; return the design. (A classmethod: ``hwq.train`` is the training module.)"""
        from .export import export_run
        from .train import TrainConfig, parse_bits
        from .train import train as train_run

        if "bits" in options:
            options["w_bits"], options["a_bits"] = parse_bits(options.pop("bits"))
        out = Path(out)
        metrics = train_run(TrainConfig(**options), out / "run", show_progress=show_progress)
        ir = export_run(out / "run", out / "ir", requant=requant)
        return cls(ir, out / "ir", metrics=metrics, source={"kind": "trained", "run": str(out / "run")})

    @classmethod
    def from_model(cls, model, out=None, *, dataset="digits", method="custom", requant="auto"):
        """The design of a trained :class:`hwq.models.QuantNet` (e.g. ``hwq.train.load_run(RUN)[0]`` after
        your own fine-tuning), exported to the integer IR (written to ``out`` when given)."""
        from .export import export_model
        from .ir import save_ir

        ir = export_model(model, dataset=dataset, method=method, requant=requant)
        if out is not None:
            save_ir(ir, out)
        return cls(ir, None if out is None else Path(out), source={"kind": "pytorch"})

    def layers(self):
        """Per layer: name, op, bits and shapes (plain data)."""
        return [{"name": la.name, "op": la.op, "w_bits": la.w_bits, "a_bits": la.a_bits, "out_bits": la.out_bits,
                 "in_shape": list(la.in_shape), "out_shape": list(la.out_shape)} for la in self.ir.layers]

    def to_qonnx(self, path):
        """Write the design as a QONNX file (as ``hwq export --qonnx``): what FINN and qonnx's tools read."""
        from .fileio import atomic_path
        from .qonnx_export import write_qonnx

        with atomic_path(path) as tmp:
            write_qonnx(self.ir, tmp)
        return str(path)

    def golden(self, inputs):
        """The golden (integer numpy) model's logits for input codes (N, *input shape) or (N, features)."""
        from . import golden

        return golden.run(self.ir, np.asarray(inputs, dtype=np.int64))

    def estimate(self, board="ice40-up5k", *, lut_budget=None, fold=None):
        """Resources and cycles per layer and in total on ``board`` (a name or a board YAML path), with the
        folding ``rtl`` would choose: as ``hwq estimate --out``."""
        from .estimate import estimate

        self.results["estimate"] = estimate(self.ir, _board(board), lut_budget=lut_budget, fold=fold)
        return self.results["estimate"]

    def rtl(self, board="ice40-up5k", out=None, *, lut_budget=None, fold=None, force=False):
        """Generate the Verilog for ``board`` into ``out`` (default: ``rtl`` beside the IR); return rtl.json."""
        from rtl_gen.emit import generate_rtl

        if out is None:
            if self.ir_dir is None:
                raise UserError("rtl(): give out= (this design has no folder yet)")
            out = Path(self.ir_dir).parent / "rtl"
        self.board = _board(board)
        info = generate_rtl(self.ir, self.board, out, lut_budget=lut_budget, fold=fold, force=force)
        self.rtl_dir = Path(out)
        self.results["rtl"] = info
        return info

    def simulate(self, inputs=None, *, samples=100, simulator="verilator", **options):
        """Simulate the RTL (call :meth:`rtl` first) on input codes, or on the dataset's first ``samples``
        test samples; every output is compared with the golden model. Returns sim.json's dict
        (``bit_exact``, ``mismatched_samples``, cycles per layer, ...). ``options``: as
        :func:`sim.runner.simulate` (``layer``, ``backpressure``, ``seed``, ``waves``, ``testbench``)."""
        from sim.runner import simulate

        self._need_rtl("simulate")
        self.results["sim"] = simulate(self.ir, self.rtl_dir, samples=samples, inputs=inputs, simulator=simulator,
                                       **options)
        return self.results["sim"]

    def synth(self, *, pnr=False):
        """Synthesize the RTL with yosys (and place and route with nextpnr); return synth.json's dict."""
        from .synth import synth_rtl

        self._need_rtl("synth")
        self.results["synth"] = synth_rtl(self.rtl_dir, self.board, pnr=pnr, show_progress=False)
        return self.results["synth"]

    def report(self):
        """What has been done to this design so far, as plain data: the layers, the training metrics (if
        trained here), the import check (if imported), and each stage's result."""
        return {"model": self.ir.model, "dataset": self.ir.dataset, "method": self.ir.method,
                "ir_dir": None if self.ir_dir is None else str(self.ir_dir),
                "rtl_dir": None if self.rtl_dir is None else str(self.rtl_dir),
                "board": None if self.board is None else self.board.name,
                "layers": self.layers(), "metrics": self.metrics, "source": self.source,
                **{k: self.results.get(k) for k in ("estimate", "rtl", "sim", "synth")}}

    def _need_rtl(self, what):
        if self.rtl_dir is None:
            raise UserError(f"{what}(): generate the Verilog first with rtl(board)")


def _board(board):
    from boards import Board, load_board

    return board if isinstance(board, Board) else load_board(board)


def load(ir_dir):
    """The design of an IR folder (``hwq export`` or ``hwq import`` wrote it)."""
    from .ir import load_ir

    return Design(load_ir(ir_dir), Path(ir_dir))


def import_qonnx(path, out=None, *, dataset="none", requant="auto", inputs=None, samples=64):
    """Import a QONNX file (as ``hwq import``): checked against qonnx's executor on ``inputs`` (codes) or
    generated ones; written to ``out`` when given. Returns the design; ``design.source`` holds the check."""
    from .qonnx_import import import_qonnx as lower_and_check

    ir, check = lower_and_check(path, out, dataset=dataset, requant=requant, inputs=inputs, samples=samples)
    return Design(ir, None if out is None else Path(out), source={"kind": "qonnx", **check})
